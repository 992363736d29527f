package app

import (
	"net"
	"regexp"
	"strconv"
)

var pluginNamePattern = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)

// maxPluginName bounds a plugin name; it sits in a Redis key and a URL.
const maxPluginName = 64

// ValidPluginName reports whether name can name a plugin (PROTOCOL §5).
func ValidPluginName(name string) bool {
	return len(name) <= maxPluginName && pluginNamePattern.MatchString(name)
}

// ValidPluginAddr reports whether addr is a HOST:PORT a plugin can listen
// on: a host without a scheme or path, and a port from 1 to 65535.
func ValidPluginAddr(addr string) bool {
	host, port, err := net.SplitHostPort(addr)
	if err != nil || host == "" || len(addr) > 255 {
		return false
	}
	for _, c := range host {
		if c == '/' || c == '@' || c == '?' || c == '#' || c <= ' ' {
			return false
		}
	}
	n, err := strconv.Atoi(port)
	return err == nil && n >= 1 && n <= 65535
}
