package handlers

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store/storetest"
)

// TestBroadcastReachesEverySocket: a frame a worker publishes reaches every
// chat socket of every gateway, whoever its user.
func TestBroadcastReachesEverySocket(t *testing.T) {
	st := newStore(t, storetest.Real)
	a, b := startGateway(t, st), startGateway(t, st)
	clients := []*client{a.dial("alice"), a.dial("bob"), b.dial("alice")}
	require.NoError(t, st.Broadcast(context.Background(), []byte(`{"type":"projects_updated","projects":[],"batched":true}`)))
	for _, c := range clients {
		m := c.next()
		require.Equal(t, "projects_updated", m["type"])
		require.Equal(t, true, m["batched"])
	}
}
