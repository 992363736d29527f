package main

import (
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync/atomic"
)

// gatewayHeapFloor is the least heap goal a gateway keeps while it has
// terminals open. A gateway relaying a terminal's flood holds a few MB
// live and makes tens of MB of frames a second, each up to 40 KB; at
// GOGC=100 its goal sits near the runtime's 4 MB minimum, so it collects
// several times a second and the scavenger hands the freed pages back to
// the kernel between collections, to be faulted in again (bench/RESULTS.md).
// Chat events are small: there the larger heap cost a little CPU, so the
// floor holds only while terminals are open. Once the live heap is half
// the floor or more (thousands of sockets), GOGC=100 applies unchanged.
const gatewayHeapFloor = 12 << 20

// holdHeapFloor sets GOGC after each collection so that, while active
// reports true, the heap goal is at least floor bytes, and at least what
// GOGC=100 gives. It does nothing when the operator set GOGC. The returned
// function stops it.
func holdHeapFloor(floor uint64, active func() bool) (stop func()) {
	if os.Getenv("GOGC") != "" {
		return func() {}
	}
	var stopped atomic.Bool
	sample := []metrics.Sample{{Name: "/gc/heap/live:bytes"}}
	last := 100
	var arm func()
	arm = func() {
		// A cleanup runs after the collection that found its object
		// unreachable: once per cycle, re-armed each time.
		runtime.AddCleanup(new([16]byte), func(struct{}) {
			if stopped.Load() {
				return
			}
			metrics.Read(sample)
			pct := 100
			if live := sample[0].Value.Uint64(); live > 0 && live < floor/2 && active() {
				pct = int((floor - live) * 100 / live)
			}
			if pct != last {
				debug.SetGCPercent(pct)
				last = pct
			}
			arm()
		}, struct{}{})
	}
	arm()
	return func() {
		if stopped.CompareAndSwap(false, true) {
			debug.SetGCPercent(100)
		}
	}
}
