package workers

import (
	"fmt"
	"io"
	"os"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/stretchr/testify/require"
)

func TestSplitChunks(t *testing.T) {
	// A character cut by a read is kept for the next batch.
	chunks, rest := splitChunks([]byte("ab\xc3"), false)
	require.Equal(t, []string{"ab"}, strs(chunks))
	require.Equal(t, []byte("\xc3"), rest)
	chunks, rest = splitChunks(append(rest, 0xa9, 'c'), false)
	require.Equal(t, []string{"éc"}, strs(chunks))
	require.Empty(t, rest)
	// Invalid bytes become U+FFFD: frames are valid UTF-8 JSON text.
	chunks, rest = splitChunks([]byte("x\xffy"), false)
	require.Equal(t, []string{"x\uFFFDy"}, strs(chunks))
	require.Empty(t, rest)
	// At the end an incomplete character is flushed as is (replaced).
	chunks, _ = splitChunks([]byte("z\xe2\x82"), true)
	require.Equal(t, []string{"z\uFFFD"}, strs(chunks))
	// Large output is cut below the chunk size, between characters.
	big := []byte(strings.Repeat("é", shellChunkMax))
	chunks, rest = splitChunks(big, false)
	require.Empty(t, rest)
	total := 0
	for _, c := range chunks {
		require.LessOrEqual(t, len(c), shellChunkMax)
		require.True(t, utf8.Valid(c))
		require.NotContains(t, string(c), "\uFFFD")
		total += len(c)
	}
	require.Equal(t, len(big), total)
	chunks, _ = splitChunks([]byte("OPEN_URL: https://a.test/x\r\n"), false)
	require.Equal(t, []string{"[INFO] Opening in browser: https://a.test/x\r\n"}, strs(chunks))
}

// strs gives chunks as strings, to compare.
func strs(chunks [][]byte) []string {
	out := make([]string, len(chunks))
	for i, c := range chunks {
		out[i] = string(c)
	}
	return out
}

func TestURLDetector(t *testing.T) {
	var d urlDetector
	require.Empty(t, d.scan([]byte(strings.Repeat("y\r\n", 1000))))
	got := d.scan([]byte("Visit \x1b[4mhttps://claude.ai/oauth/authorize?code=true&x=1\x1b[0m.\r\n"))
	require.Equal(t, []urlAnnounce{{url: "https://claude.ai/oauth/authorize?code=true&x=1"}}, got)
	require.Empty(t, d.scan([]byte("again https://claude.ai/oauth/authorize?code=true&x=1\r\n")), "each URL once")
	got = d.scan([]byte("Browser didn't open? Use the url below\r\n"))
	require.Equal(t, []urlAnnounce{{url: "https://claude.ai/oauth/authorize?code=true&x=1", autoOpen: true}}, got)
	require.Empty(t, d.scan([]byte("browser didn't open\r\n")), "autoOpen once")
	// A URL cut between two chunks is found once whole.
	var d2 urlDetector
	require.Empty(t, d2.scan([]byte("go to htt")))
	got = d2.scan([]byte("ps://example.com/login now\r\n"))
	require.Equal(t, []urlAnnounce{{url: "https://example.com/login"}}, got)
	require.Empty(t, d2.scan([]byte("ftp://example.com/file\r\n")), "http and https only")
}

// TestURLDetectorStaysBounded: a terminal that prints a new long URL and
// an open prompt in every chunk (its user's to print) leaves the detector
// a bounded memory, not every chunk it saw.
func TestURLDetectorStaysBounded(t *testing.T) {
	var d urlDetector
	pad := strings.Repeat("a", 8<<10)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range 300 {
		d.scan(fmt.Appendf(nil, "open this url https://x.example/%d/%s short https://x.example/%d\r\n", i, pad, i))
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	require.LessOrEqual(t, len(d.seen), urlsRemembered)
	require.LessOrEqual(t, len(d.autoSent), urlsRemembered)
	grown := int64(after.HeapAlloc) - int64(before.HeapAlloc)
	require.Less(t, grown, int64(1<<20), "the detector kept %d KiB of 300 chunks of 8 KiB", grown>>10)
	require.NotEmpty(t, d.scan([]byte("Visit https://claude.ai/oauth/authorize?code=1\r\n")), "a login URL is still announced")

	var many strings.Builder
	for i := range 1000 {
		fmt.Fprintf(&many, "https://x.example/%d ", i)
	}
	require.Len(t, d.scan([]byte(many.String())), urlsPerChunk, "URLs announced for one chunk")
}

// TestPTYKillSession: killing a terminal kills its whole session: an
// interactive bash's jobs (each in its own process group), a job that
// ignores SIGHUP, and a job that moved to a session of its own.
func TestPTYKillSession(t *testing.T) {
	p, err := startPTY(ptyConfig{Args: []string{"bash", "--norc", "--noprofile", "-i"}, Dir: t.TempDir(), Env: []string{"PATH=" + os.Getenv("PATH"), "TERM=dumb"}, Cols: 90, Rows: 33})
	require.NoError(t, err)
	t.Cleanup(func() { p.kill(0); p.close() })
	out := make(chan string, 100)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := p.f.Read(buf)
			if n > 0 {
				out <- string(buf[:n])
			}
			if err != nil {
				close(out)
				return
			}
		}
	}()
	var seen strings.Builder
	// waitWithin waits up to d for s in the output, and reports whether
	// it came.
	waitWithin := func(s string, d time.Duration) bool {
		t.Helper()
		deadline := time.After(d)
		for !strings.Contains(seen.String(), s) {
			select {
			case chunk, ok := <-out:
				require.True(t, ok, "terminal closed before %q: %q", s, seen.String())
				seen.WriteString(chunk)
			case <-deadline:
				return false
			}
		}
		return true
	}
	waitFor := func(s string) {
		t.Helper()
		if !waitWithin(s, 10*time.Second) {
			t.Fatalf("no %q in %q", s, seen.String())
		}
	}
	marker := strconv.Itoa(7000 + os.Getpid()%1000)
	_, err = p.f.Write([]byte("stty size; sleep 2" + marker + "1 & (trap '' HUP; exec sleep 2" + marker + "2) & setsid sleep 2" + marker + "3 & echo go-$((3*3))\r"))
	require.NoError(t, err)
	waitFor("33 90")
	waitFor("go-9")
	require.NoError(t, p.resize(120, 40))
	// The size is asked again if the first answer is the old one: once in
	// CI's race pass a stty typed right after the resize printed "33 90"
	// (not reproduced in 100 runs under load). A resize that was lost
	// fails all three.
	resized := false
	for try := 0; try < 3 && !resized; try++ {
		_, err = p.f.Write([]byte("stty size\r"))
		require.NoError(t, err)
		resized = waitWithin("40 120", 3*time.Second)
	}
	require.True(t, resized, "no \"40 120\" in %q", seen.String())
	require.Eventually(t, func() bool { return len(pidsWith("2"+marker)) == 3 }, 5*time.Second, 20*time.Millisecond)

	p.kill(100 * time.Millisecond)
	select {
	case <-p.exited:
	case <-time.After(5 * time.Second):
		t.Fatal("bash survived kill")
	}
	// SIGHUP, or SIGKILL when a loaded machine let bash outlive the grace:
	// which of the two won is timing; that it is reported as a signal is not.
	code, sig := p.exitStatus()
	require.Contains(t, []string{"SIGHUP", "SIGKILL"}, sig)
	require.Contains(t, []int{128 + int(syscall.SIGHUP), 128 + int(syscall.SIGKILL)}, code)
	require.Eventually(t, func() bool { return len(pidsWith("2"+marker)) == 0 }, 5*time.Second, 20*time.Millisecond,
		"processes left: %v", pidsWith("2"+marker))
	for range out {
	}
}

// TestPTYLateKillSparesNextTerminal: a kill that ends after its terminal
// was closed must not touch the terminal opened next, which the kernel
// gives the same /dev/pts number (the lowest free one). CI once lost a
// whole worker so: another worker's late kill found it holding that
// number while it started a terminal.
func TestPTYLateKillSparesNextTerminal(t *testing.T) {
	env := []string{"PATH=" + os.Getenv("PATH"), "TERM=dumb"}
	start := func(args ...string) *ptyProc {
		t.Helper()
		p, err := startPTY(ptyConfig{Args: args, Dir: t.TempDir(), Env: env})
		require.NoError(t, err)
		return p
	}
	name := func(p *ptyProc) string {
		for link := range p.tty {
			return link
		}
		return ""
	}
	var old, next *ptyProc
	// Parallel tests open terminals too, and may take the number first.
	for range 20 {
		old = start("true")
		select {
		case <-old.exited:
		case <-time.After(10 * time.Second):
			t.Fatal("true did not end")
		}
		old.close()
		next = start("sleep", "60")
		if name(next) == name(old) {
			break
		}
		next.kill(0)
		next.close()
		next = nil
	}
	if next == nil {
		skipOutsideCI(t, "no terminal got the ended one's number in 20 tries")
	}
	t.Cleanup(func() { next.kill(0); next.close() })
	require.NotEmpty(t, name(next))

	old.killSession(nil)
	select {
	case <-next.exited:
		t.Fatalf("the kill of an ended terminal killed the next terminal on %s", name(next))
	case <-time.After(300 * time.Millisecond):
	}
}

// pidsWith lists live processes whose command line contains s.
func pidsWith(s string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		f, err := os.Open("/proc/" + e.Name() + "/cmdline")
		if err != nil {
			continue
		}
		b, _ := io.ReadAll(f)
		f.Close()
		if strings.Contains(string(b), s) {
			out = append(out, pid)
		}
	}
	return out
}

// BenchmarkSplitChunks: cutting a flood's batch into chunks.
func BenchmarkSplitChunks(b *testing.B) {
	buf := []byte(strings.Repeat(strings.Repeat("a", 100)+"\r\n", 2560)) // 255 KiB
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		_, _ = splitChunks(buf, false)
	}
}
