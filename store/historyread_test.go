package store_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store"
)

// TestHistoryReadKeepsTheLowest: of a minute's history reads of a session
// by one user, the note keeps the lowest seq (two tabs reading one after
// the other); another user's reads are apart.
func TestHistoryReadKeepsTheLowest(t *testing.T) {
	eachBackend(t, func(t *testing.T, st *store.Store) {
		ctx := context.Background()
		_, ok, err := st.HistoryRead(ctx, "s1", "alice")
		require.NoError(t, err)
		require.False(t, ok)
		for _, seq := range []int64{10, 12} {
			require.NoError(t, st.NoteHistoryRead(ctx, "s1", "alice", seq))
		}
		seq, ok, err := st.HistoryRead(ctx, "s1", "alice")
		require.NoError(t, err)
		require.True(t, ok)
		require.EqualValues(t, 10, seq)
		require.NoError(t, st.NoteHistoryRead(ctx, "s1", "alice", 7))
		seq, _, _ = st.HistoryRead(ctx, "s1", "alice")
		require.EqualValues(t, 7, seq)
		_, ok, err = st.HistoryRead(ctx, "s1", "bob")
		require.NoError(t, err)
		require.False(t, ok)
	})
}
