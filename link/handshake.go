package link

import (
	"bufio"
	"crypto/hkdf"
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
// keystroke.
//
// Version 3 (the only one a gateway speaks) binds the version into both
// MACs, so that a hello rewritten to version 2 on the way gets a proof the
// gateway refuses, and seals every frame after the ok with AES-256-GCM
// under a key drawn from the token and both nonces (sessionKey): nothing
// on the path reads a keystroke or slips in a frame. Workers still take
// version 2 (the same hello with the bare roles, frames in clear) and
// version 1 (the token itself) from gateways of the versions before.
const (
	// helloV2 starts a version-2 gateway's hello, before its nonce in hex.
	helloV2 = "agentgate-link/2 "
	// helloV3 starts a gateway's hello, before its nonce in hex.
	helloV3 = "agentgate-link/3 "
	// nonceLen is the length of each side's nonce, in bytes.
	nonceLen = 16
)

// The roles whose MACs the two sides show: version 2's bare, version 3's
// with the version in them.
const (
	roleWorkerV2  = "worker"
	roleGatewayV2 = "gateway"
	roleWorkerV3  = helloV3 + "worker"
	roleGatewayV3 = helloV3 + "gateway"
	// keyInfo names the key of a version-3 link's frames.
	keyInfo = helloV3 + "key"
)

// helloMAC is the MAC one side (its role) shows for the two nonces.
func helloMAC(token, role string, gatewayNonce, workerNonce []byte) []byte {
	m := hmac.New(sha256.New, []byte(token))
	m.Write([]byte(role))
	m.Write(gatewayNonce)
	m.Write(workerNonce)
	return m.Sum(nil)
}

// sessionKey is the AES-256 key of a version-3 link's frames: HKDF-SHA256
// of the token, salted with both nonces, so each connection has its own.
func sessionKey(token string, gatewayNonce, workerNonce []byte) ([]byte, error) {
	salt := make([]byte, 0, 2*nonceLen)
	salt = append(append(salt, gatewayNonce...), workerNonce...)
	return hkdf.Key(sha256.New, []byte(token), salt, keyInfo, 32)
}

// errHelloRefused is a hello that did not prove the token.
var errHelloRefused = errors.New("link: hello refused")

// clientHello says the version-3 hello on conn as a gateway that holds
// token, and returns the key its frames are sealed with.
func clientHello(conn net.Conn, token string) ([]byte, error) {
	gn := make([]byte, nonceLen)
	if _, err := rand.Read(gn); err != nil {
		return nil, fmt.Errorf("make nonce: %w", err)
	}
	if _, err := io.WriteString(conn, helloV3+hex.EncodeToString(gn)+"\n"); err != nil {
		return nil, err
	}
	// The worker sends nothing after its ok, so nothing read past it here
	// is lost.
	r := bufio.NewReaderSize(conn, maxHello)
	line, err := r.ReadSlice('\n')
	if err != nil {
		return nil, fmt.Errorf("read the worker's proof: %w", err)
	}
	wnHex, macHex, ok := strings.Cut(strings.TrimSuffix(string(line), "\n"), " ")
	wn, err1 := hex.DecodeString(wnHex)
	mac, err2 := hex.DecodeString(macHex)
	// Only a version-3 proof: a version-2 one means the hello was
	// rewritten on the way (or the worker is older), and frames would go
	// in clear.
	if !ok || err1 != nil || err2 != nil || len(wn) != nonceLen ||
		!hmac.Equal(mac, helloMAC(token, roleWorkerV3, gn, wn)) {
		return nil, fmt.Errorf("%w: the worker did not prove it holds the token", errHelloRefused)
	}
	if _, err := io.WriteString(conn, hex.EncodeToString(helloMAC(token, roleGatewayV3, gn, wn))+"\n"); err != nil {
		return nil, err
	}
	okLine, err := r.ReadSlice('\n')
	if err != nil || string(okLine) != helloOK {
		return nil, fmt.Errorf("%w: %v", errHelloRefused, err)
	}
	return sessionKey(token, gn, wn)
}

// serverHello checks a gateway's hello, whose first line is line, read
// from r, and answers it on conn: nil once the gateway proved the token,
// with the key of the link's frames for a version-3 hello (nil for the
// older ones, whose frames are in clear).
func (s *Server) serverHello(conn net.Conn, r *bufio.Reader, line []byte) ([]byte, error) {
	roleWorker, roleGateway := roleWorkerV3, roleGatewayV3
	rest, ok := strings.CutPrefix(string(line), helloV3)
	if !ok {
		roleWorker, roleGateway = roleWorkerV2, roleGatewayV2
		rest, ok = strings.CutPrefix(string(line), helloV2)
	}
	if !ok {
		if hmac.Equal(line, s.hello) {
			_, err := io.WriteString(conn, helloOK)
			return nil, err
		}
		return nil, errHelloRefused
	}
	gn, err := hex.DecodeString(strings.TrimSuffix(rest, "\n"))
	if err != nil || len(gn) != nonceLen {
		return nil, errHelloRefused
	}
	wn := make([]byte, nonceLen)
	if _, err := rand.Read(wn); err != nil {
		return nil, fmt.Errorf("make nonce: %w", err)
	}
	proof := hex.EncodeToString(wn) + " " + hex.EncodeToString(helloMAC(s.token, roleWorker, gn, wn)) + "\n"
	if _, err := io.WriteString(conn, proof); err != nil {
		return nil, err
	}
	answer, err := r.ReadSlice('\n')
	if err != nil || len(answer) > maxHello {
		return nil, errHelloRefused
	}
	mac, err := hex.DecodeString(strings.TrimSuffix(string(answer), "\n"))
	if err != nil || !hmac.Equal(mac, helloMAC(s.token, roleGateway, gn, wn)) {
		return nil, errHelloRefused
	}
	var key []byte
	if roleWorker == roleWorkerV3 {
		if key, err = sessionKey(s.token, gn, wn); err != nil {
			return nil, err
		}
	}
	_, err = io.WriteString(conn, helloOK)
	return key, err
}
