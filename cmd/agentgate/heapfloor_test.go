package main

import (
	"os"
	"runtime"
	"runtime/metrics"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// gogc reads the collector's current GOGC.
func gogc() uint64 {
	s := []metrics.Sample{{Name: "/gc/gogc:percent"}}
	metrics.Read(s)
	return s[0].Value.Uint64()
}

// TestHeapFloorFollowsActive raises GOGC after a collection while the floor
// is active and the live heap is under half of it, and puts it back to 100
// once inactive, and when stopped.
func TestHeapFloorFollowsActive(t *testing.T) {
	if os.Getenv("GOGC") != "" {
		t.Skip("GOGC is set: the floor stays off")
	}
	var active atomic.Bool
	active.Store(true)
	stop := holdHeapFloor(1<<30, active.Load)
	defer stop()
	collectUntil := func(want func(uint64) bool) {
		t.Helper()
		require.Eventually(t, func() bool {
			runtime.GC()
			return want(gogc())
		}, 10*time.Second, 10*time.Millisecond, "GOGC is %d", gogc())
	}
	// A live heap of a few MB against a floor of 1 GiB.
	collectUntil(func(p uint64) bool { return p > 1000 })
	active.Store(false)
	collectUntil(func(p uint64) bool { return p == 100 })
	active.Store(true)
	collectUntil(func(p uint64) bool { return p > 1000 })
	stop()
	require.EqualValues(t, 100, gogc())
}
