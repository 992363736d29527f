package handlers

import (
	"encoding/json"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
)

// TestOutputFrame: the hand-written frame decodes to what json.Marshal's
// would: the same data (invalid UTF-8 as U+FFFD) and seq.
func TestOutputFrame(t *testing.T) {
	for _, data := range []string{
		"", "plain", "quote \" backslash \\ slash /", "\x1b[31mred\x1b[0m\r\n\t\b\f\x00\x7f",
		"é ü 中文 🙂", "<script>&</script>", "\u2028\u2029", "bad \xff\xfe end", "cut \xe4\xb8", strings.Repeat("ab\"", 5000),
	} {
		frame := outputFrame(42, data)
		require.True(t, utf8.Valid(frame), "%q", data)
		var got app.ShellOutput
		require.NoError(t, json.Unmarshal(frame, &got), "%s", frame)
		want := strings.ToValidUTF8(data, "\uFFFD")
		if !utf8.ValidString(data) {
			// encoding/json replaces each invalid byte on its own.
			var ref app.ShellOutput
			b, _ := json.Marshal(app.ShellOutput{Data: data})
			require.NoError(t, json.Unmarshal(b, &ref))
			want = ref.Data
		}
		require.Equal(t, "output", got.Type)
		require.Equal(t, want, got.Data)
		require.Equal(t, int64(42), *got.Seq)
		seq, ok := frameSeq(frame)
		require.True(t, ok)
		require.Equal(t, int64(42), seq)
	}
}

// TestOutputFrameAllocatesOnce: a frame is one allocation, however dense
// its escapes (reallocating while escaping doubled a gateway's garbage in
// a flood of short lines).
func TestOutputFrameAllocatesOnce(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector drops sync.Pool items at random")
	}
	for _, data := range []string{
		strings.Repeat("1234567\r\n", 3000),
		strings.Repeat("\x1b[01;34mdir\x1b[0m\r\n", 1500),
		strings.Repeat("\x00", 32<<10),
		strings.Repeat("a", 100),
	} {
		allocs := testing.AllocsPerRun(20, func() { _ = outputFrame(7, data) })
		require.Equal(t, 1.0, allocs, "%.20q", data)
	}
}

// FuzzAppendJSONString: any bytes give a valid JSON string of valid UTF-8
// that decodes as encoding/json decodes its own encoding of them.
func FuzzAppendJSONString(f *testing.F) {
	for _, s := range []string{"", "a\"b\\c", "\x00\x1f\x7f", "\xff", "中\xe4", "\U0001F642"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := appendJSONString(nil, s)
		if !utf8.Valid(b) {
			t.Fatalf("invalid UTF-8 for %q: %q", s, b)
		}
		var got string
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatalf("invalid JSON for %q: %q: %v", s, b, err)
		}
		ref, _ := json.Marshal(s)
		var want string
		_ = json.Unmarshal(ref, &want)
		if got != want {
			t.Fatalf("%q decodes to %q, encoding/json's to %q", s, got, want)
		}
	})
}

func BenchmarkOutputFrame(b *testing.B) {
	for name, data := range map[string]string{
		"ls-colors": strings.Repeat("drwxr-xr-x  2 user user 4096 Dec  3 20:11 \x1b[01;34mfolder\x1b[0m\r\n", 200),
		"base64":    strings.Repeat("U29tZSBiYXNlNjQgdGV4dCwgb2YgdGhlIGtpbmQgdGhlIGJlbmNobWFyayBwcmludHMgMTIz\r\n", 200),
		"fold-100":  strings.Repeat(strings.Repeat("a", 100)+"\r\n", 300),
		"seq":       strings.Repeat("1234567\r\n", 3000),
		"utf8":      strings.Repeat("│ état: 中文 ✓ \x1b[32mok\x1b[0m\r\n", 500),
	} {
		b.Run(name+"/hand", func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				_ = outputFrame(1, data)
			}
		})
		b.Run(name+"/encoding-json", func(b *testing.B) {
			b.SetBytes(int64(len(data)))
			seq := int64(1)
			for b.Loop() {
				_, _ = json.Marshal(app.ShellOutput{Type: "output", Data: data, Seq: &seq})
			}
		})
	}
}
