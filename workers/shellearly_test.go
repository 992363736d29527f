package workers

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestShellInputBeforeOpen: keystrokes that reach the worker before their
// terminal's open control (a gateway that lost an open race forwards them
// at once) are typed once the terminal starts, not lost.
func TestShellInputBeforeOpen(t *testing.T) {
	st := storetest.New(t, storetest.Start(t, storetest.Mini))
	dir := t.TempDir()
	w, err := New(Config{Store: st, ID: "w1", Workspaces: app.Workspaces{Roots: []string{dir}}, Providers: map[app.Provider]Provider{app.Claude: ClaudeProvider{}}})
	require.NoError(t, err)
	t.Cleanup(w.killShells)
	ctx := context.Background()
	spec := app.ShellSpec{Owner: "alice", ProjectPath: dir, Provider: app.PlainShell, Plain: true, Cols: 80, Rows: 24}
	gen, ok, err := st.ShellOpen(ctx, "k1", 0, "w1", "bash", spec, 0)
	require.NoError(t, err)
	require.True(t, ok)

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
