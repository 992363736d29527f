package handlers

import (
	"sync/atomic"
	"time"
)

// outageClock remembers when this gateway last saw Redis away, or
// refusing writes, or answering so slowly that a read may have waited out
// a failover. For a while after, the workers' heartbeats may not all be
// back (they expire while no worker can write them): a worker missing
// from the registry is then waited for rather than taken for absent. The
// chat commands and the terminals of a gateway share one.
type outageClock struct {
	// quiet is how long after an outage heartbeats may still be missing.
	quiet time.Duration
	until atomic.Int64 // Unix nanoseconds
}

// saw notes an outage now.
func (o *outageClock) saw() { o.until.Store(time.Now().Add(o.quiet).UnixNano()) }

// recent reports whether an outage was seen within the quiet time.
func (o *outageClock) recent() bool { return time.Now().UnixNano() < o.until.Load() }
