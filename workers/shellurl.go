package workers

import (
	"bytes"
	"strings"
	"sync"

	"mvdan.cc/xurls/v2"
)

// urlDetector finds login URLs in a terminal's output the way the
// reference does: in ANSI-stripped text, each URL announced once, and the
// longest one re-announced with autoOpen when the text asks the user to
// open it.
type urlDetector struct {
	tail     string // the end of the previous text, for URLs cut by a chunk
	seen     map[string]bool
	autoSent map[string]bool
}

type urlAnnounce struct {
	url      string
	autoOpen bool
}

var (
	urlPattern  = sync.OnceValue(xurls.Strict) // compiled on first use, not at every start
	openPrompts = []string{
		"browser didn't open", "open this url", "continue in your browser", "press enter to open", "opening in browser:",
	}
)

// urlTail is how much text is kept between chunks.
const urlTail = 2048

// A terminal's output is its user's to shape: the URLs a detector
// remembers are bounded in number (past it, it starts afresh) and length,
// and copied out of the chunk, so that a loop printing new URLs cannot
// grow the worker's memory.
const (
	urlsRemembered = 100
	urlMaxLen      = 4096 // a login URL is well under it
	urlsPerChunk   = 8    // announced per chunk (each is a message to the sockets)
)

func (d *urlDetector) scan(chunk []byte) []urlAnnounce {
	if !bytes.Contains(chunk, []byte("://")) && !strings.Contains(d.tail, "http") {
		// Cheap exit for the bulk of output (floods, build logs); the end
		// is kept in case a URL starts there.
		d.tail = string(chunk[max(0, len(chunk)-16):])
		return nil
	}
	text := d.tail + stripANSI(string(chunk))
	if len(text) > urlTail {
		d.tail = strings.Clone(text[len(text)-urlTail:])
	} else {
		d.tail = text
	}
	if d.seen == nil {
		d.seen, d.autoSent = map[string]bool{}, map[string]bool{}
	}
	var out []urlAnnounce
	longest := ""
	for _, u := range urlPattern().FindAllString(text, -1) {
		u = strings.TrimRight(u, ".,;:!?)]}'\"")
		if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") || len(u) > urlMaxLen {
			continue
		}
		if len(u) > len(longest) {
			longest = u
		}
		if !d.seen[u] && len(out) < urlsPerChunk {
			if len(d.seen) == urlsRemembered {
				clear(d.seen) // forget the oldest rather than announce nothing more
			}
			u = strings.Clone(u)
			d.seen[u] = true
			out = append(out, urlAnnounce{url: u})
		}
	}
	lower := strings.ToLower(text)
	for _, p := range openPrompts {
		if longest != "" && strings.Contains(lower, p) && !d.autoSent[longest] {
			if len(d.autoSent) == urlsRemembered {
				clear(d.autoSent)
			}
			longest = strings.Clone(longest)
			d.autoSent[longest] = true
			out = append(out, urlAnnounce{url: longest, autoOpen: true})
			break
		}
	}
	return out
}
