package workers

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestStripANSI(t *testing.T) {
	for _, c := range []struct{ in, want string }{
		{"plain https://example.com/x", "plain https://example.com/x"},
		{"\x1b[1;34mhttps://a.example/login\x1b[0m done", "https://a.example/login done"},
		{"\x1b]8;;https://link.example\x1b\\click\x1b]8;;\x1b\\", "click"},
		{"\x1b]0;title\x07after", "after"},
		{"\x1b(Bcharset \x1b=keypad \x1bMup", "charset keypad up"},
		{"\x1b[?25l\x1b[2K\rline", "\rline"},
		{"cut at the end \x1b[1", "cut at the end "},
		{"\x1b", ""},
		{"é ü 中文 \x1b[31m🙂\x1b[m", "é ü 中文 🙂"},
	} {
		require.Equal(t, c.want, stripANSI(c.in), "%q", c.in)
	}
}

// FuzzStripANSI: stripping never panics, never grows the text, leaves no
// ESC behind, and keeps text without ESC as it is.
func FuzzStripANSI(f *testing.F) {
	for _, s := range []string{"", "\x1b[31mred", "\x1b]8;;u\x1b\\t", "a\x1b", "\x1b\x1b[", "\x1bP\x1b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		out := stripANSI(s)
		if len(out) > len(s) || strings.IndexByte(out, 0x1b) >= 0 {
			t.Fatalf("%q -> %q", s, out)
		}
		if strings.IndexByte(s, 0x1b) < 0 && out != s {
			t.Fatalf("%q changed to %q", s, out)
		}
	})
}
