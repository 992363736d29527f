package workers

import (
	"fmt"
	"os"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// setupTokenURL is a login link of Claude CLI 2.1.197's setup-token,
// which hard-wraps it into 5 lines of an 80-column terminal.
const setupTokenURL = "https://claude.com/cai/oauth/authorize?code=true&client_id=9d1c250a-e61b-44d9-88ed-5944d1962f5e" +
	"&response_type=code&redirect_uri=https%3A%2F%2Fplatform.claude.com%2Foauth%2Fcode%2Fcallback" +
	"&scope=org%3Acreate_api_key+user%3Aprofile+user%3Ainference&code_challenge=K7xQ2mZp9vR4tY6uW1sE3dF5gH8jL0nB2cV4xZ6aS8d" +
	"&code_challenge_method=S256&state=Pq3Rs5Tu7Vw9Xy1Za2Bc4De6Fg8Hi0Jk2Lm4No6Pq8R"

// wrappedFrame is the screen setup-token prints, its link cut every cols
// characters and its lines ended by sep, each line of the link in color
// when ansi is set.
func wrappedFrame(url string, cols int, sep string, ansi bool) string {
	var b strings.Builder
	b.WriteString("\x1b[2K\x1b[1G Browser didn't open? Use the url below to sign in (c to copy)" + sep + sep)
	for len(url) > 0 {
		line := url[:min(cols, len(url))]
		url = url[len(line):]
		if ansi {
			line = "\x1b[38;5;153m" + line + "\x1b[39m"
		}
		b.WriteString(line + sep)
	}
	b.WriteString(sep + " Paste code here if prompted > ")
	return b.String()
}

func feed(d *urlDetector, chunks ...string) []urlAnnounce {
	var out []urlAnnounce
	for _, c := range chunks {
		out = append(out, d.scan([]byte(c))...)
	}
	return out
}

// requireGrowsTo: the announcements of a wrapped link are the link as
// far as it had come, each longer than the one before, the last one
// whole, and an autoOpen of the whole link: one if auto, at most one if
// not.
func requireGrowsTo(t *testing.T, url string, got []urlAnnounce, auto bool, where string) {
	t.Helper()
	last, autos := "", 0
	for _, a := range got {
		require.True(t, strings.HasPrefix(url, a.url), "%s: announced %q, not a start of the link", where, a.url)
		if a.autoOpen {
			autos++
			require.Equal(t, url, a.url, "%s: auto-opened a part of the link", where)
			continue
		}
		require.Greater(t, len(a.url), len(last), "%s: announced %q after %q", where, a.url, last)
		last = a.url
	}
	require.Equal(t, url, last, where)
	if auto {
		require.Equal(t, 1, autos, where)
	} else {
		require.LessOrEqual(t, autos, 1, where)
	}
}

// TestURLDetectorJoinsWrappedLink: setup-token's link, hard-wrapped at
// the terminal's width, is announced whole (before, only its first line
// was), in one chunk or cut anywhere, with either line end and with
// colors around its lines.
func TestURLDetectorJoinsWrappedLink(t *testing.T) {
	for _, c := range []struct {
		name string
		sep  string
		ansi bool
	}{
		{"crcrlf", "\r\r\n", false},
		{"crlf", "\r\n", false},
		{"crcrlf colored", "\r\r\n", true},
		{"crlf colored", "\r\n", true},
	} {
		t.Run(c.name, func(t *testing.T) {
			frame := wrappedFrame(setupTokenURL, 80, c.sep, c.ansi)
			detector := func() *urlDetector {
				d := &urlDetector{}
				d.setCols(80)
				return d
			}
			got := feed(detector(), frame)
			require.Equal(t, []urlAnnounce{{url: setupTokenURL}, {url: setupTokenURL, autoOpen: true}}, got)
			// A chunk without a URL keeps only its last 32 bytes: a cut
			// between the open prompt and the link's "://" loses the
			// prompt (as before), and the link is not auto-opened.
			prompt, scheme := strings.Index(frame, "Browser"), strings.Index(frame, "https://")+len("https://")
			keeps := func(cuts ...int) bool {
				for _, c := range cuts {
					if c > prompt && c < scheme {
						return false
					}
				}
				return true
			}
			for i := range len(frame) + 1 {
				requireGrowsTo(t, setupTokenURL, feed(detector(), frame[:i], frame[i:]), keeps(i), fmt.Sprintf("cut at %d", i))
			}
			for i := 0; i <= len(frame); i += 29 {
				for j := i; j <= len(frame); j += 31 {
					requireGrowsTo(t, setupTokenURL, feed(detector(), frame[:i], frame[i:j], frame[j:]), keeps(i, j), fmt.Sprintf("cut at %d and %d", i, j))
				}
			}
			bytewise := []string{frame[:scheme]}
			for i := scheme; i < len(frame); i++ {
				bytewise = append(bytewise, frame[i:i+1])
			}
			requireGrowsTo(t, setupTokenURL, feed(detector(), bytewise...), true, "a byte at a time")
		})
	}
}

// TestURLDetectorWrapped: which lines are joined, and what is announced
// as a wrapped link grows.
func TestURLDetectorWrapped(t *testing.T) {
	// fill is a line of exactly n columns that ends in a URL.
	fill := func(n int) string {
		s := "Visit https://a.example/login?x="
		return s + strings.Repeat("y", n-len(s))
	}
	for _, c := range []struct {
		name string
		cols int
		text string
		want []string
	}{
		{"short line, then words", 80, "see https://example.com/a\r\nnext line\r\n", []string{"https://example.com/a"}},
		{"short line, then one word", 80, "see https://example.com/a\r\nDone\r\n", []string{"https://example.com/a"}},
		{"full line, then words", 80, fill(80) + "\r\nnext line\r\n", []string{fill(80)[6:]}},
		{"full line, then a blank line", 80, fill(80) + "\r\n\r\nzzz\r\n", []string{fill(80)[6:]}},
		{"full line, then a URL", 80, fill(80) + "\r\nhttps://b.example/x\r\n", []string{fill(80)[6:], "https://b.example/x"}},
		{"longer than the width: soft-wrapped", 80, fill(81) + "\r\nzzz\r\n", []string{fill(81)[6:]}},
		{"unknown width", 0, fill(80) + "\r\nzzz\r\n", []string{fill(80)[6:]}},
		{"full line", 80, fill(80) + "\r\nzzz\r\n", []string{fill(80)[6:] + "zzz"}},
		{"a column short", 80, fill(79) + "\r\nzzz\r\n", []string{fill(79)[6:] + "zzz"}},
		{"indented continuation", 80, "  " + fill(78) + "\r\n  zzz\r\n", []string{fill(78)[6:] + "zzz"}},
		{"three lines", 40, fill(40) + "\n" + strings.Repeat("z", 40) + "\nq&r=1\n", []string{fill(40)[6:] + strings.Repeat("z", 40) + "q&r=1"}},
		{"cut after a dot", 40, fill(39) + ".\r\nhtml done\r\n", []string{fill(39)[6:]}},
		{"cut after a dot, joined", 40, fill(39) + ".\r\nhtml\r\n", []string{fill(39)[6:] + ".html"}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var d urlDetector
			d.setCols(c.cols)
			var got []string
			for _, a := range d.scan([]byte(c.text)) {
				got = append(got, a.url)
			}
			require.Equal(t, c.want, got)
		})
	}

	// A link that grows is announced again, and opened once it has ended.
	var d urlDetector
	d.setCols(80)
	frame := wrappedFrame(setupTokenURL, 80, "\r\r\n", false)
	cut := strings.Index(frame, setupTokenURL[160:240]) // after the link's second line and its line end
	require.Equal(t, []urlAnnounce{{url: setupTokenURL[:160]}}, d.scan([]byte(frame[:cut])))
	require.Equal(t, []urlAnnounce{{url: setupTokenURL}, {url: setupTokenURL, autoOpen: true}}, d.scan([]byte(frame[cut:])))
	// The link's first line again (a screen redrawn, cut short) is not
	// announced: the client would keep it.
	require.Empty(t, d.scan([]byte("\r\n"+setupTokenURL[:80]+"\r\r\n\r\r\n")))
	require.Empty(t, d.scan([]byte(frame)), "each URL once")
}

// TestURLDetectorWrappedStaysBounded: lines of URL characters without end
// after a URL that fills its line join no further than a URL may be long.
func TestURLDetectorWrappedStaysBounded(t *testing.T) {
	var d urlDetector
	d.setCols(80)
	line := strings.Repeat("a", 80)
	got := d.scan([]byte("https://a.example/" + line[18:] + "\r\n"))
	for range 200 {
		got = append(got, d.scan([]byte(line+"\r\n"))...)
	}
	for _, a := range got {
		require.LessOrEqual(t, len(a.url), urlMaxLen)
	}
	require.LessOrEqual(t, len(d.tail), urlTail)
}

func TestPendingEscape(t *testing.T) {
	for _, c := range []struct {
		in   string
		want int // where the cut sequence begins; -1 for none
	}{
		{"text", -1},
		{"text\x1b", 4},
		{"text\x1b[3", 4},
		{"text\x1b[39m", -1},
		{"text\x1b[39", 4},
		{"a\x1b]8;;https://x", 1},
		{"a\x1b]8;;https://x\x07", -1},
		{"a\x1b]8;;https://x\x1b", 15},
		{"a\x1b(", 1},
		{"a\x1b(B", -1},
		{"a\x1b]" + strings.Repeat("x", escCarryMax), -1},
	} {
		want := c.want
		if want < 0 {
			want = len(c.in)
		}
		require.Equal(t, want, pendingEscape([]byte(c.in)), "%q", c.in)
	}
}

// FuzzURLDetector: any output, cut anywhere, in a terminal of any width,
// announces http(s) URLs of bounded length, never one that begins a URL
// announced before, and leaves the detector bounded.
func FuzzURLDetector(f *testing.F) {
	f.Add(wrappedFrame(setupTokenURL, 80, "\r\r\n", true), uint16(100), uint16(300), uint8(80))
	f.Add("see https://example.com/a\r\nDone\r\n", uint16(10), uint16(20), uint8(25))
	f.Add("https://x.example/"+strings.Repeat("z", 30)+"\n\x1b[1mzz\n", uint16(5), uint16(50), uint8(48))
	f.Fuzz(func(t *testing.T, s string, i, j uint16, cols uint8) {
		a, b := min(int(i), len(s)), min(int(j), len(s))
		a, b = min(a, b), max(a, b)
		var d urlDetector
		d.setCols(int(cols))
		var plain []string
		for _, a := range feed(&d, s[:a], s[a:b], s[b:]) {
			if !strings.HasPrefix(a.url, "http://") && !strings.HasPrefix(a.url, "https://") || len(a.url) > urlMaxLen {
				t.Fatalf("announced %q", a.url)
			}
			if a.autoOpen {
				continue
			}
			for _, p := range plain {
				if strings.HasPrefix(p, a.url) {
					t.Fatalf("announced %q after %q", a.url, p)
				}
			}
			plain = append(plain, a.url)
		}
		if len(d.tail) > urlTail || len(d.esc) > escCarryMax {
			t.Fatalf("kept %d bytes of text and %d of an escape", len(d.tail), len(d.esc))
		}
	})
}

// BenchmarkURLDetectorFlood: output without URLs, as a build log or a
// flood prints it, costs the detector little.
func BenchmarkURLDetectorFlood(b *testing.B) {
	chunk := []byte(strings.Repeat("building \x1b[32mpackage\x1b[0m 1234 of 5678 ...\r\n", 32<<10/48))
	var d urlDetector
	d.setCols(80)
	b.SetBytes(int64(len(chunk)))
	for b.Loop() {
		d.scan(chunk)
	}
}

// TestURLDetectorRealSetupToken: the bytes the real Claude CLI (2.1.197,
// `claude setup-token`, 80 columns, no browser) printed, captured through
// a PTY (testdata/claude-setup-token-80cols.bin): its login link,
// hard-wrapped into five colored lines, is announced whole whether the
// output comes in one read or in reads of 64 bytes, and auto-opened once in
// one read (in small reads the "Browser didn't open?" line comes in a
// chunk of its own, which keeps only its last 32 bytes: README, Known
// limits).
func TestURLDetectorRealSetupToken(t *testing.T) {
	data, err := os.ReadFile("testdata/claude-setup-token-80cols.bin")
	require.NoError(t, err)
	const want = "https://claude.com/cai/oauth/authorize?code=true&client_id=9d1c250a-e61b-44d9-88" +
		"ed-5944d1962f5e&response_type=code&redirect_uri=https%3A%2F%2Fplatform.claude.co" +
		"m%2Foauth%2Fcode%2Fcallback&scope=user%3Ainference&code_challenge=NN4PPB-HiOQgfN" +
		"wwttWju3I2e3A4j3fHkrcPbGR15gk&code_challenge_method=S256&state=Nlz4Psn8tHRV5QxWG" +
		"msf9szLPQEf38e_DzZP5sioRDg"
	for _, size := range []int{len(data), 64} {
		d := &urlDetector{}
		d.setCols(80)
		var chunks []string
		for i := 0; i < len(data); i += size {
			chunks = append(chunks, string(data[i:min(i+size, len(data))]))
		}
		requireGrowsTo(t, want, feed(d, chunks...), size == len(data), fmt.Sprintf("reads of %d bytes", size))
	}
}
