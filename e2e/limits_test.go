package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
)

// TestUserLimits: one user's burst of commands is refused past their
// running limit with an error that names it, another user's run is taken
// at once meanwhile, aborting the burst leaves no CLI process behind within
// seconds, and terminals are capped per user the same way.
func TestUserLimits(t *testing.T) {
	t.Parallel()
	// A CLI that runs until it is killed, and says so on stdout first.
	bin := filepath.Join(t.TempDir(), "claude")
	require.NoError(t, os.WriteFile(bin, []byte("#!/bin/sh\nexec sleep 600\n"), 0o755))
	cl := newCluster(t, bin)
	limits := []string{"AGENTGATE_MAX_RUNS_PER_USER=4", "AGENTGATE_MAX_TERMINALS_PER_USER=3", "AGENTGATE_MAX_FRAME_RATE=1000"}
	gw := startProc(t, "gw", append(append(cl.baseEnv(), "AGENTGATE_LISTEN="+freeAddr(t)), limits...), "gateway")
	gw.addr = envValue(gw.env, "AGENTGATE_LISTEN")
	waitReady(t, gw)
	worker := cl.startWorker("worker")

	alice := cl.dial(gw, "alice")
	const burst = 40
	for i := 0; i < burst; i++ {
		alice.send(cl.command("burst", "", "r"+strconv.Itoa(i)))
	}
	var accepted []string
	refused := 0
	alice.waitFor(30*time.Second, "an answer to every command", func(fs []frame) bool {
		accepted, refused = nil, 0
		for _, f := range fs {
			switch f.str("type") {
			case "session-accepted":
				accepted = append(accepted, f.str("sessionId"))
			case "error":
				if strings.HasPrefix(f.str("requestId"), "r") {
					refused++
				}
			}
		}
		return len(accepted)+refused == burst
	})
	require.Len(t, accepted, 4, "alice's running limit")
	e := alice.waitReply("error", nil)
	require.Equal(t, "Limit reached: at most 4 running sessions per user; wait for a run to finish or abort one", e.str("error"))

	// bob is not queued behind alice's burst: his run is claimed by the
	// worker at once.
	bob := cl.dial(gw, "bob")
	bob.send(cl.command("bob's own", "", "b1"))
	bsid := bob.waitReply("session-accepted", nil).str("sessionId")
	eventually(t, 10*time.Second, "bob's run claimed", func() bool {
		w, _ := cl.rdb.HGet(t.Context(), keyPrefix+":session:{"+bsid+"}", "worker").Result()
		return w != ""
	})
	eventually(t, 10*time.Second, "five CLIs running", func() bool { return len(cliProcesses(t, worker.pid())) == 5 })

	// Aborting the burst leaves none of its CLIs.
	start := time.Now()
	for _, sid := range accepted {
		alice.send(map[string]any{"type": "abort-session", "sessionId": sid})
	}
	for _, sid := range accepted {
		alice.waitEnd(sid, 1, 10*time.Second)
	}
	eventually(t, 10*time.Second, "alice's CLIs gone", func() bool { return len(cliProcesses(t, worker.pid())) == 1 })
	t.Logf("%d aborts: every CLI gone %v after the first", len(accepted), time.Since(start).Round(time.Millisecond))
	// Her slots are free again.
	mark := alice.mark()
	alice.send(cl.command("again", "", "again"))
	alice.waitReplyFrom(mark, "session-accepted", nil)

	// Terminals: three per user, a fourth refused with the limit's name
	// while each of the three is watched; bob has his own.
	sc := &shellCluster{cluster: cl, gw1: gw, gw2: gw, worker: worker}
	for i := 1; i <= 3; i++ {
		at := sc.dialShell(gw, "alice")
		at.send(sc.plainInit(fmt.Sprintf("t%d", i)))
		at.waitText(0, "bash-", 20*time.Second)
	}
	at := sc.dialShell(gw, "alice")
	at.send(sc.plainInit("t4"))
	te := at.waitReplyFrom(0, "error", nil)
	require.Equal(t, "Limit reached: at most 3 open terminals per user, and every one is open in a tab; close one of those tabs first", te.str("message"))
	bt := sc.dialShell(gw, "bob")
	bt.send(sc.plainInit("b1"))
	bt.waitText(0, "bash-", 20*time.Second)
}

// TestShellLimitEndsUnwatched: Claude Code UI sends no shellId, so each
// chat session's Shell tab opens a terminal of its own (by sessionId), and
// closing the tab only detaches it. With a limit of 3 and two gateways, a
// user who opened four session shells, closing each tab after it started,
// had the fourth refused until the detach timeout (30 minutes by default)
// ended one. Now the least recently watched detached terminal is ended to
// give its place: its processes are killed, a tab of it opened again is
// told why and gets a fresh terminal, and an open past the limit while
// every terminal is watched is still refused.
func TestShellLimitEndsUnwatched(t *testing.T) {
	t.Parallel()
	cl := newCluster(t, "/bin/false")
	sc := &shellCluster{cluster: cl}
	extra := []string{"AGENTGATE_MAX_TERMINALS_PER_USER=3", "AGENTGATE_SHELL_DETACH_TIMEOUT=10m"}
	for i, name := range []string{"gw1", "gw2"} {
		addr := freeAddr(t)
		p := startProc(t, name, append(append(cl.baseEnv(), "AGENTGATE_LISTEN="+addr), extra...), "gateway")
		p.addr = addr
		waitReady(t, p)
		if i == 0 {
			sc.gw1 = p
		} else {
			sc.gw2 = p
		}
	}
	sc.worker = startProc(t, "worker", append(cl.workerEnv(), extra...), "worker")
	cl.waitWorker(sc.worker)

	marker := uniqueNumber(6)
	sleeper := func(i int) string { return marker + strconv.Itoa(i) }
	gws := []*proc{sc.gw1, sc.gw2}
	// open starts session i's shell on a gateway, with a job of its own.
	open := func(i int) *shellClient {
		t.Helper()
		c := sc.dialShell(gws[i%2], "alice")
		c.send(sc.plainInit("", "sessionId", fmt.Sprintf("session-%d", i)))
		c.waitText(0, "Starting terminal in:", 20*time.Second)
		c.typeLine("sleep " + sleeper(i) + " & echo started-$((" + strconv.Itoa(i) + "+1000))")
		c.waitText(0, fmt.Sprintf("started-%d", i+1000), 20*time.Second)
		return c
	}
	// runs waits for session i's job (bash may echo before its child has
	// exec'd sleep).
	runs := func(i int) {
		t.Helper()
		eventually(t, 20*time.Second, fmt.Sprintf("session %d's job", i), func() bool { return len(sleepers(sleeper(i))) == 1 })
	}
	for i := 1; i <= 3; i++ {
		open(i).drop() // the tab closes: its terminal is detached
		runs(i)
	}
	fourth := open(4)
	require.NotContains(t, fourth.text(0), "Limit reached")
	runs(4)
	eventually(t, 10*time.Second, "session 1's terminal killed", func() bool { return len(sleepers(sleeper(1))) == 0 })
	for i := 2; i <= 4; i++ {
		require.Len(t, sleepers(sleeper(i)), 1, "session %d's terminal runs", i)
	}

	// Session 1's tab opened again: told why, on a fresh terminal, which
	// takes session 2's place (the least recently watched now).
	again := sc.dialShell(sc.gw2, "alice")
	again.send(sc.plainInit("", "sessionId", "session-1"))
	again.waitText(0, "Starting terminal in:", 20*time.Second)
	require.Contains(t, again.text(0), "least recently watched terminal")
	require.NotContains(t, again.text(0), "[Reconnected")
	eventually(t, 10*time.Second, "session 2's terminal killed", func() bool { return len(sleepers(sleeper(2))) == 0 })

	// Every terminal watched: sessions 3 (again), 4 and 1.
	three := sc.dialShell(sc.gw1, "alice")
	three.send(sc.plainInit("", "sessionId", "session-3"))
	three.waitText(0, "[Reconnected", 20*time.Second)
	// Its attach is counted: the field `attached` of its terminal's hash.
	var init app.ShellMessage
	b, err := json.Marshal(sc.plainInit("", "sessionId", "session-3"))
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &init))
	hash := keyPrefix + ":shell:{" + app.ShellKey("alice", realPath(t, sc.project), init) + "}"
	eventually(t, 10*time.Second, "session 3's terminal counted as attached", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		n, err := sc.rdb.HGet(ctx, hash, "attached").Int()
		return err == nil && n >= 1
	})
	refused := sc.dialShell(sc.gw2, "alice")
	refused.send(sc.plainInit("", "sessionId", "session-5"))
	e := refused.waitReplyFrom(0, "error", nil)
	require.Equal(t, "Limit reached: at most 3 open terminals per user, and every one is open in a tab; close one of those tabs first", e.str("message"))
	for i := 3; i <= 4; i++ {
		require.Len(t, sleepers(sleeper(i)), 1, "session %d's terminal runs", i)
	}
}

// cliProcesses lists the processes running the test's CLI (`sleep 600`)
// under the worker with pid parent.
func cliProcesses(t *testing.T, parent int) []int {
	t.Helper()
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		cmdline, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || string(cmdline) != "sleep\x00600\x00" {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		f := strings.Fields(string(stat[strings.LastIndexByte(string(stat), ')')+1:]))
		if len(f) > 1 && f[1] == strconv.Itoa(parent) {
			out = append(out, pid)
		}
	}
	return out
}

// TestManyAbortsLeaveNoProcess: 200 runs on one worker (limits lifted),
// aborted together: every run gets its one complete and no CLI process is
// left within seconds. The time it took is logged, not asserted.
func TestManyAbortsLeaveNoProcess(t *testing.T) {
	t.Parallel()
	const n = 200
	bin := filepath.Join(t.TempDir(), "claude")
	require.NoError(t, os.WriteFile(bin, []byte("#!/bin/sh\nexec sleep 600\n"), 0o755))
	cl := newCluster(t, bin)
	gw := startProc(t, "gw", append(cl.baseEnv(), "AGENTGATE_LISTEN="+freeAddr(t),
		"AGENTGATE_MAX_RUNS_PER_USER=0", "AGENTGATE_MAX_FRAME_RATE=100000"), "gateway")
	gw.addr = envValue(gw.env, "AGENTGATE_LISTEN")
	waitReady(t, gw)
	worker := startProc(t, "worker", append(cl.workerEnv(), "AGENTGATE_MAX_RUNS=1000"), "worker")
	cl.waitWorker(worker)

	alice := cl.dial(gw, "alice")
	for i := 0; i < n; i++ {
		alice.send(cl.command("many", "", "r"+strconv.Itoa(i)))
	}
	var ids []string
	alice.waitFor(60*time.Second, "every command accepted", func(fs []frame) bool {
		ids = ids[:0]
		for _, f := range fs {
			if f.str("type") == "session-accepted" {
				ids = append(ids, f.str("sessionId"))
			}
		}
		return len(ids) == n
	})
	eventually(t, 60*time.Second, "every CLI running", func() bool { return len(cliProcesses(t, worker.pid())) == n })
	start := time.Now()
	for _, sid := range ids {
		alice.send(map[string]any{"type": "abort-session", "sessionId": sid})
	}
	for _, sid := range ids {
		checkRun(t, alice.waitEnd(sid, 1, 30*time.Second), 1)
	}
	completed := time.Since(start)
	eventually(t, 20*time.Second, "no CLI left", func() bool { return len(cliProcesses(t, worker.pid())) == 0 })
	t.Logf("%d aborts: every complete after %v, every CLI gone after %v", n, completed.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

// TestSessionsKeptPerUser: a user who makes session after session (each
// command with an id of no session of theirs makes one, and a run that
// fails at once leaves it idle at once) keeps only the most recent
// --max-sessions-per-user: the older ones' keys leave Redis.
func TestSessionsKeptPerUser(t *testing.T) {
	t.Parallel()
	bin := filepath.Join(t.TempDir(), "claude")
	require.NoError(t, os.WriteFile(bin, []byte("#!/bin/sh\nexit 3\n"), 0o755))
	cl := newCluster(t, bin)
	cl.gatewayEnv = []string{"AGENTGATE_MAX_SESSIONS_PER_USER=5", "AGENTGATE_MAX_FRAME_RATE=1000"}
	gw := cl.startGateway("gw")
	cl.startWorker("worker")

	bob := cl.dial(gw, "bob")
	var sids []string
	for i := range 12 {
		mark := bob.mark()
		bob.send(cl.command("again", "", "r"+strconv.Itoa(i)))
		sid := bob.waitReplyFrom(mark, "session-accepted", nil).str("sessionId")
		bob.waitEnd(sid, 1, 20*time.Second)
		sids = append(sids, sid)
	}
	ctx := t.Context()
	listed, err := cl.rdb.ZRevRange(ctx, keyPrefix+":user:{bob}:sessions", 0, -1).Result()
	require.NoError(t, err)
	require.Equal(t, sids[7:], reversed(listed), "bob's five most recent sessions")
	for _, sid := range sids[:7] {
		n, err := cl.rdb.Exists(ctx, keyPrefix+":session:{"+sid+"}", keyPrefix+":session:{"+sid+"}:events").Result()
		require.NoError(t, err)
		require.Zero(t, n, "the keys of forgotten session %s", sid)
	}
	mark := bob.mark()
	bob.send(map[string]any{"type": "check-session-status", "sessionId": sids[0], "lastSeq": 0})
	require.False(t, bob.waitReplyFrom(mark, "session-status", nil).m["isProcessing"].(bool))
}

func reversed(s []string) []string {
	out := make([]string, len(s))
	for i, v := range s {
		out[len(s)-1-i] = v
	}
	return out
}
