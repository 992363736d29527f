package handlers

import (
	"context"
	"encoding/json"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestStoreErrorsNotSwallowed: with Redis stopped, get-active-sessions and
// get-pending-permissions answer a retryable error that says so, where
// they answered empty lists (a page then showed nothing running and
// dropped the prompts it showed).
func TestStoreErrorsNotSwallowed(t *testing.T) {
	srv := storetest.StartServer(t)
	st := storetest.New(t, srv.URL)
	g, _, c, id, _ := startRun(t, st)
	srv.Stop()
	for _, msg := range []map[string]any{
		{"type": "get-pending-permissions", "sessionId": id},
		{"type": "get-active-sessions"},
	} {
		c.send(msg)
		ms := c.until(func(m map[string]any) bool { return m["type"] != nil })
		m := ms[len(ms)-1]
		require.Equal(t, "error", m["type"], "%v: %v", msg, m)
		require.Equal(t, app.StoreUnavailableError, m["error"], "%v", msg)
		require.Equal(t, true, m["retryable"], "%v", msg)
	}
	require.NotNil(t, g)
}

// TestFollowLiveStoreDown: a busy or limited command follows the session
// live (followLive); when the session cannot be read, the socket is told,
// retryable, and gets none of the history: the watch was placed at seq 1
// and, once Redis was back, replayed the whole session to a socket that
// asked for live events only.
func TestFollowLiveStoreDown(t *testing.T) {
	srv := storetest.StartServerWith(t, storetest.Options{AOF: true})
	st := storetest.New(t, srv.URL)
	g, w, _, id, ref := startRun(t, st)
	for range 3 {
		w.emit(ref, app.Text("assistant", "x"))
	}
	cc, ws := connPair(t, 64)
	cc.user = app.User{Name: "alice"}
	wt, existed, err := g.srv.hub.attach(cc, id)
	require.NoError(t, err)
	require.False(t, existed)

	srv.Stop()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	g.srv.followLive(ctx, wt, id)
	cancel()
	srv.Restart(t)

	var frames []map[string]any
	require.NoError(t, ws.SetReadDeadline(time.Now().Add(1500*time.Millisecond)))
	for {
		_, data, err := ws.ReadMessage()
		if err != nil {
			break // the deadline: nothing more came
		}
		var m map[string]any
		require.NoError(t, json.Unmarshal(data, &m))
		frames = append(frames, m)
	}
	require.NotEmpty(t, frames, "the socket is told")
	for _, m := range frames {
		require.NotContains(t, m, "seq", "no stored event is replayed: %v", m)
	}
	require.Equal(t, "error", frames[0]["type"], "%v", frames[0])
	require.Equal(t, true, frames[0]["retryable"])
	require.Equal(t, id, frames[0]["sessionId"])
	require.False(t, cc.watching(id), "the socket no longer follows the session")
}
