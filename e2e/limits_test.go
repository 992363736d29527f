package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
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

	// Terminals: three per user, a fourth refused with the limit's name;
	// bob has his own.
	sc := &shellCluster{cluster: cl, gw1: gw, gw2: gw, worker: worker}
	at := sc.dialShell(gw, "alice")
	for i := 1; i <= 3; i++ {
		mark := at.mark()
		at.send(sc.plainInit(fmt.Sprintf("t%d", i)))
		at.waitText(mark, "bash-", 20*time.Second)
	}
	mark = at.mark()
	at.send(sc.plainInit("t4"))
	te := at.waitReplyFrom(mark, "error", nil)
	require.Equal(t, "Limit reached: at most 3 open terminals per user; close one first", te.str("message"))
	bt := sc.dialShell(gw, "bob")
	bt.send(sc.plainInit("b1"))
	bt.waitText(0, "bash-", 20*time.Second)
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
