package e2e

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store/storetest"
)

// setMaxmemory sets maxmemory (with noeviction) on the cluster's Redis, on
// every master of a Redis Cluster. "1" makes every write that could grow
// memory fail with OOM, "0" lifts the limit.
func (c *cluster) setMaxmemory(v string) {
	c.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	set := func(ctx context.Context, rdb redis.Cmdable) error {
		if err := rdb.ConfigSet(ctx, "maxmemory-policy", "noeviction").Err(); err != nil {
			return err
		}
		return rdb.ConfigSet(ctx, "maxmemory", v).Err()
	}
	if cc, ok := c.rdb.(*redis.ClusterClient); ok {
		require.NoError(c.t, cc.ForEachMaster(ctx, func(ctx context.Context, m *redis.Client) error { return set(ctx, m) }))
		return
	}
	require.NoError(c.t, set(ctx, c.rdb))
}

// fill makes Redis full (every write that could grow memory is refused)
// until the test ends or lift.
func (c *cluster) fill() {
	c.t.Helper()
	c.setMaxmemory("1")
	c.t.Cleanup(func() { c.setMaxmemory("0") })
}

// TestRunThroughFullRedis: Redis reaches its maxmemory (noeviction) in the
// middle of a run, for several heartbeat TTLs. The worker stays alive (its
// heartbeat goes through), so nothing is reaped as "worker lost" and a
// status still says running; a new command is told the store is full, not
// that no worker runs; the run's output waits in the worker and, once
// Redis has room again, every event arrives once, in order, through one
// successful complete.
func TestRunThroughFullRedis(t *testing.T) {
	t.Parallel()
	cl := newCluster(t, "", longRun("full", 5, 100*time.Millisecond)...)
	runThroughRefusedWrites(t, cl, "full", app.StoreFullError, cl.fill, func() { cl.setMaxmemory("0") },
		func(w *proc, c *wsClient, sid string) {
			st := status(t, c, sid, nil)
			require.Equal(t, true, st.m["isProcessing"], st.raw)
			require.Equal(t, "1", cl.workerRuns(w), "the worker's heartbeat lives while Redis is full")
		})
}

// runThroughRefusedWrites is a run through a Redis that refuses writes:
// refuse starts it in the middle of the run, for three heartbeat TTLs of
// the e2e workers, during which a command is told text and check looks
// at the worker and the session; allow ends it. The run then goes on, is
// not reaped as "worker lost", and every event arrives once, in order,
// through one successful complete.
func runThroughRefusedWrites(t *testing.T, cl *cluster, marker, text string, refuse, allow func(), check func(w *proc, c *wsClient, sid string)) {
	t.Helper()
	gw := cl.startGateway("gw")
	w := cl.startWorker("worker")
	c1 := cl.dial(gw, "alice")
	sid := startLongRun(t, cl, c1, marker)
	waitMidRun(t, c1, sid)

	refuse()
	time.Sleep(3 * time.Second)

	c2 := cl.dial(gw, "alice")
	c2.send(cl.command("hello", "", "req-"+marker+"-2"))
	f := c2.waitReply("error", func(f frame) bool { return f.str("requestId") == "req-"+marker+"-2" })
	require.Equal(t, text, f.str("error"), f.raw)
	if check != nil {
		check(w, c2, sid)
	}

	allow()
	evs := c1.waitEnd(sid, 1, 60*time.Second)
	sum := checkRun(t, evs, 1)
	requireComplete(t, sum.completes[0], 0, true, false)
	for _, e := range evs {
		require.NotContains(t, e.Raw, "worker lost", "the worker was alive all along")
	}
	require.Equal(t, 5, countKind(evs, "tool_result"), kinds(evs))
}

// TestAbortWhenRedisIsFull: an abort while Redis is full ends the run at
// once (its complete is small and goes through) and reaches the worker,
// which stops the CLI: an agent the user stopped must not go on running
// tools until Redis has room.
func TestAbortWhenRedisIsFull(t *testing.T) {
	t.Parallel()
	cl := newCluster(t, "", longRun("fullabort", 8, 300*time.Millisecond)...)
	gw := cl.startGateway("gw")
	w := cl.startWorker("worker")
	c1 := cl.dial(gw, "alice")
	sid := startLongRun(t, cl, c1, "fullabort")
	waitMidRun(t, c1, sid)

	cl.fill()
	time.Sleep(time.Second)
	c1.send(map[string]any{"type": "abort-session", "sessionId": sid, "provider": "claude"})
	evs := c1.waitEnd(sid, 1, 20*time.Second)
	sum := checkRun(t, evs, 1)
	requireComplete(t, sum.completes[0], 0, false, true)

	eventually(t, 15*time.Second, "the worker stops the aborted run's CLI while Redis is full", func() bool {
		return cl.workerRuns(w) == "0"
	})
	turns := len(cl.mock.ScriptedRequests())
	time.Sleep(2 * time.Second)
	require.Equal(t, turns, len(cl.mock.ScriptedRequests()), "the CLI asked the model again after the abort")
}

// TestTerminalWhenRedisIsFull: while Redis is full a watched terminal is
// not taken for detached (its watch time is still refreshed) and lives on
// past the detach timeout; what it prints meanwhile is dropped, as in an
// outage; a new terminal is refused with the store-full text; once Redis
// has room the terminal's output flows again.
func TestTerminalWhenRedisIsFull(t *testing.T) {
	t.Parallel()
	sc := newShellCluster(t)
	a := sc.openShell(sc.gw1, "alice", "full")
	a.typeLine("echo alive-$((1+1))")
	a.waitText(0, "alive-2", 10*time.Second)

	sc.fill()
	b := sc.dialShell(sc.gw2, "bob")
	b.send(sc.plainInit("full2"))
	b.waitText(0, app.StoreFullError, 15*time.Second)
	time.Sleep(5 * time.Second) // past the detach timeout (3 s)

	sc.setMaxmemory("0")
	mark := a.mark()
	a.typeLine("echo after-$((3+3))")
	a.waitText(mark, "after-6", 10*time.Second)
	for _, f := range a.outputs(0) {
		require.NotEqual(t, "exit", f.str("type"), f.raw)
	}
}

// TestRunThroughRedisThatCannotSave: Redis refuses every write (MISCONF,
// as after a failed background save on a full disk) in the middle of a
// run, for several heartbeat TTLs, then saves again. No heartbeat can be
// written meanwhile: a command is told the store refuses writes (not that
// no worker runs), the run's output waits in the worker, and afterwards
// the run goes on, is not reaped as "worker lost", and every event
// arrives once, in order, through one successful complete.
func TestRunThroughRedisThatCannotSave(t *testing.T) {
	t.Parallel()
	cl := newClusterOn(t, storetest.Options{}, "", longRun("nosave", 5, 100*time.Millisecond)...)
	runThroughRefusedWrites(t, cl, "nosave", app.StoreRefusedError,
		func() { cl.redis.FailSnapshot(t) }, func() { cl.redis.FixSnapshot(t) }, nil)
}

// TestTerminalThroughRedisThatCannotSave: a watched terminal outlives a
// Redis that refuses every write for longer than the detach timeout and
// the heartbeat TTL (no watch time and no heartbeat can be written): its
// worker does not take it for detached, nor a gateway for lost, and once
// Redis saves again its output flows.
func TestTerminalThroughRedisThatCannotSave(t *testing.T) {
	t.Parallel()
	cl := newClusterOn(t, storetest.Options{}, "/bin/false")
	sc := newShellClusterOn(t, cl)
	a := sc.openShell(sc.gw1, "alice", "nosave")
	a.typeLine("echo alive-$((1+1))")
	a.waitText(0, "alive-2", 10*time.Second)

	cl.redis.FailSnapshot(t)
	time.Sleep(7 * time.Second) // past the detach timeout (3 s) and a gateway's check (5 s)
	cl.redis.FixSnapshot(t)
	time.Sleep(3 * time.Second) // the gateways' next check, with heartbeats maybe not yet back

	mark := a.mark()
	a.typeLine("echo after-$((3+3))")
	a.waitText(mark, "after-6", 10*time.Second)
	for _, f := range a.outputs(0) {
		require.NotEqual(t, "exit", f.str("type"), f.raw)
	}
	require.NotContains(t, a.text(0), "Terminal lost")
}

// TestRunThroughPausedWrites: Redis pauses every write for 6 s (CLIENT
// PAUSE WRITE, as an operator's pause or a FAILOVER waiting for its
// replica does), six heartbeat TTLs of the e2e workers, in the middle of a
// run. Reads still answer, and a heartbeat read during the pause finds the
// worker's expired; but no reaper can end the run meanwhile (its lease and
// its complete are writes, and wait), and once the pause ends the
// heartbeats are back: the run goes on, and every event arrives once, in
// order, through one successful complete.
func TestRunThroughPausedWrites(t *testing.T) {
	t.Parallel()
	cl := newClusterOn(t, storetest.Options{}, "", longRun("paused", 5, 150*time.Millisecond)...)
	gw := cl.startGateway("gw")
	cl.startWorker("worker")
	c := cl.dial(gw, "alice")
	sid := startLongRun(t, cl, c, "paused")
	waitMidRun(t, c, sid)
	require.NoError(t, cl.rdb.Do(context.Background(), "CLIENT", "PAUSE", "6000", "WRITE").Err())
	time.Sleep(6 * time.Second)
	sum := checkRun(t, c.waitEnd(sid, 1, 60*time.Second), 1)
	requireComplete(t, sum.completes[0], 0, true, false)
}
