package workers

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store"
)

// TestResizeDoesNotHoldKeystrokes: a resize is applied to the PTY in its
// place among the keystrokes, and recorded in Redis off their path. Before,
// the input loop wrote the size to Redis (5 s at most) before it went on,
// so while Redis stalled every keystroke after a resize, Ctrl-C included,
// waited for it, though keystrokes came over the link and need no Redis.
// Here the size's write is held until the test lets it go: keystrokes
// typed after resizes reach the shell meanwhile, each after the resize
// before it (stty reads the PTY's size), and once let go the last size is
// what Redis records.
func TestResizeDoesNotHoldKeystrokes(t *testing.T) {
	w, st, _, sh := stallWorker(t)
	release := make(chan struct{})
	var once sync.Once
	letGo := func() { once.Do(func() { close(release) }) }
	t.Cleanup(letGo) // before the terminal's end waits for its loops
	writing := make(chan store.ShellSize, 16)
	sh.sizeMu.Lock()
	record := sh.storeSize
	sh.storeSize = func(_ context.Context, size store.ShellSize) error {
		writing <- size
		<-release // a Redis that does not answer
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return record(ctx, size)
	}
	sh.sizeMu.Unlock()

	resize := func(cols, rows int) {
		data, _ := json.Marshal(store.ShellSize{Cols: cols, Rows: rows})
		require.True(t, w.shellControl(store.Control{Type: store.ControlShellResize, Shell: "k1", Gen: sh.gen, Data: data}))
	}
	sizeSeen := func(file string) func() bool {
		return func() bool {
			b, err := os.ReadFile(filepath.Join(sh.spec.ProjectPath, file))
			return err == nil && strings.HasSuffix(string(b), "\n")
		}
	}
	readSize := func(file string) string {
		b, err := os.ReadFile(filepath.Join(sh.spec.ProjectPath, file))
		require.NoError(t, err)
		return strings.TrimSpace(string(b))
	}

	resize(123, 45)
	select {
	case size := <-writing:
		require.Equal(t, store.ShellSize{Cols: 123, Rows: 45}, size)
	case <-time.After(20 * time.Second):
		t.Fatal("the size was not recorded")
	}
	typeInto(w, sh, "stty size > size1\r")
	require.Eventually(t, sizeSeen("size1"), 20*time.Second, 5*time.Millisecond, "a keystroke after a resize while its record is held")
	require.Equal(t, "45 123", readSize("size1"), "the resize was applied before the keystroke after it")

	resize(100, 30)
	resize(110, 33)
	typeInto(w, sh, "stty size > size2\r")
	require.Eventually(t, sizeSeen("size2"), 20*time.Second, 5*time.Millisecond)
	require.Equal(t, "33 110", readSize("size2"))
	select {
	case size := <-writing:
		t.Fatalf("a second write (%v) began while the first was held", size)
	default:
	}

	letGo()
	require.Eventually(t, func() bool {
		info, ok, err := st.Shell(context.Background(), "k1")
		return err == nil && ok && info.Cols == 110 && info.Rows == 33
	}, 20*time.Second, 10*time.Millisecond, "the last size is recorded")
}
