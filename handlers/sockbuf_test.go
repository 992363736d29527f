package handlers

import (
	"net"
	"syscall"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"
)

// TestLimitConnUnsent: the option is set on the connection's socket, as
// the kernel reads it back.
func TestLimitConnUnsent(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err == nil {
			accepted <- c
		}
	}()
	client, err := net.Dial("tcp", ln.Addr().String())
	require.NoError(t, err)
	defer client.Close()
	server := <-accepted
	defer server.Close()

	require.NoError(t, limitConnUnsent(server, shellUnsentMax))
	raw, err := server.(syscall.Conn).SyscallConn()
	require.NoError(t, err)
	var got int
	require.NoError(t, raw.Control(func(fd uintptr) {
		got, err = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NOTSENT_LOWAT)
	}))
	require.NoError(t, err)
	require.Equal(t, shellUnsentMax, got)

	// A connection without a descriptor is left alone.
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	require.NoError(t, limitConnUnsent(a, shellUnsentMax))
}
