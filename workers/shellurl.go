package workers

import (
	"bytes"
	"slices"
	"strings"
	"sync"
	"sync/atomic"

	"mvdan.cc/xurls/v2"
)

// urlDetector finds login URLs in a terminal's output the way the
// reference does: in ANSI-stripped text, each URL announced once, and the
// longest one re-announced with autoOpen when the text asks the user to
// open it. A URL that the program hard-wrapped at the terminal's width is
// joined again (see joinWrapped); one that may still go on in the next
// chunk is announced as far as it goes, and again when it grows, but not
// auto-opened before it has ended.
type urlDetector struct {
	tail     string // the end of the previous text, for URLs cut by a chunk
	esc      string // an escape sequence cut by the end of the previous chunk
	seen     map[string]bool
	autoSent map[string]bool
	// cols is the terminal's width, stored by the loop that resizes it;
	// 0 (unknown) joins no lines.
	cols atomic.Int32
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

// A terminal's output is its user's to shape: the URLs a detector
// remembers are bounded in number (past it, it starts afresh) and length,
// and copied out of the chunk, so that a loop printing new URLs cannot
// grow the worker's memory.
const (
	urlsRemembered = 100
	urlMaxLen      = 4096 // a login URL is well under it
	urlsPerChunk   = 8    // announced per chunk (each is a message to the sockets)
	// urlTail is how much text is kept between chunks: a URL of urlMaxLen
	// with the line ends and indents of its wrapped lines.
	urlTail = urlMaxLen + urlMaxLen/4
	// promptTail is how much of the text before a chunk is searched for
	// an open prompt.
	promptTail = 2048
	// cheapTail is how much is kept of a chunk without a URL: more than
	// "https://" and than the longest open prompt.
	cheapTail = 32
	// escCarryMax bounds an escape sequence kept for the next chunk; a
	// longer unfinished one is dropped as before.
	escCarryMax = 512
	// wrapSlack is how many columns short of the width a line may end
	// and still be taken for hard-wrapped.
	wrapSlack = 2
)

// setCols records the terminal's width, for joining wrapped lines.
func (d *urlDetector) setCols(cols int) { d.cols.Store(int32(cols)) }

func (d *urlDetector) scan(chunk []byte) []urlAnnounce {
	if d.esc != "" {
		chunk = append([]byte(d.esc), chunk...)
		d.esc = ""
	}
	if cut := pendingEscape(chunk); cut < len(chunk) {
		d.esc = string(chunk[cut:])
		chunk = chunk[:cut]
	}
	if !bytes.Contains(chunk, []byte("://")) && !strings.Contains(d.tail, "http") {
		// Cheap exit for the bulk of output (floods, build logs); the end
		// is kept in case a URL or an open prompt starts there.
		end := string(chunk[max(0, len(chunk)-cheapTail):])
		if len(chunk) < cheapTail {
			end = d.tail + end
		}
		end = stripANSI(end)
		d.tail = strings.Clone(end[max(0, len(end)-cheapTail):])
		return nil
	}
	fresh := stripANSI(string(chunk))
	text := d.tail + fresh
	if len(text) > urlTail {
		d.tail = strings.Clone(text[len(text)-urlTail:])
	} else {
		d.tail = text
	}
	if d.seen == nil {
		d.seen, d.autoSent = map[string]bool{}, map[string]bool{}
	}
	joined := joinWrapped(text, int(d.cols.Load()))

	// The URLs of the text in order, once each; open is whether more of
	// the URL may come: it ends the text, but for URL characters.
	type found struct {
		url  string
		open bool
	}
	var urls []found
	index := map[string]int{}
	run := urlRunStart(joined) // the URL characters that end the text
	for _, m := range urlPattern().FindAllStringIndex(joined, -1) {
		u := strings.TrimRight(joined[m[0]:m[1]], ".,;:!?)]}'\"")
		if !strings.HasPrefix(u, "http://") && !strings.HasPrefix(u, "https://") || len(u) > urlMaxLen {
			continue
		}
		open := m[1] >= run // nothing but URL characters after it ("https://claude.")
		if i, ok := index[u]; ok {
			urls[i].open = urls[i].open && open
			continue
		}
		index[u] = len(urls)
		urls = append(urls, found{u, open})
	}
	// A URL that begins another one of the text is that one cut short
	// (a first line, a chunk's end): only the longer is announced. In
	// sorted order a prefix comes right before a URL it begins.
	sorted := make([]string, len(urls))
	for i, f := range urls {
		sorted[i] = f.url
	}
	slices.Sort(sorted)
	cut := map[string]bool{}
	for i := 1; i < len(sorted); i++ {
		if strings.HasPrefix(sorted[i], sorted[i-1]) {
			cut[sorted[i-1]] = true
		}
	}

	var out []urlAnnounce
	var longest found
	for _, f := range urls {
		// Nor is one that begins a URL announced before: the client keeps
		// the last announcement, which would be the cut one.
		if cut[f.url] || d.announcedLonger(f.url) {
			continue
		}
		if len(f.url) > len(longest.url) {
			longest = f
		}
		if !d.seen[f.url] && len(out) < urlsPerChunk {
			if len(d.seen) == urlsRemembered {
				clear(d.seen) // forget the oldest rather than announce nothing more
			}
			u := strings.Clone(f.url)
			d.seen[u] = true
			out = append(out, urlAnnounce{url: u})
		}
	}
	if longest.url == "" || longest.open || d.autoSent[longest.url] {
		// An open URL is opened once it has ended: a browser given half
		// of a wrapped link opens a page of errors.
		return out
	}
	lower := strings.ToLower(text[max(0, len(text)-len(fresh)-promptTail):])
	for _, p := range openPrompts {
		if strings.Contains(lower, p) {
			if len(d.autoSent) == urlsRemembered {
				clear(d.autoSent)
			}
			u := strings.Clone(longest.url)
			d.autoSent[u] = true
			out = append(out, urlAnnounce{url: u, autoOpen: true})
			break
		}
	}
	return out
}

// announcedLonger reports whether a URL that u begins, and longer, was
// announced.
func (d *urlDetector) announcedLonger(u string) bool {
	for s := range d.seen {
		if len(s) > len(u) && strings.HasPrefix(s, u) {
			return true
		}
	}
	return false
}

// joinWrapped joins the lines of a URL that a program hard-wrapped at the
// terminal's width (cols), as Claude's setup-token prints its login link:
// a line that ends in a URL and fills the width, within wrapSlack
// columns (its trailing blanks and "\r"s aside), goes on with the next
// line when that one is nothing but URL characters, blanks around them
// aside, and does not begin a URL of its own. The reference joins any
// such line after a URL; the width keeps "see https://a.example/x" and a
// "Done" below it apart (a limit: a URL that happens to fill a line, then
// a line of one word, are joined). Lines are kept as they are otherwise.
// When the text ends after a line that may go on (or in the middle of
// one), the joined text ends with its URL, so that it counts as open.
func joinWrapped(text string, cols int) string {
	if cols <= 0 || !strings.Contains(text, "\n") {
		return text
	}
	buf := make([]byte, 0, len(text))
	lineStart := 0   // where the current line of buf begins
	holding := false // the line before may go on in this one
	held := ""       // that line's trailing blanks, left out of buf
	rest := text
	for i := 0; ; i++ {
		line, next, complete := strings.Cut(rest, "\n")
		rest = next
		joined := false
		switch {
		case i == 0:
			buf = append(buf, line...)
		case holding:
			c := strings.Trim(line, " \t\r")
			if c == "" && !complete {
				return string(buf) // what comes after the URL has not come yet
			}
			if c != "" && urlRunStart(c) == 0 && !strings.HasPrefix(c, "http://") && !strings.HasPrefix(c, "https://") {
				buf = append(buf, c...)
				joined = true
				break
			}
			buf = append(buf, held...)
			buf = append(buf, '\n')
			lineStart = len(buf)
			buf = append(buf, line...)
		default:
			buf = append(buf, '\n')
			lineStart = len(buf)
			buf = append(buf, line...)
		}
		holding = false
		body := strings.TrimRight(line, " \t\r")
		if w := textWidth(body); w > cols || w < cols-wrapSlack {
			if !complete {
				return string(buf)
			}
			continue
		}
		end := len(buf)
		if !joined {
			end -= len(line) - len(body)
		}
		run := buf[lineStart:end]
		run = run[urlRunStart(run):]
		if len(run) > urlMaxLen || !bytes.Contains(run, []byte("http://")) && !bytes.Contains(run, []byte("https://")) {
			if !complete {
				return string(buf)
			}
			continue
		}
		buf = buf[:end]
		if !complete {
			// The line's end has not come: its URL may go on.
			return string(buf)
		}
		holding, held = true, line[len(body):]
	}
}

// urlRunStart is where the URL characters that end s begin: len(s) when
// s does not end in one, 0 when it is all URL characters. It looks back no
// further than urlMaxLen+1 bytes.
func urlRunStart[T string | []byte](s T) int {
	i := len(s)
	for i > 0 && len(s)-i <= urlMaxLen && isURLByte(s[i-1]) {
		i--
	}
	return i
}

// isURLByte reports whether c may be part of a URL (RFC 3986's unreserved
// and reserved characters and '%'), as the reference's continuation lines
// must be.
func isURLByte(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		strings.IndexByte("-._~:/?#[]@!$&'()*+,;=%", c) >= 0
}

// textWidth is the columns s takes, a column for each printable
// character (wide ones count one).
func textWidth(s string) int {
	w := 0
	for _, r := range s {
		if r >= 0x20 && r != 0x7f {
			w++
		}
	}
	return w
}

// pendingEscape is where an escape sequence cut by the end of b begins
// (len(b) if there is none, or it is longer than escCarryMax), so that
// it is stripped whole with the next chunk rather than leave its end as
// text ("9m" after a URL).
func pendingEscape(b []byte) int {
	from := max(0, len(b)-escCarryMax) // a longer one is not kept
	i := bytes.LastIndexByte(b[from:], 0x1b)
	if i < 0 {
		return len(b)
	}
	i += from
	rest := b[i+1:] // read in place: this runs on every chunk of output
	if n := escapeLen(rest); n < len(rest) || escapeEnded(rest) {
		return len(b)
	}
	return i
}

// escapeEnded reports whether the escape sequence whose ESC was just
// before s ends with s's last byte (escapeLen(s) == len(s) also when it
// is unfinished).
func escapeEnded[T string | []byte](s T) bool {
	if len(s) == 0 {
		return false
	}
	last := s[len(s)-1]
	switch s[0] {
	case '[':
		return len(s) > 1 && last >= 0x40 && last <= 0x7e
	case ']', 'P', 'X', '^', '_':
		return len(s) > 1 && last == 0x07
	}
	return last < 0x20 || last > 0x2f
}
