package store

import (
	"strconv"
	"strings"
	"sync"
)

// shellGroups reassembles the output chunks shell_append.lua publishes on a
// terminal's channel: a header "O GEN SEQ N", then the N chunks as they
// are, seq SEQ to SEQ+N-1. The chunks go out bare because a Lua string is
// hashed over every byte when it is made (Redis 7 hashes whole strings): a
// "o GEN SEQ DATA" message built in the script cost Redis a second pass
// over each chunk, half its CPU per byte of terminal output with the first.
//
// A script's messages reach a subscriber together or not at all, so a
// group is cut only by a lost connection; its channel is then subscribed
// again, and reset clears what was pending for it.
type shellGroups struct {
	mu      sync.Mutex
	pending map[string]*shellGroup // by channel
}

// shellGroup is the part of a group not yet received.
type shellGroup struct {
	gen, next int64
	left      int64
}

// decode returns the message payload on channel carries, or false for one
// that carries none: a group's header, or a payload that does not parse.
func (g *shellGroups) decode(channel, payload string) (ShellLive, bool) {
	g.mu.Lock()
	if p := g.pending[channel]; p != nil {
		m := ShellLive{Kind: 'o', Gen: p.gen, Seq: p.next, Data: payload}
		p.next++
		if p.left--; p.left == 0 {
			delete(g.pending, channel)
		}
		g.mu.Unlock()
		return m, true
	}
	g.mu.Unlock()
	if gen, seq, n, ok := parseShellGroup(payload); ok {
		g.mu.Lock()
		if g.pending == nil {
			g.pending = map[string]*shellGroup{}
		}
		g.pending[channel] = &shellGroup{gen: gen, next: seq, left: n}
		g.mu.Unlock()
		return ShellLive{}, false
	}
	return ParseShellLive(payload)
}

// reset forgets a group cut short on channel.
func (g *shellGroups) reset(channel string) {
	g.mu.Lock()
	delete(g.pending, channel)
	g.mu.Unlock()
}

// parseShellGroup decodes a group header, "O GEN SEQ N" with N ≥ 1.
func parseShellGroup(payload string) (gen, seq, n int64, ok bool) {
	if len(payload) < 2 || payload[0] != 'O' || payload[1] != ' ' {
		return 0, 0, 0, false
	}
	f := strings.Fields(payload[2:])
	if len(f) != 3 {
		return 0, 0, 0, false
	}
	gen, err1 := strconv.ParseInt(f[0], 10, 64)
	seq, err2 := strconv.ParseInt(f[1], 10, 64)
	n, err3 := strconv.ParseInt(f[2], 10, 64)
	if err1 != nil || err2 != nil || err3 != nil || n < 1 {
		return 0, 0, 0, false
	}
	return gen, seq, n, true
}
