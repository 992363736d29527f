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

func (d *urlDetector) scan(chunk []byte) []urlAnnounce {
	if !bytes.Contains(chunk, []byte("://")) && !strings.Contains(d.tail, "http") {
		// Cheap exit for the bulk of output (floods, build logs); the end
		// is kept in case a URL starts there.
		d.tail = string(chunk[max(0, len(chunk)-16):])
		return nil
	}
	text := d.tail + stripANSI(string(chunk))
	if len(text) > urlTail {
		d.tail = text[len(text)-urlTail:]
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
		if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") {
			continue
		}
		if len(u) > len(longest) {
			longest = u
		}
		if !d.seen[u] && len(d.seen) < 100 {
			d.seen[u] = true
			out = append(out, urlAnnounce{url: u})
		}
	}
	lower := strings.ToLower(text)
	for _, p := range openPrompts {
		if longest != "" && strings.Contains(lower, p) && !d.autoSent[longest] {
			d.autoSent[longest] = true
			out = append(out, urlAnnounce{url: longest, autoOpen: true})
			break
		}
	}
	return out
}
