package handlers

import (
	"net"
	"syscall"

	"github.com/olahol/melody"
	"golang.org/x/sys/unix"
)

// shellUnsentMax bounds the bytes of a /shell socket's frames that the
// kernel holds unsent (TCP_NOTSENT_LOWAT, tcp(7)). Without it, a client
// that reads slower than a flood leaves megabytes in the socket's send
// buffer, written as far as the gateway can tell: its flow control acks
// them, and a Ctrl-C cannot take them back. With it, they wait in the
// socket's queue, where both see them. Bytes sent and not yet
// acknowledged by the peer (a distant client's bandwidth-delay product)
// are not counted, so throughput over a long path is not capped.
const shellUnsentMax = 32 << 10

// limitUnsent sets TCP_NOTSENT_LOWAT on a socket's TCP connection.
func limitUnsent(ms *melody.Session, n int) error {
	ws := ms.WebsocketConnection()
	if ws == nil {
		return nil
	}
	return limitConnUnsent(ws.UnderlyingConn(), n)
}

// limitConnUnsent sets TCP_NOTSENT_LOWAT on c; a connection that gives no
// descriptor is left as it is.
func limitConnUnsent(c net.Conn, n int) error {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT, n)
	}); err != nil {
		return err
	}
	return serr
}
