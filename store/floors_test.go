package store

import (
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestFloorsSweptSparingly: past floorsKept sessions, old floors go, but a
// sweep (a look at every session) runs at most once a floorSweep, not at
// every event of a process that follows many sessions.
func TestFloorsSweptSparingly(t *testing.T) {
	var f seqFloors
	fill := func() {
		old := time.Now().Add(-2 * floorTTL)
		f.mu.Lock()
		if f.m == nil {
			f.m = map[string]floorEntry{}
		}
		for i := range floorsKept + 10 {
			f.m[fmt.Sprint("old-", i)] = floorEntry{seq: 1, seen: old}
		}
		f.mu.Unlock()
	}
	fill()
	f.note("new", 5)
	require.Len(t, f.m, 1, "the old floors went")
	require.EqualValues(t, 5, f.get("new"))

	fill()
	f.note("new", 6)
	require.Len(t, f.m, floorsKept+11, "no second sweep within a minute")
	f.prunedAt = f.prunedAt.Add(-floorSweep)
	f.note("new", 7)
	require.Len(t, f.m, 1)
	require.EqualValues(t, 7, f.get("new"))
}
