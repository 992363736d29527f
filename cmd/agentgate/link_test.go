package main

import (
	"net"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestLinkListenerAdvertises: where a worker's link is advertised, for the
// Redis URLs a worker may be given. A unix:// URL names no network, so a
// link on every address needs --link-advertise, and says so (the worker
// refused to start with "the Redis URL names no host"); a Redis on
// loopback makes the link advertised on loopback, which the worker warns
// about (linkOnlyHere).
func TestLinkListenerAdvertises(t *testing.T) {
	listen := func(c config, redisURL string) (net.Listener, string, error) {
		ln, addr, err := c.linkListener("worker", redisURL)
		if ln != nil {
			t.Cleanup(func() { ln.Close() })
		}
		return ln, addr, err
	}
	_, _, err := listen(config{LinkListen: "0.0.0.0:0"}, "unix:///run/redis/redis.sock")
	require.ErrorContains(t, err, "--link-advertise")
	require.ErrorContains(t, err, "unix socket")

	ln, addr, err := listen(config{LinkListen: "0.0.0.0:0", LinkAdvertise: "10.0.0.5:7070"}, "unix:///run/redis/redis.sock")
	require.NoError(t, err)
	require.Equal(t, "10.0.0.5:7070", addr)
	require.False(t, linkOnlyHere(ln, addr))

	ln, addr, err = listen(config{LinkListen: "127.0.0.1:0"}, "unix:///run/redis/redis.sock")
	require.NoError(t, err, "a link on one address needs no route to Redis")
	require.Equal(t, ln.Addr().String(), addr)
	require.False(t, linkOnlyHere(ln, addr), "listening on loopback is meant")

	ln, addr, err = listen(config{LinkListen: "0.0.0.0:0"}, "redis://127.0.0.1:6379/0")
	require.NoError(t, err)
	host, _, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1", host)
	require.True(t, linkOnlyHere(ln, addr), "Redis on loopback: only this machine can dial the link")

	ln, _, err = listen(config{LinkListen: "off"}, "unix:///run/redis/redis.sock")
	require.NoError(t, err)
	require.Nil(t, ln)
}
