package e2e

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/internal/mockanthropic"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// loadingRedis is a redis-server with an AOF (fsynced on every write, so
// that a crash loses nothing and the test is exact) that takes seconds to
// load its data after a restart, the way a large dataset does: a test hook
// of redis-server delays each key of the snapshot, and fillForLoading gives
// the snapshot 4,000 keys. Few keys and long delays, not many short ones: a
// sleep costs more than it asks on a slow machine (20,000 keys of 200 µs,
// 4 s here, took 9.5 s on one, past a request's 10 s with the restart).
var loadingRedis = storetest.Options{AOF: true, Config: []string{
	"appendfsync always",
	"key-load-delay 1000",                        // µs per key: 4,000 keys load in about 4 s
	"loading-process-events-interval-bytes 1024", // answer clients (LOADING) while loading
}}

// fillForLoading writes padding keys outside the cluster's prefix and
// rewrites the AOF, so that its base snapshot holds them.
func fillForLoading(t *testing.T, cl *cluster) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	require.NoError(t, cl.rdb.Eval(ctx, "for i = 1, 4000 do redis.call('SET', 'pad:' .. i, i) end return 1", nil).Err())
	require.NoError(t, cl.rdb.BgRewriteAOF(ctx).Err())
	eventually(t, 20*time.Second, "the AOF rewrite", func() bool {
		info, err := cl.rdb.Info(ctx, "persistence").Result()
		return err == nil && strings.Contains(info, "aof_rewrite_in_progress:0") && strings.Contains(info, "aof_rewrite_scheduled:0")
	})
}

// TestRedisOutageMidRun is issue 9: Redis is killed (SIGKILL) in the middle
// of a run, stays down longer than every heartbeat TTL, and comes back from
// its AOF, answering LOADING for seconds. Nothing may take the outage for
// an answer: a status asked during the outage gets a retryable error (not
// "unknown session"), one asked while Redis loads waits for it, sockets that
// watched the run stay open (no 4008) and get every event once, in order;
// the reaper does not take the silent heartbeats for dead workers, and the
// run, whose output the worker held back, ends with one successful complete.
func TestRedisOutageMidRun(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("a 30 s Redis outage")
	}
	const outage = 30 * time.Second
	cl := newClusterOn(t, loadingRedis, "", longRun("outage", 4, 80*time.Millisecond)...)
	fillForLoading(t, cl)
	gwA, gwB := cl.startGateway("gwA"), cl.startGateway("gwB")
	cl.startWorker("worker")

	c1 := cl.dial(gwA, "alice")
	sid := startLongRun(t, cl, c1, "outage")
	watcher := cl.dial(gwB, "alice")
	st := status(t, watcher, sid, ptr(0))
	require.Equal(t, true, st.m["isProcessing"], st.raw)
	waitMidRun(t, c1, sid)

	cl.redis.Stop()
	down := time.Now()
	t.Logf("redis-server killed")

	// Asked while Redis is down: a retryable error, not an unknown session.
	c3 := cl.dial(gwB, "alice")
	mark := c3.mark()
	c3.send(map[string]any{"type": "check-session-status", "sessionId": sid, "lastSeq": 1})
	f := c3.waitReplyFrom(mark, "error", func(f frame) bool { return f.str("sessionId") == sid })
	require.Equal(t, true, f.m["retryable"], f.raw)
	fs, _ := c3.snapshot()
	for _, f := range fs[mark:] {
		require.NotEqual(t, "session-status", f.str("type"), "no status while Redis is down: %s", f.raw)
	}

	time.Sleep(time.Until(down.Add(outage)))
	cl.redis.Restart(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	err := cl.rdb.Get(ctx, "pad:1").Err()
	cancel()
	require.ErrorContains(t, err, "LOADING", "the restarted server must still be loading for this test to mean anything")
	t.Logf("redis-server restarted, loading")

	// Asked while Redis loads: the answer waits for it.
	c4 := cl.dial(gwA, "alice")
	st4 := status(t, c4, sid, ptr(1))
	require.Equal(t, true, st4.m["recovered"], st4.raw)
	require.Greater(t, st4.m["lastSeq"].(float64), float64(1), st4.raw)

	for _, c := range []*wsClient{c1, watcher, c4} {
		evs := c.waitEnd(sid, 1, 90*time.Second)
		from := int64(1)
		if c == c4 {
			from = 2
		}
		sum := checkRun(t, evs, from)
		requireComplete(t, sum.completes[0], 0, true, false)
		for _, e := range evs {
			require.NotContains(t, e.Raw, "worker lost", "the worker was alive all along")
		}
		_, err := c.snapshot()
		require.NoError(t, err, "%s: the socket stays open through the outage", c.name)
	}
	all := watcher.events(sid)
	require.Equal(t, 4, countKind(all, "tool_result"), kinds(all))
}

// TestRedisLostWrites: Redis comes back without its last writes (here: from
// a copy of its AOF taken a few events earlier, as a crash of the host can
// leave an AOF fsynced every second). No seq a client had is given to
// another event, whichever comes first after the restart: the gateway,
// which closes a socket ahead of what Redis kept (1012), or the worker,
// whose next write skips the seqs it had written (its floor), so that a
// socket ahead of Redis goes on, and one behind the hole finds it (4008).
// A client that resumes across the hole is told recovered:false, and the
// run ends once.
func TestRedisLostWrites(t *testing.T) {
	t.Parallel()
	cl := newClusterOn(t, storetest.Options{AOF: true, Config: []string{"appendfsync always"}}, "",
		longRun("lost", 4, 150*time.Millisecond)...)
	gwA := cl.startGateway("gwA")
	cl.startWorker("worker")

	c1 := cl.dial(gwA, "alice")
	sid := startLongRun(t, cl, c1, "lost")
	evs := waitMidRun(t, c1, sid)
	aof := filepath.Join(cl.redis.Dir, "appendonlydir")
	backup := filepath.Join(t.TempDir(), "appendonlydir")
	require.NoError(t, exec.Command("cp", "-a", aof, backup).Run())
	copied := lastSeq(evs)
	c1.waitFor(30*time.Second, "three more events", func(fs []frame) bool {
		return lastSeq(eventsOf(t, fs, sid)) >= copied+3
	})

	cl.redis.Stop()
	require.NoError(t, os.RemoveAll(aof))
	require.NoError(t, os.Rename(backup, aof))
	cl.redis.Restart(t)

	// ids holds the id of each seq any client was given: one event a seq.
	ids := map[int64]string{}
	got := func(c *wsClient) []event {
		evs := c.events(sid)
		for _, e := range evs {
			id := e.str("id")
			if was, ok := ids[e.Seq]; ok {
				require.Equal(t, was, id, "seq %d given to two events", e.Seq)
			}
			ids[e.Seq] = id
		}
		return evs
	}
	c, err := c1, c1.waitEndOrClose(sid, 60*time.Second)
	evs = got(c1)
	checkPrefix(t, evs)
	for resumes := 0; err != nil; resumes++ {
		require.Less(t, resumes, 3, "resumed three times")
		require.Contains(t, []int{1012, 4008}, closeCode(err), "closed with: %v", err)
		seen := int64(0)
		for s := range ids {
			seen = max(seen, s)
		}
		c = cl.dial(gwA, "alice")
		st := status(t, c, sid, ptr(seen))
		if st.m["recovered"] == true {
			c.t.Logf("resumed from %d, recovered", seen)
		} else {
			require.Equal(t, false, st.m["recovered"], st.raw)
		}
		err = c.waitEndOrClose(sid, 60*time.Second)
		for _, e := range got(c) {
			require.Greater(t, e.Seq, seen, "a resume from %d", seen)
		}
	}
	end := c.events(sid)
	requireComplete(t, end[len(end)-1], 0, true, false)
	completes := 0
	for _, id := range ids {
		if strings.HasPrefix(id, "complete_") {
			completes++
		}
	}
	require.Equal(t, 1, completes)
}

// waitRedis waits until the cluster's redis-server, restarted, answers
// commands again (it answers LOADING while it reads its data).
func (c *cluster) waitRedis() {
	c.t.Helper()
	eventually(c.t, 60*time.Second, "Redis loaded", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		return c.rdb.Ping(ctx).Err() == nil
	})
}

// openShell opens a terminal of user under shellID through gw and waits
// for its start.
func (sc *shellCluster) openShell(gw *proc, user, shellID string) *shellClient {
	sc.t.Helper()
	c := sc.dialShell(gw, user)
	c.send(sc.plainInit(shellID))
	c.waitText(0, "Starting terminal in:", 10*time.Second)
	return c
}

// newLoadingShellCluster is a gateway and a worker (with a link) on a
// loadingRedis, for terminals through Redis crashes.
func newLoadingShellCluster(t *testing.T) *shellCluster {
	t.Helper()
	cl := newClusterOn(t, loadingRedis, "/bin/false")
	fillForLoading(t, cl)
	gw := cl.startGateway("gw")
	w := startProc(t, "worker", append(cl.workerEnv(), "AGENTGATE_LINK_LISTEN=127.0.0.1:0"), "worker")
	cl.waitWorker(w)
	return &shellCluster{cluster: cl, gw1: gw, gw2: gw, worker: w}
}

// TestShellThroughRedisRestart: a terminal's socket lives through a Redis
// crash and a restart that answers LOADING for seconds: its catch-up waits
// for Redis instead of closing the socket, and the terminal answers after.
func TestShellThroughRedisRestart(t *testing.T) {
	t.Parallel()
	sc := newLoadingShellCluster(t)
	cl, gw := sc.cluster, sc.gw1
	a := sc.openShell(gw, "alice", "restart")
	a.typeLine("echo before-$((1+1))")
	a.waitText(0, "before-2", 10*time.Second)

	cl.redis.Stop()
	time.Sleep(2 * time.Second)
	cl.redis.Restart(t)
	cl.waitRedis()
	mark := a.mark()
	a.typeLine("echo after-$((2+2))")
	a.waitText(mark, "after-4", 30*time.Second)
	require.NotContains(t, a.text(0), "Terminal lost")
}

// TestShellFloodThroughRedisKill: a terminal prints numbered lines without
// pause while Redis is killed (-9) and restarted, answering LOADING for
// seconds. The gateway's pub/sub connection dies in the middle of the
// worker's output groups (a header, then its chunks: store/shellgroups.go),
// and the socket must still get what was stored in order, each seq once,
// and nothing but the terminal's own output: no header, no chunk taken for
// a message. What the worker could not store while Redis was away waits
// in the worker (TestShellOutputHeldThroughOutage), so the only gap is the
// Ctrl-C's, never a repeated or reordered line. (It found a
// worker writing PTY output into the buffer of an append on its way to
// Redis once a backlog had piled up: TestShellOutputWholeAfterABacklog.)
func TestShellFloodThroughRedisKill(t *testing.T) {
	t.Parallel()
	sc := newLoadingShellCluster(t)
	cl, gw := sc.cluster, sc.gw1
	c := sc.startFlood(gw, "alice", "through-kill")

	cl.redis.Stop() // SIGKILL
	time.Sleep(time.Second)
	cl.redis.Restart(t)
	cl.waitRedis()
	c.waitMore(512 << 10)
	c.interrupt()

	text, seqs, notices := c.snapshot()
	t.Logf("%d frames, %d KiB of output; the gateway's notices: %q", len(seqs), len(text)>>10, notices)
	requireIncreasing(t, seqs)
	c.requireStored(sc, "alice")
	// Output is dropped where the Ctrl-C flushed what was on its way (as
	// a terminal's line discipline does): two lines at most.
	requireFloodLines(t, text, 2)
}

// TestShellThroughRedisLostWrites: Redis comes back without its last
// writes (here from an older AOF; in production a failover's replica or
// an RDB snapshot): the terminal's hash says an older seq than its socket
// already had. What the terminal prints next must still reach the socket,
// under seqs the socket has not seen, not under the lost ones it skips.
func TestShellThroughRedisLostWrites(t *testing.T) {
	t.Parallel()
	sc := newLoadingShellCluster(t)
	cl, gw := sc.cluster, sc.gw1
	a := sc.openShell(gw, "alice", "lost")
	a.typeLine("echo one-$((0+1))")
	a.waitText(0, "one-1", 10*time.Second)

	aof := filepath.Join(cl.redis.Dir, "appendonlydir")
	backup := filepath.Join(t.TempDir(), "appendonlydir")
	require.NoError(t, exec.Command("cp", "-a", aof, backup).Run())
	a.typeLine("for i in $(seq 1 30); do echo more-$i; done")
	a.waitText(0, "more-30", 10*time.Second)
	seen := a.seqs(0)

	cl.redis.Stop()
	require.NoError(t, os.RemoveAll(aof))
	require.NoError(t, os.Rename(backup, aof))
	cl.redis.Restart(t)
	cl.waitRedis()
	mark := a.mark()
	a.typeLine("echo after-$((2+2))")
	a.waitText(mark, "after-4", 30*time.Second)
	after := a.seqs(mark)
	require.Greater(t, after[0], seen[len(seen)-1], "new output under seqs the socket had not seen")
}

// TestRedisEmptiedUnderTerminalAndChat: Redis restarts without any of its
// data (no persistence, or a new empty server). A terminal's socket is
// told its terminal is gone, as the gateway finds its hash missing, and
// may open a new one; the workers' consumer group of the jobs stream,
// which only the migrations at start make, is made again, so a chat run
// accepted after it is claimed and completes.
func TestRedisEmptiedUnderTerminalAndChat(t *testing.T) {
	t.Parallel()
	cl := newClusterOn(t, storetest.Options{}, "", mockanthropic.Turn{When: "before-empty", Text: "Here."},
		mockanthropic.Turn{When: "after-empty", Text: "Back."})
	gw := cl.startGateway("gw")
	w := startProc(t, "worker", append(cl.workerEnv(), "AGENTGATE_LINK_LISTEN=127.0.0.1:0"), "worker")
	cl.waitWorker(w)
	sc := &shellCluster{cluster: cl, gw1: gw, gw2: gw, worker: w}
	a := sc.openShell(gw, "alice", "emptied")
	a.typeLine("echo one-$((0+1))")
	a.waitText(0, "one-1", 10*time.Second)
	before := cl.dial(gw, "alice")
	sid := accept(t, cl, before, "before-empty", "", "r0")
	before.waitEnd(sid, 1, 60*time.Second)

	cl.redis.Stop()
	cl.redis.Restart(t) // no AOF: empty
	cl.waitRedis()
	// The chat socket had events Redis no longer holds.
	err := before.waitClosed(30 * time.Second)
	require.Equal(t, 1012, closeCode(err), "closed with: %v", err)
	exit := a.waitExit(0, 30*time.Second)
	require.EqualValues(t, 1, exit.m["exitCode"])
	require.Contains(t, a.text(0), "[Terminal lost: Redis no longer has it]")

	mark := a.mark()
	a.send(sc.plainInit("emptied"))
	a.waitText(mark, "Starting terminal in:", 20*time.Second)
	a.typeLine("echo two-$((1+1))")
	a.waitText(mark, "two-2", 10*time.Second)

	c := cl.dial(gw, "alice")
	sid = accept(t, cl, c, "after-empty", "", "r1")
	end := c.waitEnd(sid, 1, 60*time.Second)
	requireComplete(t, end[len(end)-1], 0, true, false)
}

// TestCommandRightAfterLongOutage: Redis stays down longer than the
// workers' heartbeat TTL, so every heartbeat has expired when it is back.
// A claude-command sent the moment Redis answers again is accepted (the
// gateway waits for a worker's next heartbeat) instead of being told that
// no worker runs, and its run completes.
func TestCommandRightAfterLongOutage(t *testing.T) {
	t.Parallel()
	cl := newClusterOn(t, loadingRedis, "", mockanthropic.Turn{When: "right-after", Text: "Back."})
	fillForLoading(t, cl)
	gw := cl.startGateway("gw")
	// Beats far apart, as by default: the heartbeat that expired during
	// the outage comes back seconds after Redis does (the interval at most
	// half the TTL, as a worker requires).
	w := startProc(t, "worker", append(cl.workerEnv(), "AGENTGATE_HEARTBEAT_INTERVAL=2s", "AGENTGATE_HEARTBEAT_TTL=4s"), "worker")
	cl.waitWorker(w)
	c := cl.dial(gw, "alice")

	cl.redis.Stop()
	time.Sleep(6 * time.Second)
	// The worker stopped (SIGSTOP) until the command is sent: its
	// heartbeat cannot come back before.
	w.signal(syscall.SIGSTOP)
	t.Cleanup(func() { _ = syscall.Kill(w.pid(), syscall.SIGCONT) })
	cl.redis.Restart(t)
	cl.waitRedis()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	n, err := cl.rdb.Exists(ctx, keyPrefix+":worker:"+w.workerID).Result()
	cancel()
	require.NoError(t, err)
	require.Zero(t, n, "the worker's heartbeat expired during the outage")
	c.send(cl.command("right-after", "", "r1"))
	w.signal(syscall.SIGCONT)
	sid := accepted(t, c, "r1")
	end := c.waitEnd(sid, 1, 60*time.Second)
	requireComplete(t, end[len(end)-1], 0, true, false)
}

// TestShellExitDuringOutage: a terminal whose process exits while Redis is
// down (longer than one attempt's timeout) still ends for its socket once
// Redis is back: the worker records the exit when it can, as a run's
// complete is. Before, the exit was dropped after 5 s and the socket
// waited for ever.
func TestShellExitDuringOutage(t *testing.T) {
	t.Parallel()
	sc := newLoadingShellCluster(t)
	cl, gw := sc.cluster, sc.gw1
	a := sc.openShell(gw, "alice", "exit-outage")
	a.typeLine("echo one-$((0+1))")
	a.waitText(0, "one-1", 10*time.Second)
	a.typeLine("sleep 2; exit 3")
	time.Sleep(300 * time.Millisecond) // the line reached bash
	cl.redis.Stop()
	time.Sleep(8 * time.Second)
	cl.redis.Restart(t)
	cl.waitRedis()
	exit := a.waitExit(0, 60*time.Second)
	require.EqualValues(t, 3, exit.m["exitCode"])
	require.Contains(t, a.text(0), "Process exited with code 3")
}

// TestChatThroughPubSubKill: Redis closes the gateways' pub/sub connections
// (CLIENT KILL TYPE pubsub) three times during a run. Redis stays up, so
// every event is stored: the watching socket stays open and gets every
// event once and in order, from the stream for what was published while
// its gateway reconnected, and exactly one complete.
func TestChatThroughPubSubKill(t *testing.T) {
	t.Parallel()
	cl := newCluster(t, "", longRun("pubsub", 8, 100*time.Millisecond)...)
	gw := cl.startGateway("gw")
	cl.startWorker("worker")
	c := cl.dial(gw, "alice")
	sid := startLongRun(t, cl, c, "pubsub")
	ctx := context.Background()
	for i := range 3 {
		n := countKind(c.events(sid), "tool_use")
		c.waitFor(60*time.Second, "another tool_use", func(fs []frame) bool { return countKind(eventsOf(t, fs, sid), "tool_use") > n })
		closed, err := cl.killPubSub(ctx)
		require.NoError(t, err)
		t.Logf("kill %d: %d pub/sub connections closed, %d events so far", i+1, closed, len(c.events(sid)))
	}
	end := c.waitEnd(sid, 1, 90*time.Second)
	sum := checkRun(t, end, 1)
	require.Len(t, sum.completes, 1)
	requireComplete(t, end[len(end)-1], 0, true, false)
}

// TestShellExitHeardFromTheHash: a terminal's exit is recorded in Redis
// but its message never reaches the gateway (published while the gateway's
// subscription was down: a failover, a restart; here the hash is written
// as shell_exit.lua writes it, without the message). The gateway's refresh
// finds the exit and tells the socket, rather than leave it waiting for
// ever.
func TestShellExitHeardFromTheHash(t *testing.T) {
	t.Parallel()
	sc := newShellCluster(t)
	a := sc.openShell(sc.gw1, "alice", "missed-exit")
	a.typeLine("echo alive-$((1+1))")
	a.waitText(0, "alive-2", 10*time.Second)
	key, _ := sc.shellHash("alice")
	require.NoError(t, sc.rdb.HSet(context.Background(), key,
		"state", store.ShellExited, "exitCode", "7", "signal", "", "exitReason", store.ShellExitNormal).Err())
	exit := a.waitExit(0, 15*time.Second)
	require.EqualValues(t, 7, exit.m["exitCode"], exit.raw)
}

// TestShellInitThroughOutage: a terminal's init while Redis is down waits
// for it within the request's time (10 s), then says the store is
// unavailable, retryable, not that a read "failed" (a chat command says the
// same, not that no worker runs); an init while Redis is loading its data
// waits and opens the terminal.
func TestShellInitThroughOutage(t *testing.T) {
	t.Parallel()
	sc := newLoadingShellCluster(t)
	cl, gw := sc.cluster, sc.gw1
	sc.openShell(gw, "alice", "before")
	cl.redis.Stop()
	a := sc.dialShell(gw, "alice")
	a.send(sc.plainInit("during"))
	a.waitText(0, "Error: "+app.StoreUnavailableError, 30*time.Second)
	// A chat command meanwhile is told the same, not that no worker runs.
	c := cl.dial(gw, "alice")
	c.send(cl.command("hello", "", "r1"))
	reply := c.waitReply("error", func(f frame) bool { return f.str("requestId") == "r1" })
	require.Equal(t, app.StoreUnavailableError, reply.str("error"), reply.raw)

	cl.redis.Restart(t) // answers LOADING for seconds
	mark := a.mark()
	a.send(sc.plainInit("during"))
	a.waitText(mark, "Starting terminal in:", 30*time.Second)
	a.typeLine("echo after-$((2+2))")
	a.waitText(mark, "after-4", 10*time.Second)
}

// TestStartBeforeRedis: a gateway and a worker started while Redis is down
// (both restarted with it, or Redis not up yet) wait for it, alive and not
// ready (/healthz 200, /readyz 503), rather than exit: an orchestrator
// restarts a process that exits with growing delays, which outlast
// Redis's own restart. Once Redis answers they start, and a command runs.
func TestStartBeforeRedis(t *testing.T) {
	t.Parallel()
	cl := newClusterOn(t, storetest.Options{}, "", mockanthropic.Turn{When: "after-start", Text: "Started late"})
	cl.redis.Stop()
	addr, metrics := freeAddr(t), freeAddr(t)
	gw := startProc(t, "gw", append(cl.baseEnv(), "AGENTGATE_LISTEN="+addr), "gateway")
	gw.addr = addr
	w := startProc(t, "worker", append(cl.workerEnv(), "AGENTGATE_METRICS_LISTEN="+metrics), "worker")

	status := func(url string) int {
		resp, err := http.Get(url)
		if err != nil {
			return 0
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	eventually(t, 10*time.Second, "both listening, alive", func() bool {
		return status("http://"+addr+"/healthz") == 200 && status("http://"+metrics+"/healthz") == 200
	})
	time.Sleep(8 * time.Second) // longer than a connection attempt with go-redis's retries
	for _, p := range []*proc{gw, w} {
		require.False(t, p.exited(), "%s exited while Redis was down", p.name)
	}
	require.Equal(t, http.StatusServiceUnavailable, status("http://"+addr+"/readyz"))
	require.Equal(t, http.StatusServiceUnavailable, status("http://"+metrics+"/readyz"))
	require.Equal(t, http.StatusServiceUnavailable, status("http://"+addr+"/api/sessions"))

	cl.redis.Restart(t)
	waitReady(t, gw)
	cl.waitWorker(w)
	eventually(t, 10*time.Second, "the worker ready", func() bool { return status("http://"+metrics+"/readyz") == 200 })
	c := cl.dial(gw, "alice")
	sid := accept(t, cl, c, "please after-start", "", "r1")
	sum := checkRun(t, c.waitEnd(sid, 1, 60*time.Second), 1)
	requireComplete(t, sum.completes[0], 0, true, false)
}

// TestShellOutputHeldThroughOutage: a terminal prints numbered lines, a
// finite loop, while Redis stalls (SIGSTOP: commands time out, and a
// stalled append may still run once Redis goes on) or is killed and
// restarted (LOADING for seconds), refuses writes (full: OOM; a failed
// save: MISCONF), or holds them (CLIENT PAUSE WRITE). The worker holds
// what it cannot store
// and stops reading the PTY, so the loop waits rather than loses its
// output: every line arrives once and in order (before 2026-12-06 the
// worker dropped what it read meanwhile, and the text had a gap).
func TestShellOutputHeldThroughOutage(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		outage func(t *testing.T, cl *cluster)
	}{
		{"stall", func(t *testing.T, cl *cluster) {
			cl.redis.Pause(t)
			time.Sleep(8 * time.Second) // past the appends' 5 s timeout
			cl.redis.Resume(t)
		}},
		{"restart", func(t *testing.T, cl *cluster) {
			cl.redis.Stop()
			time.Sleep(time.Second)
			cl.redis.Restart(t)
			cl.waitRedis()
		}},
		{"full", func(t *testing.T, cl *cluster) {
			cl.setMaxmemory("1") // every append refused with OOM
			time.Sleep(6 * time.Second)
			cl.setMaxmemory("0")
		}},
		{"writes paused", func(t *testing.T, cl *cluster) {
			// As an operator's CLIENT PAUSE, or a FAILOVER waiting for its
			// replica: reads answer, every script waits.
			require.NoError(t, cl.rdb.Do(context.Background(), "CLIENT", "PAUSE", "6000", "WRITE").Err())
			time.Sleep(6 * time.Second)
		}},
		{"cannot save", func(t *testing.T, cl *cluster) {
			cl.redis.FailSnapshot(t) // every write refused with MISCONF
			time.Sleep(6 * time.Second)
			cl.redis.FixSnapshot(t)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			const lines = 300000
			sc := newLoadingShellCluster(t)
			c := sc.dialFlood(sc.gw1, "alice")
			c.send(sc.plainInit("held"))
			eventually(t, 20*time.Second, "the terminal's start", func() bool { return c.contains("Starting terminal in:") })
			c.send(map[string]any{"type": "input", "data": fmt.Sprintf("for i in $(seq 1 %d); do echo n=$i; done; echo fin-$((1+1))\r", lines)})
			c.waitMore(256 << 10)
			at := c.received()
			tc.outage(t, sc.cluster)
			// Typed after the outage: bash runs it once the loop ended.
			c.send(map[string]any{"type": "input", "data": "echo after-$((2+2))\r"})
			eventually(t, 90*time.Second, "the command after the loop", func() bool { return c.contains("after-4\r\n") })

			text, seqs, _ := c.snapshot()
			requireIncreasing(t, seqs)
			c.requireStored(sc, "alice")
			// The terminal echoed the typed line where the loop was.
			text = strings.Replace(text, "echo after-$((2+2))\r\n", "", 1)
			start := strings.Index(text, "n=1\r\n")
			end := strings.Index(text, "fin-2\r\n")
			require.GreaterOrEqual(t, start, 0, "the loop's first line")
			require.Greater(t, end, start, "the loop's last line, fin-2, was lost")
			got := strings.Split(strings.TrimSuffix(text[start:end], "\r\n"), "\r\n")
			t.Logf("%d KiB before the outage, %d lines", at>>10, len(got))
			for i, l := range got {
				if l != "n="+strconv.Itoa(i+1) {
					t.Fatalf("line %d is %q, not n=%d: output was lost or repeated (%d lines)", i, l, i+1, len(got))
				}
			}
			require.Len(t, got, lines)
		})
	}
}

// TestShellKeysThroughAStall: keys typed into a terminal whose worker has
// no link (they take its inbox) while Redis is stalled (SIGSTOP). The
// gateway's Redis client writes them, times out after 5 s and writes them
// again on another connection; the stalled Redis runs every copy when it
// goes on. Before, the keys were typed twice after a 7 s stall, and after a
// 14 s one (past the gateway's 10 s, when its socket was told the keys
// failed) typed all the same. Now they are typed once after the
// first, and not at all after the second.
func TestShellKeysThroughAStall(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		stall time.Duration
		times int
	}{
		{"within the gateway's wait", 7 * time.Second, 1},
		{"past it", 14 * time.Second, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cl := newClusterOn(t, storetest.Options{}, "/bin/false")
			gw := cl.startGateway("gw")
			w := cl.startWorker("worker") // no link: keys take the inbox
			sc := &shellCluster{cluster: cl, gw1: gw, gw2: gw, worker: w}
			c := sc.openShell(gw, "alice", "keys")
			c.typeLine("echo warm-$((0+1))")
			c.waitText(0, "warm-1\r\n", 10*time.Second)

			mark := c.mark()
			cl.redis.Pause(t)
			resume := time.AfterFunc(tc.stall, func() { cl.redis.Resume(t) })
			defer resume.Stop()
			c.typeLine("echo k-$((1+1))")
			time.Sleep(tc.stall)
			cl.waitRedis()
			c.typeLine("echo after-$((2+2))")
			c.waitText(mark, "after-4\r\n", 30*time.Second)
			text := c.text(mark)
			t.Logf("after the stall: %q", text)
			require.Equal(t, tc.times, strings.Count(text, "k-2\r\n"), "times the keys were typed")
		})
	}
}
