package workers

import (
	"context"
	"encoding/json"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// shellWorker is a worker on an embedded store, with terminal "k1" of
// spec reserved for it in the store (at generation gen), not started.
func shellWorker(t *testing.T) (*Worker, *store.Store, app.ShellSpec, int64) {
	return shellWorkerOn(t, storetest.Mini)
}

// shellWorkerOn is shellWorker on backend b.
func shellWorkerOn(t *testing.T, b storetest.Backend) (*Worker, *store.Store, app.ShellSpec, int64) {
	t.Helper()
	return shellWorkerAt(t, storetest.Start(t, b))
}

// shellWorkerAt is shellWorker on the Redis at url.
func shellWorkerAt(t *testing.T, url string) (*Worker, *store.Store, app.ShellSpec, int64) {
	t.Helper()
	st := storetest.New(t, url)
	dir := t.TempDir()
	// A HOME of its own: the terminal's bash reads no ~/.bashrc of the
	// machine (a pyenv init there took seconds per prompt under load).
	w, err := New(Config{Store: st, ID: "w1", Workspaces: app.Workspaces{Roots: []string{dir}}, Providers: map[app.Provider]Provider{app.Claude: ClaudeProvider{}},
		Env: []string{"HOME=" + t.TempDir()}})
	require.NoError(t, err)
	t.Cleanup(w.killShells)
	spec := app.ShellSpec{Owner: "alice", ProjectPath: dir, Provider: app.PlainShell, Plain: true, Cols: 80, Rows: 24}
	gen, ok, err := st.ShellOpen(context.Background(), "k1", 0, "w1", "bash", spec, store.ShellLimit{})
	require.NoError(t, err)
	require.True(t, ok)
	return w, st, spec, gen
}

// TestShellInputBeforeOpen: keystrokes that reach the worker before their
// terminal's open control (a gateway that lost an open race forwards them
// at once) are typed once the terminal starts, not lost.
func TestShellInputBeforeOpen(t *testing.T) {
	w, st, spec, gen := shellWorker(t)
	ctx := context.Background()

	input, _ := json.Marshal("echo early-$((6*7))\r")
	require.True(t, w.shellControl(store.Control{Type: store.ControlShellInput, Shell: "k1", Gen: gen, Data: input}))
	stale, _ := json.Marshal("echo stale-generation\r")
	require.True(t, w.shellControl(store.Control{Type: store.ControlShellInput, Shell: "k1", Gen: gen - 1, Data: stale}))
	open, _ := json.Marshal(spec)
	require.True(t, w.shellControl(store.Control{Type: store.ControlShellOpen, Shell: "k1", Gen: gen, Data: open}))

	require.Eventually(t, func() bool {
		chunks, err := st.ShellOutput(ctx, "k1", 0, 1000)
		require.NoError(t, err)
		var out strings.Builder
		for _, c := range chunks {
			out.WriteString(c.Data)
		}
		return strings.Contains(out.String(), "early-42")
	}, 20*time.Second, 20*time.Millisecond, "the early keystrokes typed")
	w.shells.mu.Lock()
	defer w.shells.mu.Unlock()
	require.Empty(t, w.shells.early, "what was kept is played or dropped, not kept")
}

// TestShellAcksControl: a gateway's batch of acks reaches the flow control
// of each terminal it names at its generation, and no other.
func TestShellAcksControl(t *testing.T) {
	w, st, spec, gen := shellWorker(t)
	ctx := context.Background()
	open, _ := json.Marshal(spec)
	require.True(t, w.shellControl(store.Control{Type: store.ControlShellOpen, Shell: "k1", Gen: gen, Data: open}))
	sh := w.shellOf("k1", gen)
	require.NotNil(t, sh)
	// The prompt is appended: an ack of its seq gives room.
	require.Eventually(t, func() bool {
		n, err := st.ShellOutputLen(ctx, "k1")
		return err == nil && n > 0
	}, 20*time.Second, 10*time.Millisecond)

	flow := func() (on bool, acked int64) {
		sh.flow.mu.Lock()
		defer sh.flow.mu.Unlock()
		return sh.flow.on, sh.flow.acked
	}
	acks, _ := json.Marshal([]store.ShellAck{{Shell: "k1", Gen: gen + 1, Seq: 1}, {Shell: "other", Gen: gen, Seq: 1}})
	require.True(t, w.shellControl(store.Control{Type: store.ControlShellAcks, Data: acks}))
	on, _ := flow()
	require.False(t, on, "an ack of another generation or terminal")

	acks, _ = json.Marshal([]store.ShellAck{{Shell: "k1", Gen: gen, Seq: 1}})
	require.True(t, w.shellControl(store.Control{Type: store.ControlShellAcks, Data: acks}))
	on, _ = flow()
	require.True(t, on)
	// The chunk is in Redis before its append returns here: the ack counts
	// once it is recorded.
	require.Eventually(t, func() bool { _, acked := flow(); return acked > 0 }, 5*time.Second, time.Millisecond)

	require.True(t, w.shellControl(store.Control{Type: store.ControlShellAcks, Data: []byte(`{"not":"a list"}`)}), "dropped, not fatal")
}

// TestShellInputRacesOpen: keystrokes from a link's goroutine, one per
// control, while the inbox's goroutine handles the open: every one is
// typed, in order, whichever side of the open it falls on.
func TestShellInputRacesOpen(t *testing.T) {
	w, st, spec, gen := shellWorker(t)
	ctx := context.Background()
	const word = "abcdefghijklmnopqrstuvwxyz0123456789"
	keys := append([]string{"echo race-"}, strings.Split(word, "")...)
	keys = append(keys, "\r")
	open, _ := json.Marshal(spec)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for _, k := range keys {
			data, _ := json.Marshal(k)
			w.shellControl(store.Control{Type: store.ControlShellInput, Shell: "k1", Gen: gen, Data: data})
		}
	}()
	require.True(t, w.shellControl(store.Control{Type: store.ControlShellOpen, Shell: "k1", Gen: gen, Data: open}))
	<-done
	var out strings.Builder
	require.Eventually(t, func() bool {
		chunks, err := st.ShellOutput(ctx, "k1", 0, 1000)
		require.NoError(t, err)
		out.Reset()
		for _, c := range chunks {
			out.WriteString(c.Data)
		}
		// The command's output, not the typed line's echo.
		return strings.Contains(out.String(), "\rrace-"+word) || strings.Contains(out.String(), "\nrace-"+word)
	}, 20*time.Second, 20*time.Millisecond, "the keystrokes typed in order: %q", &out)
}

// TestShellOutputInOrder: output that comes in many small pieces, and so
// in many appends, is stored whole and in order, one seq after another,
// on miniredis and on redis-server.
func TestShellOutputInOrder(t *testing.T) {
	for _, b := range storetest.Backends {
		t.Run(string(b), func(t *testing.T) {
			w, st, spec, gen := shellWorkerOn(t, b)
			ctx := context.Background()
			open, _ := json.Marshal(spec)
			require.True(t, w.shellControl(store.Control{Type: store.ControlShellOpen, Shell: "k1", Gen: gen, Data: open}))
			input, _ := json.Marshal("for i in $(seq 1 400); do echo n-$i-; done; echo end-$((6*7))\r")
			require.True(t, w.shellControl(store.Control{Type: store.ControlShellInput, Shell: "k1", Gen: gen, Data: input}))
			var out strings.Builder
			var chunks []store.ShellChunk
			require.Eventually(t, func() bool {
				var err error
				chunks, err = st.ShellOutput(ctx, "k1", 0, 5000)
				require.NoError(t, err)
				out.Reset()
				for _, c := range chunks {
					out.WriteString(c.Data)
				}
				return strings.Contains(out.String(), "end-42")
			}, 30*time.Second, 20*time.Millisecond, "the output: %q", &out)
			for i, c := range chunks {
				require.Equal(t, int64(i+1), c.Seq, "seqs follow one another")
			}
			var got []string
			for _, m := range regexp.MustCompile(`n-(\d+)-\r\n`).FindAllStringSubmatch(out.String(), -1) {
				got = append(got, m[1])
			}
			want := make([]string, 400)
			for i := range want {
				want[i] = strconv.Itoa(i + 1)
			}
			require.Equal(t, want, got, "every line once, in order")
		})
	}
}

// TestShellEndsWithUnreadInput: a paste larger than the PTY's buffer into
// a program that never reads it (here sleep) must not keep the terminal
// from ending: its exit is recorded and it leaves the worker.
func TestShellEndsWithUnreadInput(t *testing.T) {
	w, st, spec, gen := shellWorker(t)
	spec.InitialCommand = "sleep 1"
	open, _ := json.Marshal(spec)
	require.True(t, w.shellControl(store.Control{Type: store.ControlShellOpen, Shell: "k1", Gen: gen, Data: open}))
	paste, _ := json.Marshal(strings.Repeat(strings.Repeat("a", 99)+"\r", 700)) // 70 KB
	require.True(t, w.shellControl(store.Control{Type: store.ControlShellInput, Shell: "k1", Gen: gen, Data: paste}))
	require.Eventually(t, func() bool { return w.shellCount() == 0 }, 20*time.Second, 20*time.Millisecond,
		"the terminal did not end after its program did")
	info, _, err := st.Shell(context.Background(), "k1")
	require.NoError(t, err)
	require.Equal(t, store.ShellExited, info.State)
}

// TestShellNotDetachedByAStall: Redis stalls (here DEBUG SLEEP; in
// production a failover whose promoted replica holds a watch time older
// than the last one written) for longer than the detach timeout while a
// gateway refreshes the terminal's watch time. The worker's check that
// waited out the stall reads a long idle time, and must not take it for a
// detached terminal: the terminal lives on. Before, it was killed.
func TestShellNotDetachedByAStall(t *testing.T) {
	srv := storetest.StartServerWith(t, storetest.Options{Config: []string{"enable-debug-command yes"}})
	st := storetest.New(t, srv.URL)
	dir := t.TempDir()
	w, err := New(Config{Store: st, ID: "w1", Workspaces: app.Workspaces{Roots: []string{dir}},
		Providers: map[app.Provider]Provider{app.Claude: ClaudeProvider{}}, ShellDetachTimeout: 2 * time.Second})
	require.NoError(t, err)
	t.Cleanup(w.killShells)
	ctx, cancel := context.WithCancel(context.Background())
	loopDone := make(chan struct{})
	t.Cleanup(func() { cancel(); <-loopDone })
	go func() { defer close(loopDone); w.shellLoop(ctx) }()

	spec := app.ShellSpec{Owner: "alice", ProjectPath: dir, Provider: app.PlainShell, Plain: true, Cols: 80, Rows: 24}
	gen, ok, err := st.ShellOpen(ctx, "k1", 0, "w1", "bash", spec, store.ShellLimit{})
	require.NoError(t, err)
	require.True(t, ok)
	open, _ := json.Marshal(spec)
	require.True(t, w.shellControl(store.Control{Type: store.ControlShellOpen, Shell: "k1", Gen: gen, Data: open}))
	// A gateway's refresh, every 500 ms (a quarter of the timeout).
	touching := make(chan struct{})
	go func() {
		defer close(touching)
		for ctx.Err() == nil {
			_, _ = st.ShellTouch(ctx, "k1", gen, 0)
			time.Sleep(500 * time.Millisecond)
		}
	}()
	t.Cleanup(func() { cancel(); <-touching })
	time.Sleep(time.Second)

	rdb := storetest.Client(t, srv.URL)
	require.NoError(t, rdb.Do(ctx, "DEBUG", "SLEEP", "3").Err())
	time.Sleep(3 * time.Second) // the checks after the stall
	w.shells.mu.Lock()
	_, alive := w.shells.m["k1"]
	w.shells.mu.Unlock()
	require.True(t, alive, "the terminal lives through the stall")
	info, _, err := st.Shell(ctx, "k1")
	require.NoError(t, err)
	require.NotEqual(t, store.ShellExited, info.State)
}

// TestShellOpenWhileDrainingIsRefused: an open that reaches a worker
// already ending its terminals (sent before the gateway read that the
// worker drains) ends at once with a notice, rather than leaving a blank
// terminal until the worker is gone.
func TestShellOpenWhileDrainingIsRefused(t *testing.T) {
	w, st, spec, gen := shellWorker(t)
	ctx := context.Background()
	w.killShells()
	open, _ := json.Marshal(spec)
	require.True(t, w.shellControl(store.Control{Type: store.ControlShellOpen, Shell: "k1", Gen: gen, Data: open}))
	require.Eventually(t, func() bool {
		info, ok, err := st.Shell(ctx, "k1")
		require.NoError(t, err)
		return ok && info.State == store.ShellExited
	}, 10*time.Second, 20*time.Millisecond)
	chunks, err := st.ShellOutput(ctx, "k1", 0, 10)
	require.NoError(t, err)
	require.Len(t, chunks, 1)
	require.Contains(t, chunks[0].Data, "shutting down")
}

// TestConcurrentOpensLeaveOneTerminal: the same open reaching the worker
// twice at once (from a gateway's link and the inbox, or two gateways)
// starts one terminal that stays, and the other is ended: before, both
// started and the second replaced the first in the worker's map, so the
// first could be neither killed nor waited for, and a shutdown waited on
// it for good.
func TestConcurrentOpensLeaveOneTerminal(t *testing.T) {
	w, st, spec, gen := shellWorker(t)
	open, _ := json.Marshal(spec)
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			w.shellControl(store.Control{Type: store.ControlShellOpen, Shell: "k1", Gen: gen, Data: open})
		}()
	}
	wg.Wait()
	require.Eventually(t, func() bool {
		chunks, err := st.ShellOutput(context.Background(), "k1", 0, 10)
		return err == nil && len(chunks) > 0
	}, 20*time.Second, 10*time.Millisecond, "the prompt")
	require.Equal(t, 1, w.shellCount())
	tag := shellTag("k1", gen)
	require.Eventually(t, func() bool { return len(tagged(tag)) == 1 }, 20*time.Second, 20*time.Millisecond,
		"one shell of the terminal left running: %v", tagged(tag))
	done := make(chan struct{})
	go func() { w.killShells(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		t.Fatal("the shutdown waits on a terminal it cannot kill")
	}
}

// tagged lists the pids of the running processes tagged with tag
// (NAME=VALUE), as the worker's sweeps find them.
func tagged(tag string) []int {
	var pids []int
	for _, p := range scanProcs(func(env []byte) bool {
		_, t := ownerAndTag(env)
		return string(t) == tag
	}) {
		pids = append(pids, p.pid)
	}
	return pids
}
