package workers

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// stallWorker is a worker with one terminal (key k1) on a redis-server
// that persists every write, so that a test can stop and restart it
// without losing the terminal's hash.
func stallWorker(t *testing.T) (*Worker, *store.Store, *storetest.Server, *shell) {
	t.Helper()
	storetest.RequireRedisServer(t)
	srv := storetest.StartServerWith(t, storetest.Options{AOF: true, Config: []string{"appendfsync always"}})
	t.Cleanup(func() {
		if t.Failed() {
			log, _ := os.ReadFile(filepath.Join(srv.Dir, "redis.log"))
			t.Logf("redis-server's log:\n%s", log)
		}
	})
	w, st, spec, gen := shellWorkerAt(t, srv.URL)
	open, _ := json.Marshal(spec)
	require.True(t, w.shellControl(store.Control{Type: store.ControlShellOpen, Shell: "k1", Gen: gen, Data: open}))
	require.Eventually(t, func() bool { return storedText(t, st) != "" }, 20*time.Second, 5*time.Millisecond, "the prompt")
	w.shells.mu.Lock()
	sh := w.shells.m["k1"]
	w.shells.mu.Unlock()
	return w, st, srv, sh
}

// storedText is the output stored for terminal k1 ("" while Redis does
// not answer: a client's pool goes on failing for a second after its
// dials were refused).
func storedText(t *testing.T, st *store.Store) string {
	var out strings.Builder
	after := int64(0)
	for {
		chunks, err := st.ShellOutput(context.Background(), "k1", after, 1000)
		if err != nil {
			t.Logf("read the output: %v", err)
			return ""
		}
		if len(chunks) == 0 {
			return out.String()
		}
		for _, c := range chunks {
			out.WriteString(c.Data)
			after = c.Seq
		}
	}
}

// typeInto types s into terminal k1.
func typeInto(w *Worker, sh *shell, s string) {
	data, _ := json.Marshal(s)
	w.shellControl(store.Control{Type: store.ControlShellInput, Shell: "k1", Gen: sh.gen, Data: data})
}

// TestShellShutdownDuringOutage: a worker that shuts down while Redis is
// away does not hold its terminals' output, and its shutdown, for the 2
// minutes a terminal otherwise waits for Redis.
func TestShellShutdownDuringOutage(t *testing.T) {
	w, _, srv, sh := stallWorker(t)
	typeInto(w, sh, "yes\r")
	time.Sleep(200 * time.Millisecond)
	srv.Stop()
	time.Sleep(time.Second) // appends fail, and wait
	began := time.Now()
	done := make(chan struct{})
	go func() {
		w.killShells()
		close(done)
	}()
	select {
	case <-done:
		t.Logf("shut down in %s", time.Since(began).Round(time.Millisecond))
	case <-time.After(30 * time.Second):
		t.Fatal("the worker's shutdown waited for Redis")
	}
}

// TestShellDropsAfterLongOutage: output waits for Redis only for the
// terminal's stall limit; past it the worker reads the PTY again and drops
// what it cannot store, so the program goes on, and once Redis is back
// the terminal's later output is stored.
func TestShellDropsAfterLongOutage(t *testing.T) {
	w, st, srv, sh := stallWorker(t)
	sh.outMu.Lock()
	sh.stallLimit = time.Second
	sh.outMu.Unlock()
	srv.Stop()
	// Far more than the worker holds (1 MiB) and the PTY: the loop ends
	// only if output is dropped.
	typeInto(w, sh, "for i in $(seq 1 300000); do echo n=$i; done; touch loop-ended\r")
	ended := func() bool {
		_, err := os.Stat(filepath.Join(sh.spec.ProjectPath, "loop-ended"))
		return err == nil
	}
	require.Eventually(t, ended, 60*time.Second, 50*time.Millisecond, "the loop's end while Redis is away")
	srv.Restart(t)
	// Typed until stored: output dropped on the way (go-redis answers with
	// its last dial error for up to a second after Redis is back) is not
	// tried again.
	var text string
	require.Eventually(t, func() bool {
		typeInto(w, sh, "echo after-$((2+2))\r")
		text = storedText(t, st)
		return strings.Contains(text, "after-4")
	}, 30*time.Second, 500*time.Millisecond, "output stored again")
	// The end of the loop may have waited in the PTY and the worker until
	// Redis was back; its middle was dropped.
	require.False(t, strings.Contains(text, "\nn=150000\r\n"), "the loop's middle, printed while Redis was away, is not stored")
}
