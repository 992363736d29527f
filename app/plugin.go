package app

import (
	"net"
	"strconv"
)

// maxPluginName bounds a plugin name; it sits in a Redis key and a URL.
const maxPluginName = 64

// ValidPluginName reports whether name can name a plugin (PROTOCOL §5).
func ValidPluginName(name string) bool {
	return name != "" && len(name) <= maxPluginName && madeOf(name, "_-")
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
