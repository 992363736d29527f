package workers

import (
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestTypedInterruptFlushesUnstoredOutput: typing the terminal's interrupt
// character drops the output read from the PTY and not yet stored, as the
// line discipline flushes what it holds; other keys drop nothing.
func TestTypedInterruptFlushesUnstoredOutput(t *testing.T) {
	p, err := startPTY(ptyConfig{Args: []string{"cat"}, Dir: t.TempDir(), Env: []string{"PATH=" + os.Getenv("PATH")}, Cols: 80, Rows: 24})
	require.NoError(t, err)
	t.Cleanup(func() { p.kill(0); p.close() })
	sh := &shell{p: p, log: slog.New(slog.DiscardHandler), inWake: make(chan struct{}, 1), stopped: make(chan struct{}), flow: newShellFlow(DefaultShellWindow)}
	sh.outCond = sync.NewCond(&sh.outMu)
	var wg sync.WaitGroup
	wg.Go(sh.inputLoop)
	t.Cleanup(func() { close(sh.stopped); wg.Wait() })
	pending := func() string {
		sh.outMu.Lock()
		defer sh.outMu.Unlock()
		return string(sh.pending)
	}
	sh.outMu.Lock()
	sh.pending = append(sh.pending, "a backlog of output"...)
	sh.outMu.Unlock()

	in := ptyIn.Value()
	sh.enqueue(shellOp{data: []byte("typed\r\x1b[A\x7f")})
	require.Eventually(t, func() bool { return ptyIn.Value() > in }, 5*time.Second, time.Millisecond)
	require.Equal(t, "a backlog of output", pending(), "keys that raise no signal")

	flushed := ptyFlushed.Value()
	sh.enqueue(shellOp{data: []byte("\x03")})
	require.Eventually(t, func() bool { return pending() == "" }, 5*time.Second, time.Millisecond)
	require.Equal(t, float64(len("a backlog of output")), ptyFlushed.Value()-flushed)
}

// TestFlushesOutputFollowsTheTerminal: whether a key flushes output is
// read from the terminal's settings as the program on it left them: ISIG
// off (a full-screen editor) or NOFLSH on keep the output, and a remapped
// interrupt character is the one that counts.
func TestFlushesOutputFollowsTheTerminal(t *testing.T) {
	for _, tc := range []struct {
		name, stty  string
		flush, keep []string
	}{
		{name: "default", stty: "", flush: []string{"\x03", "\x1c", "\x1a", "x\x03y"}, keep: []string{"abc\r", "\x1b[A", "\x7f", "\t", "\x04"}},
		{name: "no signals", stty: "-isig", keep: []string{"\x03", "\x1c", "\x1a"}},
		{name: "no flush", stty: "noflsh", keep: []string{"\x03", "\x1a"}},
		{name: "interrupt on ^X", stty: "intr ^X", flush: []string{"\x18", "\x1c"}, keep: []string{"\x03"}},
		{name: "no interrupt character", stty: "intr undef", flush: []string{"\x1c"}, keep: []string{"\x03"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			// The program on the terminal changes its settings (as an
			// editor does), then waits: the master must see them.
			p, err := startPTY(ptyConfig{Args: []string{"sh", "-c", "stty " + tc.stty + " && echo set && exec sleep 30"}, Dir: t.TempDir(), Env: []string{"PATH=" + os.Getenv("PATH")}, Cols: 80, Rows: 24})
			require.NoError(t, err)
			t.Cleanup(func() { p.kill(0); p.close() })
			var out strings.Builder
			buf := make([]byte, 256)
			require.NoError(t, p.f.SetReadDeadline(time.Now().Add(10*time.Second)))
			for !strings.Contains(out.String(), "set") {
				n, err := p.f.Read(buf)
				out.Write(buf[:n])
				require.NoError(t, err, "output so far: %q", out.String())
			}
			for _, k := range tc.flush {
				require.True(t, p.flushesOutput([]byte(k)), "%q", k)
			}
			for _, k := range tc.keep {
				require.False(t, p.flushesOutput([]byte(k)), "%q", k)
			}
		})
	}
}
