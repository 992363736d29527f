package main

import (
	"errors"
	"net"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestLimitListener: at most n connections are accepted at once, a
// connection closed twice gives its place back once, a connection keeps
// its descriptor, and Close ends an Accept waiting for a place.
func TestLimitListener(t *testing.T) {
	inner, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	l := newLimitListener(inner, 1)
	accepted := make(chan net.Conn, 4)
	acceptErr := make(chan error, 1)
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				acceptErr <- err
				return
			}
			accepted <- c
		}
	}()
	dial := func() net.Conn {
		c, err := net.Dial("tcp", inner.Addr().String())
		require.NoError(t, err)
		t.Cleanup(func() { c.Close() })
		return c
	}
	dial()
	first := <-accepted
	_, ok := first.(syscall.Conn)
	require.True(t, ok, "the descriptor is still reachable")
	dial()
	dial()
	select {
	case <-accepted:
		t.Fatal("accepted past the cap")
	case <-time.After(100 * time.Millisecond):
	}
	require.NoError(t, first.Close())
	_ = first.Close() // a second close gives nothing back
	second := <-accepted
	select {
	case <-accepted:
		t.Fatal("a connection closed twice gave two places")
	case <-time.After(100 * time.Millisecond):
	}

	require.NoError(t, l.Close())
	require.True(t, errors.Is(<-acceptErr, net.ErrClosed), "Close ends an Accept waiting for a place")
	require.NoError(t, second.Close())
}
