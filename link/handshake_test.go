package link

import (
	"bufio"
	"context"
	"encoding/hex"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestHelloShowsNoTokenToAnImpostor: a process that took a worker's port
// and answers a gateway's hello without the token gets neither the token
// nor any control; the gateway sends through the inbox instead. Before,
// the hello was the token itself.
func TestHelloShowsNoTokenToAnImpostor(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	var mu sync.Mutex
	var heard strings.Builder
	go func() {
		for {
			conn, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer conn.Close()
				r := bufio.NewReader(conn)
				line, _ := r.ReadString('\n')
				mu.Lock()
				heard.WriteString(line)
				mu.Unlock()
				_, _ = io.WriteString(conn, strings.Repeat("ab", nonceLen)+" "+strings.Repeat("cd", 32)+"\n")
				rest, _ := io.ReadAll(r)
				mu.Lock()
				heard.Write(rest)
				mu.Unlock()
			}()
		}
	}()
	token, err := NewToken()
	require.NoError(t, err)
	c := NewClient(func(context.Context, string) (string, string, error) { return ln.Addr().String(), token, nil }, nil)
	for range 5 {
		require.ErrorIs(t, c.Send(context.Background(), "w1", input(1)), ErrNoLink)
		time.Sleep(switchQuiet)
	}
	c.Close()
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	require.True(t, strings.HasPrefix(heard.String(), helloV3), heard.String())
	require.NotContains(t, heard.String(), token)
	require.NotContains(t, heard.String(), `"type"`, "no control")
}

// TestHelloRefusesAWrongProof: a gateway's answer that is not the MAC of
// the token closes the link before it carries anything.
func TestHelloRefusesAWrongProof(t *testing.T) {
	w := startWorker(t)
	conn, err := net.Dial("tcp", w.addr)
	require.NoError(t, err)
	defer conn.Close()
	_, err = io.WriteString(conn, helloV2+hex.EncodeToString(make([]byte, nonceLen))+"\n")
	require.NoError(t, err)
	r := bufio.NewReader(conn)
	proof, err := r.ReadString('\n')
	require.NoError(t, err)
	wnHex, macHex, ok := strings.Cut(strings.TrimSpace(proof), " ")
	require.True(t, ok)
	wn, _ := hex.DecodeString(wnHex)
	require.Equal(t, hex.EncodeToString(helloMAC(w.token, roleWorkerV2, make([]byte, nonceLen), wn)), macHex, "the worker proves the token")
	_, err = io.WriteString(conn, hex.EncodeToString(helloMAC("not-"+w.token, roleGatewayV2, make([]byte, nonceLen), wn))+"\n")
	require.NoError(t, err)
	require.NoError(t, conn.SetReadDeadline(time.Now().Add(5*time.Second)))
	rest, err := io.ReadAll(r)
	require.NoError(t, err, "closed by the worker")
	require.Empty(t, rest, "no ok")
}
