package store

import (
	"context"
	"sync"
	"time"
)

// clockRefresh is how old an estimate of Redis's clock may be before it is
// measured again: clocks drift by milliseconds a minute, not seconds.
const clockRefresh = time.Minute

// clockSlowTrip is a round trip too slow to measure Redis's clock by,
// unless there is no estimate at all: the error is up to half of it.
const clockSlowTrip = 250 * time.Millisecond

// deadlineMargin is how long before its caller's deadline a write must have
// run in Redis to count: its reply still has to come back. A write that
// ran later is one the caller was told failed (a stalled Redis runs what
// waited in its sockets when it goes on), so it writes nothing.
const deadlineMargin = time.Second

// redisClock estimates the difference between Redis's clock and this
// process's, so that a deadline of this process can be checked by Redis.
type redisClock struct {
	mu        sync.Mutex
	offset    time.Duration // Redis's clock minus ours
	at        time.Time     // when offset was measured; zero: never
	measuring bool
}

// deadlineMillis returns the deadline, in Redis's clock (Unix
// milliseconds), by which a write made under ctx must run in Redis, or 0
// for none: ctx has no deadline, or Redis's clock was not measured yet (it
// is then measured in the background, and the write goes without one).
func (s *Store) deadlineMillis(ctx context.Context) int64 {
	end, ok := ctx.Deadline()
	if !ok {
		return 0
	}
	c := &s.clock
	c.mu.Lock()
	offset, at := c.offset, c.at
	stale := at.IsZero() || time.Since(at) > clockRefresh
	if stale && !c.measuring {
		c.measuring = true
		go s.measureClock()
	}
	c.mu.Unlock()
	if at.IsZero() {
		return 0
	}
	margin := min(deadlineMargin, time.Until(end)/2)
	return end.Add(-margin).Add(offset).UnixMilli()
}

// measureClock asks Redis for its time and keeps the offset; the round
// trip's midpoint stands for the moment Redis read its clock. Runs in its
// own goroutine.
func (s *Store) measureClock() {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	sent := time.Now()
	now, err := s.rdb.Time(ctx).Result()
	back := time.Now()
	c := &s.clock
	c.mu.Lock()
	defer c.mu.Unlock()
	c.measuring = false
	if err != nil {
		return // tried again at the next write
	}
	if back.Sub(sent) > clockSlowTrip && !c.at.IsZero() {
		return // the midpoint could be far off: the last estimate stands
	}
	mid := sent.Add(back.Sub(sent) / 2)
	c.offset, c.at = now.Sub(mid), back
}

// expire makes the next deadline measure Redis's clock again.
func (c *redisClock) expire() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.at.IsZero() {
		c.at = c.at.Add(-clockRefresh)
	}
}
