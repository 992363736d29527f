package main

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"

	"github.com/agentgate/agentgate/store"
)

// linkListener opens a worker's link listener (--link-listen; nil without
// one) and returns the address gateways are told to dial.
func (c *config) linkListener(mode, redisURL string) (net.Listener, string, error) {
	addr := c.LinkListen
	if addr == "" && mode == "serve" {
		addr = "127.0.0.1:0" // gateway and worker share the machine
	}
	if addr == "" || addr == "off" {
		return nil, "", nil
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", fmt.Errorf("listen on %s (--link-listen): %w", addr, err)
	}
	if c.LinkAdvertise != "" {
		return ln, c.LinkAdvertise, nil
	}
	tcp := ln.Addr().(*net.TCPAddr)
	if !tcp.IP.IsUnspecified() {
		return ln, tcp.String(), nil
	}
	if strings.HasPrefix(strings.ToLower(redisURL), "unix:") {
		// A socket file names no network to find this worker's address on.
		ln.Close()
		return nil, "", fmt.Errorf("--link-listen %s: Redis is reached through a unix socket, which tells no address gateways reach this worker on: set --link-advertise HOST:PORT (AGENTGATE_LINK_ADVERTISE), or --link-listen off (keystrokes then go through Redis)", addr)
	}
	ip, err := localIPToward(redisURL)
	if err != nil {
		ln.Close()
		return nil, "", fmt.Errorf("--link-listen %s: find the address gateways reach this worker on (or set --link-advertise): %w", addr, err)
	}
	return ln, net.JoinHostPort(ip.String(), strconv.Itoa(tcp.Port)), nil
}

// localIPToward returns this machine's address on its route to the (first)
// Redis node of redisURL: an address on the network the worker shares with
// Redis, and so, in a container network or a cluster, with the gateways.
func localIPToward(redisURL string) (net.IP, error) {
	u, err := url.Parse(redisURL)
	if err != nil {
		return nil, fmt.Errorf("parse Redis URL: %w", store.URLError(err))
	}
	host, _, _ := strings.Cut(u.Host, ",")
	if host == "" {
		return nil, errors.New("the Redis URL names no host")
	}
	if _, _, err := net.SplitHostPort(host); err != nil {
		host = net.JoinHostPort(strings.Trim(host, "[]"), "6379")
	}
	// A UDP "connection" sends nothing: it only picks the route.
	conn, err := net.Dial("udp", host)
	if err != nil {
		return nil, fmt.Errorf("route to Redis: %w", err)
	}
	defer conn.Close()
	return conn.LocalAddr().(*net.UDPAddr).IP, nil
}

// linkOnlyHere reports whether a link listening on every address is
// advertised on a loopback one (found toward a Redis on loopback): only
// gateways on this machine can dial it.
func linkOnlyHere(ln net.Listener, advertised string) bool {
	tcp, ok := ln.Addr().(*net.TCPAddr)
	if !ok || !tcp.IP.IsUnspecified() {
		return false
	}
	host, _, err := net.SplitHostPort(advertised)
	if err != nil {
		return false
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback() || host == "localhost"
}
