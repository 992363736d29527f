package workers

import (
	"encoding/json"
	"log/slog"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
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

// TestSignalKeyAnnounced: each typed signal key is announced on the
// terminal's channel after every chunk stored before the key was written
// and before every chunk read after it (the signal's own ^C and the prompt
// among them), flushed when the terminal's settings made it a signal and
// kept when not. A gateway holding the socket that typed it skips the
// chunks before the announcement only when they were flushed.
func TestSignalKeyAnnounced(t *testing.T) {
	w, st, spec, gen := shellWorker(t)

	messages := storetest.ShellMessages(t, st, "k1")

	open, _ := json.Marshal(spec)
	require.True(t, w.shellControl(store.Control{Type: store.ControlShellOpen, Shell: "k1", Gen: gen, Data: open}))
	type_ := func(s string) {
		data, _ := json.Marshal(s)
		require.True(t, w.shellControl(store.Control{Type: store.ControlShellInput, Shell: "k1", Gen: gen, Data: data}))
	}
	// since returns the messages from the i-th on and the output of their
	// chunks.
	since := func(i int) ([]store.ShellLive, string) {
		msgs := messages()[i:]
		var out strings.Builder
		for _, m := range msgs {
			out.WriteString(m.Data)
		}
		return msgs, out.String()
	}
	waitFor := func(from int, text string) {
		t.Helper()
		require.Eventually(t, func() bool { _, out := since(from); return strings.Contains(out, text) }, 20*time.Second, 5*time.Millisecond, text)
	}
	count := func() int { return len(messages()) }
	// signalAt finds the one announcement from the i-th message on and
	// checks that it splits the chunks by seq; it returns the output after.
	signalAt := func(from int) (store.ShellLive, string) {
		t.Helper()
		msgs, _ := since(from)
		at := -1
		for i, m := range msgs {
			if m.Kind == 's' {
				require.Equal(t, -1, at, "one announcement per key")
				at = i
			}
		}
		require.NotEqual(t, -1, at, "the key is announced")
		sig := msgs[at]
		var after strings.Builder
		for i, m := range msgs {
			if m.Kind != 'o' {
				continue
			}
			if i < at {
				require.LessOrEqual(t, m.Seq, sig.Seq, "a chunk published before the announcement was stored before the key")
			} else {
				require.Greater(t, m.Seq, sig.Seq, "a chunk published after the announcement was read after the key")
				after.WriteString(m.Data)
			}
		}
		return sig, after.String()
	}

	require.Eventually(t, func() bool { return count() > 0 }, 20*time.Second, 5*time.Millisecond, "the prompt")
	from := count()
	type_("yes\r")
	waitFor(from, "y\r\ny\r\ny\r\n")
	from = count()
	type_("\x03")
	type_("echo back-$((1+1))\r")
	waitFor(from, "back-2")
	sig, after := signalAt(from)
	require.True(t, sig.Flushed, "^C under bash's settings raises SIGINT and flushes")
	require.Equal(t, gen, sig.Gen)
	require.Contains(t, after, "^C", "the signal's own echo is after the announcement")
	require.Contains(t, after, "back-2")

	// Signals off (as an editor sets them): the key is kept, and still
	// announced, so a gateway stops holding at once.
	from = count()
	type_("stty -isig; cat\r")
	time.Sleep(200 * time.Millisecond) // cat reading
	type_("\x03")
	require.Eventually(t, func() bool {
		msgs, _ := since(from)
		for _, m := range msgs {
			if m.Kind == 's' {
				return true
			}
		}
		return false
	}, 20*time.Second, 5*time.Millisecond)
	sig, _ = signalAt(from)
	require.False(t, sig.Flushed, "with ISIG off ^C is a byte for cat")
}

// TestSignalKeyEndsAFloodsWait: after an append of flood size, output of
// 2 KiB or more waits for more to join it (here for an hour, so that
// waiting shows); what the worker reads after a signal key (the end of the
// flood, the key's echo, a prompt) goes out at once. Output is put where
// the PTY reader puts it, beside a bash that prints nothing.
func TestSignalKeyEndsAFloodsWait(t *testing.T) {
	w, st, spec, gen := shellWorker(t)
	messages := storetest.ShellMessages(t, st, "k1")
	open, _ := json.Marshal(spec)
	require.True(t, w.shellControl(store.Control{Type: store.ControlShellOpen, Shell: "k1", Gen: gen, Data: open}))
	output := func() string {
		var out strings.Builder
		for _, m := range messages() {
			out.WriteString(m.Data)
		}
		return out.String()
	}
	// The whole prompt, not its first bytes: on a loaded machine the rest
	// came after the a's below, a small append that ended the flood (and
	// so the b's went out at once).
	require.Eventually(t, func() bool {
		o := output()
		return strings.HasSuffix(o, "# ") || strings.HasSuffix(o, "$ ")
	}, 20*time.Second, 5*time.Millisecond, "the prompt")
	w.shells.mu.Lock()
	sh := w.shells.m["k1"]
	w.shells.mu.Unlock()
	read := func(s string) {
		sh.outMu.Lock()
		sh.coalesce = time.Hour
		sh.pending = append(sh.pending, s...)
		sh.outCond.Broadcast()
		sh.outMu.Unlock()
	}

	read(strings.Repeat("a", 8<<10))
	require.Eventually(t, func() bool { return strings.Contains(output(), strings.Repeat("a", 8<<10)) }, 20*time.Second, 5*time.Millisecond, "a flood's read")
	held := strings.Repeat("b", 3<<10)
	read(held)
	time.Sleep(200 * time.Millisecond)
	require.NotContains(t, output(), held[:64], "the flood's next read waits for more")

	sh.signalTyped(true) // drops the b's, as the line discipline does
	read("^C\r\n" + strings.Repeat("c", 3<<10) + "after-the-key$ ")
	require.Eventually(t, func() bool { return strings.Contains(output(), "after-the-key$ ") }, 20*time.Second, 5*time.Millisecond,
		"what follows the key goes out at once")
	require.NotContains(t, output(), held[:64])
}
