package link

import (
	"bufio"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"strings"
)

// A link's hello proves to each side that the other holds the worker's
// token, and shows the token to neither: a gateway sends its nonce, the
// worker answers with its own and a MAC of both under the token, the
// gateway checks it and answers with its MAC, then the worker says ok. A
// process that took a dead worker's port (its heartbeat still in Redis)
// cannot answer the first MAC, and gets neither the token nor any
// keystroke. The version-1 hello (the token itself) is still taken from
// gateways that send it.
const (
	// helloV2 starts a gateway's hello, before its nonce in hex.
	helloV2 = "agentgate-link/2 "
	// nonceLen is the length of each side's nonce, in bytes.
	nonceLen = 16
)

// helloMAC is the MAC one side (role "worker" or "gateway") shows for the
// two nonces.
func helloMAC(token, role string, gatewayNonce, workerNonce []byte) []byte {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte(role))
	m.Write(gatewayNonce)
	m.Write(workerNonce)
	return m.Sum(nil)
}

// errHelloRefused is a hello that did not prove the token.
var errHelloRefused = errors.New("link: hello refused")

// clientHello says hello on conn as a gateway that holds token.
func clientHello(conn net.Conn, token string) error {
	gn := make([]byte, nonceLen)
	if _, err := rand.Read(gn); err != nil {
		return fmt.Errorf("make nonce: %w", err)
	}
	if _, err := io.WriteString(conn, helloV2+hex.EncodeToString(gn)+"\n"); err != nil {
		return err
	}
	// The worker sends nothing after its ok, so nothing read past it here
	// is lost.
	r := bufio.NewReaderSize(conn, maxHello)
	line, err := r.ReadSlice('\n')
	if err != nil {
		return fmt.Errorf("read the worker's proof: %w", err)
	}
	wnHex, macHex, ok := strings.Cut(strings.TrimSuffix(string(line), "\n"), " ")
	wn, err1 := hex.DecodeString(wnHex)
	mac, err2 := hex.DecodeString(macHex)
	if !ok || err1 != nil || err2 != nil || len(wn) != nonceLen ||
		!hmac.Equal(mac, helloMAC(token, "worker", gn, wn)) {
		return fmt.Errorf("%w: the worker did not prove it holds the token", errHelloRefused)
	}
	if _, err := io.WriteString(conn, hex.EncodeToString(helloMAC(token, "gateway", gn, wn))+"\n"); err != nil {
		return err
	}
	okLine, err := r.ReadSlice('\n')
	if err != nil || string(okLine) != helloOK {
		return fmt.Errorf("%w: %v", errHelloRefused, err)
	}
	return nil
}

// serverHello checks a gateway's hello, whose first line is line, read
// from r, and answers it on conn: nil once the gateway proved the token.
func (s *Server) serverHello(conn net.Conn, r *bufio.Reader, line []byte) error {
	rest, v2 := strings.CutPrefix(string(line), helloV2)
	if !v2 {
		if hmac.Equal(line, s.hello) {
			_, err := io.WriteString(conn, helloOK)
			return err
		}
		return errHelloRefused
	}
	gn, err := hex.DecodeString(strings.TrimSuffix(rest, "\n"))
	if err != nil || len(gn) != nonceLen {
		return errHelloRefused
	}
	wn := make([]byte, nonceLen)
	if _, err := rand.Read(wn); err != nil {
		return fmt.Errorf("make nonce: %w", err)
	}
	proof := hex.EncodeToString(wn) + " " + hex.EncodeToString(helloMAC(s.token, "worker", gn, wn)) + "\n"
	if _, err := io.WriteString(conn, proof); err != nil {
		return err
	}
	answer, err := r.ReadSlice('\n')
	if err != nil || len(answer) > maxHello {
		return errHelloRefused
	}
	mac, err := hex.DecodeString(strings.TrimSuffix(string(answer), "\n"))
	if err != nil || !hmac.Equal(mac, helloMAC(s.token, "gateway", gn, wn)) {
		return errHelloRefused
	}
	_, err = io.WriteString(conn, helloOK)
	return err
}
