package store

import (
	"context"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"
)

// TestDeadlineMillis: a deadline is given in Redis's clock, however far
// that clock is from this process's, a margin before the caller's own.
func TestDeadlineMillis(t *testing.T) {
	m := miniredis.RunT(t)
	ahead := time.Hour + 1234*time.Millisecond
	set := time.Now()
	m.SetTime(set.Add(ahead))
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	s := &Store{rdb: rdb}

	require.Zero(t, s.deadlineMillis(context.Background()), "no deadline")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	require.Zero(t, s.deadlineMillis(ctx), "Redis's clock not measured yet")
	require.Eventually(t, func() bool { return s.deadlineMillis(ctx) != 0 }, 5*time.Second, 5*time.Millisecond)

	end, _ := ctx.Deadline()
	want := end.Add(ahead - deadlineMargin).UnixMilli()
	// miniredis's clock stands still at the time set: the offset measured
	// is short by as long as the test ran from SetTime to the measurement
	// (a first dial included: over 100 ms on a loaded machine), no more
	// than it has run since.
	got := s.deadlineMillis(ctx)
	require.LessOrEqual(t, got, want)
	require.InDelta(t, want, got, float64(time.Since(set).Milliseconds()+5))

	short, cancel2 := context.WithTimeout(context.Background(), 400*time.Millisecond)
	defer cancel2()
	end2, _ := short.Deadline()
	require.InDelta(t, end2.Add(ahead-200*time.Millisecond).UnixMilli(), s.deadlineMillis(short), float64(time.Since(set).Milliseconds()+5),
		"a short deadline keeps half its time as the margin")
}
