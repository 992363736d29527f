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

// TestFlushDropsUnstoredOutput: when the terminal's line discipline
// flushes its output (a typed Ctrl-C, with ISIG on and NOFLSH off), the
// output read from the PTY and not yet stored goes too, and what follows
// the flush (the echoed ^C) stays; with NOFLSH, or with ISIG off, a Ctrl-C
// drops nothing. No packet-mode header reaches the output.
func TestFlushDropsUnstoredOutput(t *testing.T) {
	for _, tc := range []struct {
		name, stty string
		dropped    bool
	}{
		{name: "default", dropped: true},
		{name: "noflsh", stty: "noflsh"},
		{name: "no signals", stty: "-isig"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			script := "echo before-flush; exec cat"
			if tc.stty != "" {
				script = "stty " + tc.stty + " && " + script
			}
			p, err := startPTY(ptyConfig{Args: []string{"sh", "-c", script}, Dir: t.TempDir(), Env: []string{"PATH=" + os.Getenv("PATH")}, Cols: 80, Rows: 24})
			require.NoError(t, err)
			t.Cleanup(func() { p.kill(0); p.close() })
			// The reader alone: nothing takes the output to Redis, so what
			// was read stays pending until a flush drops it.
			sh := &shell{p: p, log: slog.New(slog.DiscardHandler), stopped: make(chan struct{}), flow: newShellFlow(DefaultShellWindow)}
			sh.outCond = sync.NewCond(&sh.outMu)
			var wg sync.WaitGroup
			wg.Go(sh.readLoop)
			t.Cleanup(func() { p.kill(0); p.close(); wg.Wait() })
			pending := func() string {
				sh.outMu.Lock()
				defer sh.outMu.Unlock()
				return string(sh.pending)
			}
			require.Eventually(t, func() bool { return strings.Contains(pending(), "before-flush") }, 10*time.Second, time.Millisecond)
			require.Equal(t, "before-flush\r\n", pending(), "the output as the program wrote it")

			flushed := ptyFlushed.Value()
			_, err = p.f.Write([]byte{3})
			require.NoError(t, err)
			require.Eventually(t, func() bool { return strings.Contains(pending(), "^C") }, 10*time.Second, time.Millisecond,
				"the echo of ^C: %q", pending)
			if tc.dropped {
				require.Equal(t, "^C", pending())
				require.Equal(t, float64(len("before-flush\r\n")), ptyFlushed.Value()-flushed)
			} else {
				require.Equal(t, "before-flush\r\n^C", pending())
				require.Equal(t, flushed, ptyFlushed.Value())
			}
		})
	}
}
