package workers

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store"
)

func TestSeenControls(t *testing.T) {
	var s seenControls
	require.True(t, s.first(""), "no ID")
	require.True(t, s.first(""), "no ID, again")
	require.True(t, s.first("a"))
	require.False(t, s.first("a"), "a copy")
	for i := range seenControlsMax - 1 {
		require.True(t, s.first(fmt.Sprint(i)))
	}
	require.False(t, s.first("a"), "still remembered")
	require.True(t, s.first("b"))
	require.True(t, s.first("a"), "forgotten after seenControlsMax others")
	require.LessOrEqual(t, len(s.ids), seenControlsMax)
}

// TestInboxActsOnceOnACopy: a keystroke stored twice in the inbox under
// one ID (a send go-redis retried while Redis was stalled) is typed once;
// the same keys sent again, under another ID, are typed again.
func TestInboxActsOnceOnACopy(t *testing.T) {
	w, st, _, gen := shellWorker(t)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		w.inboxLoop(ctx) // takes the open control ShellOpen sent, then the keys
	}()
	t.Cleanup(func() {
		cancel()
		<-done
	})
	send := func(id, keys string) {
		data, _ := json.Marshal(keys)
		require.NoError(t, st.SendControl(ctx, "w1", store.Control{Type: store.ControlShellInput, Shell: "k1", Gen: gen, Data: data, ID: id}))
	}
	send("copied", "echo once-$((2+3))\r")
	send("copied", "echo once-$((2+3))\r")
	send("", "echo twice-$((3+4))\r")
	send("", "echo twice-$((3+4))\r")
	send("last", "echo end-$((4+5))\r")
	require.Eventually(t, func() bool { return strings.Contains(storedText(t, st), "end-9\r\n") }, 10*time.Second, 20*time.Millisecond)
	text := storedText(t, st)
	require.Equal(t, 1, strings.Count(text, "once-5\r\n"), text)
	require.Equal(t, 2, strings.Count(text, "twice-7\r\n"), text)
}
