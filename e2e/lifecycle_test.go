package e2e

import (
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/internal/mockanthropic"
)

// accept sends a command on c and returns the accepted session id.
func accept(t *testing.T, cl *cluster, c *wsClient, prompt, sessionID, requestID string) string {
	t.Helper()
	c.send(cl.command(prompt, sessionID, requestID))
	return accepted(t, c, requestID)
}

// accepted waits for the answer to the command requestID sent on c,
// requires it to be session-accepted and returns its session id.
func accepted(t *testing.T, c *wsClient, requestID string) string {
	t.Helper()
	fs := c.waitFor(15*time.Second, "the answer to "+requestID, func(fs []frame) bool {
		for _, f := range fs {
			if f.str("requestId") == requestID {
				return true
			}
		}
		return false
	})
	for _, f := range fs {
		if f.str("requestId") == requestID {
			require.Equal(t, "session-accepted", f.str("type"), "answer to %s: %s", requestID, f.raw)
			return f.str("sessionId")
		}
	}
	panic("unreachable")
}

// waitHanging waits until the mock holds a request of a Hang turn, i.e. the
// CLI is mid-stream.
func waitHanging(t *testing.T, cl *cluster, n int) {
	t.Helper()
	eventually(t, time.Minute, "the CLI's request to hang in the mock", func() bool { return cl.mock.Hanging() >= n })
}

// indexOf returns the index of the first event of kind, or -1.
// beforeEnd is the index of the last event of the first run before its end
// (the terminal session-state-changed, then complete).
func beforeEnd(evs []event) int { return indexOf(evs, "complete") - 2 }

func indexOf(evs []event, kind string) int {
	for i, e := range evs {
		if e.Kind == kind {
			return i
		}
	}
	return -1
}

// TestKillWorkerMidRun: the worker is killed with SIGKILL while the CLI
// waits on the API; the run is reaped with error{worker lost} and one
// complete{success:false}, no CLI process of the session survives, and a
// new worker runs the next command of the session with seq continuing.
func TestKillWorkerMidRun(t *testing.T) {
	t.Parallel()
	cl := newCluster(t, "", mockanthropic.Turn{When: "hang-killworker", Text: "Working on it", Hang: true})
	gw := cl.startGateway("gwA")
	w1 := cl.startWorker("worker1")

	c := cl.dial(gw, "alice")
	sid := accept(t, cl, c, "please hang-killworker", "", "r1")
	waitHanging(t, cl, 1)
	require.NotEmpty(t, procsWithArg(sid), "the CLI of the session runs")

	killed := time.Now()
	w1.kill9()
	evs := c.waitEnd(sid, 1, 20*time.Second)
	reaped := time.Since(killed)
	t.Logf("the run was reaped %s after the worker died", reaped.Round(time.Millisecond))
	require.Less(t, reaped, 10*time.Second, "the run of a dead worker ends within a few seconds")
	sum := checkRun(t, evs, 1)
	requireComplete(t, sum.completes[0], 1, false, false)
	i := beforeEnd(evs)
	require.Greater(t, i, 0)
	require.Equal(t, "error", evs[i].Kind, "an error row comes before the run's end: %s", kinds(evs))
	require.Equal(t, "worker lost", evs[i].str("content"))
	require.Equal(t, 1, countKind(evs, "error"), kinds(evs))
	require.Equal(t, "failed", sum.terminals[0].str("state"))
	eventually(t, 20*time.Second, "no CLI process of the session", func() bool { return len(procsWithArg(sid)) == 0 })

	// With no worker alive, a command is rejected before start.
	mark := c.mark()
	c.send(cl.command("nobody is there", "", "r-none"))
	rej := c.waitReplyFrom(mark, "error", nil)
	require.Equal(t, "r-none", rej.str("requestId"), rej.raw)
	require.Contains(t, rej.str("error"), "No worker", rej.raw)

	// A new worker takes the next command of the same session.
	cl.mock.Add(mockanthropic.Turn{When: "after-restart", Text: "Back after the restart"})
	cl.startWorker("worker2")
	c.send(cl.command("continue after-restart", sid, "r2"))
	acc := c.waitReply("session-accepted", func(f frame) bool { return f.str("requestId") == "r2" })
	require.Equal(t, sid, acc.str("sessionId"))
	require.Equal(t, false, acc.m["isNewSession"])
	evs = c.waitEnd(sid, 2, 60*time.Second)
	sum2 := checkRun(t, evs, 1)
	second := evs[sum.last:]
	require.Equal(t, sum.last+1, second[0].Seq, "the new run continues the seq")
	require.Equal(t, "running", second[0].str("state"), "the new run starts with session-state-changed running: %s", second[0].Raw)
	t.Logf("second run: %s", kinds(second))

	ok, _ := sum2.completes[1].boolean("success")
	// Whether this run succeeds depends on whether the killed CLI had
	// flushed its transcript; TestWorkerLostBeforeTranscript pins the case
	// where it had not.
	t.Logf("the run after the worker loss succeeded: %v", ok)
}

// TestWorkerLostBeforeTranscript: the worker dies right after it started
// the CLI of a new session's first run, before the CLI wrote any
// transcript. The run is reaped; the session must stay usable: the next
// command on it should run the conversation, not fail to resume it.
func TestWorkerLostBeforeTranscript(t *testing.T) {
	t.Parallel()
	cl := newCluster(t, "",
		// Distinct markers: a turn matches any prompt that contains its When.
		mockanthropic.Turn{When: "please early-kill", Text: "Working on it", Hang: true},
		mockanthropic.Turn{When: "after-early-kill", Text: "Here I am"},
	)
	gw := cl.startGateway("gwA")
	w1 := cl.startWorker("worker1")
	c := cl.dial(gw, "alice")
	sid := accept(t, cl, c, "please early-kill", "", "r1")
	eventually(t, time.Minute, "the CLI of the session to start", func() bool { return len(procsWithArg(sid)) > 0 })
	w1.kill9()
	evs := c.waitEnd(sid, 1, 20*time.Second)
	sum := checkRun(t, evs, 1)
	requireComplete(t, sum.completes[0], 1, false, false)
	require.Contains(t, evs[beforeEnd(evs)].Raw, "worker lost")
	eventually(t, 20*time.Second, "no CLI process of the session", func() bool { return len(procsWithArg(sid)) == 0 })

	cl.startWorker("worker2")
	c.send(cl.command("continue after-early-kill", sid, "r2"))
	c.waitReply("session-accepted", func(f frame) bool { return f.str("requestId") == "r2" })
	evs = c.waitEnd(sid, 2, 60*time.Second)
	sum2 := checkRun(t, evs, 1)
	second := evs[sum.last:]
	t.Logf("second run: %s", kinds(second))

	// Regression: the next run used to be started with `--resume <id>`
	// although no transcript of that id existed, and the CLI answered "No
	// conversation found" to every later command.
	for _, e := range second {
		if e.Kind == "error" {
			t.Errorf("error row in the run after the worker loss: %s", e.str("content"))
		}
	}
	ok, _ := sum2.completes[1].boolean("success")
	require.True(t, ok, "the run after the worker loss should succeed: %s", sum2.completes[1].Raw)
	require.Contains(t, second[indexOf(second, "text")].Raw, "Here I am")
}

// TestAbortAcrossGateways: a run started on gateway A is aborted from a
// socket on gateway B: one complete{aborted:true, exitCode:0, success:false}
// reaches both sockets, the CLI is gone, and the worker's own completion
// adds nothing.
func TestAbortAcrossGateways(t *testing.T) {
	t.Parallel()
	cl := newCluster(t, "", mockanthropic.Turn{When: "hang-abort", Text: "Working", Hang: true})
	gwA, gwB := cl.startGateway("gwA"), cl.startGateway("gwB")
	w := cl.startWorker("worker")

	c1 := cl.dial(gwA, "alice")
	sid := accept(t, cl, c1, "please hang-abort", "", "r1")
	c2 := cl.dial(gwB, "alice")
	st := status(t, c2, sid, ptr(0))
	require.Equal(t, true, st.m["isProcessing"], st.raw)
	require.Equal(t, true, st.m["canInterrupt"], st.raw)
	waitHanging(t, cl, 1)
	require.NotEmpty(t, procsWithArg(sid), "the CLI of the session runs")
	eventually(t, 20*time.Second, "the worker's heartbeat to count the run", func() bool { return cl.workerRuns(w) == "1" })

	c2.send(map[string]any{"type": "abort-session", "sessionId": sid, "provider": "claude"})
	evs1 := c1.waitEnd(sid, 1, 15*time.Second)
	evs2 := c2.waitEnd(sid, 1, 15*time.Second)
	s1, s2 := checkRun(t, evs1, 1), checkRun(t, evs2, 1)
	requireComplete(t, s1.completes[0], 0, false, true)
	require.Equal(t, "aborted", s1.terminals[0].str("state"))
	require.Equal(t, s1.completes[0].Seq, s2.completes[0].Seq)
	require.JSONEq(t, s1.completes[0].Raw, s2.completes[0].Raw)

	eventually(t, 10*time.Second, "the CLI to be gone", func() bool { return len(procsWithArg(sid)) == 0 })
	eventually(t, 10*time.Second, "the mock's request to end", func() bool { return cl.mock.Hanging() == 0 })
	// The worker counts the run until its own completion attempt returned.
	eventually(t, 10*time.Second, "the worker to finish the run", func() bool { return cl.workerRuns(w) == "0" })

	code, body := restGet(t, gwB, "/api/sessions/"+sid+"/events?after=0&limit=1000", cl.token("alice"))
	require.Equal(t, 200, code, body)
	var page struct {
		LastSeq int64             `json:"lastSeq"`
		Events  []json.RawMessage `json:"events"`
	}
	require.NoError(t, json.Unmarshal([]byte(body), &page))
	require.Equal(t, s1.last, page.LastSeq, "nothing was appended after the abort's terminal state")
	var stored []frame
	for _, raw := range page.Events {
		f := frame{raw: raw}
		require.NoError(t, json.Unmarshal(raw, &f.m))
		stored = append(stored, f)
	}
	checkRun(t, eventsOf(t, stored, sid), 1)
	require.Equal(t, 1, countKind(eventsOf(t, stored, sid), "complete"))

	// A second abort finds no run.
	c2.send(map[string]any{"type": "abort-session", "sessionId": sid})
	e := c2.waitReply("error", nil)
	require.Equal(t, "No active run", e.str("error"))
	require.Equal(t, sid, e.str("sessionId"))
	require.Equal(t, s1.last, lastSeq(c1.events(sid)))
	require.Equal(t, s1.last, lastSeq(c2.events(sid)))

	// The session is usable again: the next command runs, seq continues.
	cl.mock.Add(mockanthropic.Turn{When: "after-abort", Text: "Back after the abort"})
	c1.send(cl.command("continue after-abort", sid, "r2"))
	evs1 = c1.waitEnd(sid, 2, 60*time.Second)
	s3 := checkRun(t, evs1, 1)
	requireComplete(t, s3.completes[1], 0, true, false)
	checkRun(t, c2.waitEnd(sid, 2, 30*time.Second), 1)
}

// TestBusyAcrossGateways: two clients on two gateways send a command for the
// same idle session at the same moment: one session-accepted, one
// session-busy.
func TestBusyAcrossGateways(t *testing.T) {
	t.Parallel()
	cl := newCluster(t, "",
		mockanthropic.Turn{When: "busy-setup", Text: "Ready"},
		mockanthropic.Turn{When: "busy-race-1", Text: "Raced once", Delay: 30 * time.Millisecond},
		mockanthropic.Turn{When: "busy-race-2", Text: "Raced twice", Delay: 30 * time.Millisecond},
	)
	gwA, gwB := cl.startGateway("gwA"), cl.startGateway("gwB")
	cl.startWorker("worker")

	c0 := cl.dial(gwA, "alice")
	sid := accept(t, cl, c0, "get busy-setup", "", "setup")
	last := checkRun(t, c0.waitEnd(sid, 1, 60*time.Second), 1).last

	for round, marker := range []string{"busy-race-1", "busy-race-2"} {
		cA, cB := cl.dial(gwA, "alice"), cl.dial(gwB, "alice")
		msgs := map[*wsClient][]byte{}
		for _, c := range []*wsClient{cA, cB} {
			b, err := json.Marshal(cl.command("go "+marker, sid, c.name))
			require.NoError(t, err)
			msgs[c] = b
		}
		start := make(chan struct{})
		errs := make(chan error, 2)
		var wg sync.WaitGroup
		for c, b := range msgs {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				errs <- c.ws.WriteMessage(websocket.TextMessage, b)
			}()
		}
		close(start)
		wg.Wait()
		close(errs)
		for err := range errs {
			require.NoError(t, err)
		}

		answers := map[string]frame{}
		var winner, loser *wsClient
		for _, c := range []*wsClient{cA, cB} {
			name := c.name
			fs := c.waitFor(15*time.Second, "the answer to "+name, func(fs []frame) bool {
				for _, f := range fs {
					if f.str("requestId") == name {
						return true
					}
				}
				return false
			})
			for _, f := range fs {
				if f.str("requestId") == name {
					answers[f.str("type")] = f
					if f.str("type") == "session-accepted" {
						winner = c
					} else {
						loser = c
					}
				}
			}
		}
		require.Len(t, answers, 2, "round %d: one session-accepted and one session-busy, got %v", round, answers)
		require.Contains(t, answers, "session-accepted")
		busy, ok := answers["session-busy"]
		require.True(t, ok, "round %d: answers %v", round, answers)
		require.Equal(t, sid, busy.str("sessionId"))
		require.Equal(t, true, busy.m["isProcessing"])
		require.Equal(t, "session-already-active", busy.str("reason"))
		require.Equal(t, "claude-command", busy.str("requestType"))
		require.Equal(t, cl.project, busy.str("projectPath"))
		require.Equal(t, answers["session-accepted"].m["startedAt"], busy.m["startedAt"], "busy names the running run's start")

		evs := winner.waitEnd(sid, 1, 60*time.Second)
		sum := checkRun(t, evs, last+1)
		requireComplete(t, sum.completes[0], 0, true, false)
		last = sum.last
		t.Logf("round %d: %s won", round, winner.name)
		// The busy socket follows the run live from where it was.
		lost := loser.waitEnd(sid, 1, 30*time.Second)
		checkRun(t, lost, lost[0].Seq)
		require.Equal(t, sum.last, lastSeq(lost))
	}
}

// TestFailuresEndWithOneComplete: a missing provider binary and an API error
// each end the run with error rows and exactly one complete{success:false}.
func TestFailuresEndWithOneComplete(t *testing.T) {
	t.Parallel()
	t.Run("missing binary", func(t *testing.T) {
		t.Parallel()
		cl := newCluster(t, "/nonexistent/claude")
		gw := cl.startGateway("gw")
		cl.startWorker("worker")
		c := cl.dial(gw, "alice")
		sid := accept(t, cl, c, "anything", "", "r1")
		evs := c.waitEnd(sid, 1, 30*time.Second)
		sum := checkRun(t, evs, 1)
		requireComplete(t, sum.completes[0], 127, false, false)
		require.Equal(t, "failed", sum.terminals[0].str("state"))
		i := beforeEnd(evs)
		require.Equal(t, "error", evs[i].Kind, kinds(evs))
		require.Contains(t, evs[i].str("content"), "AGENTGATE_CLAUDE_BIN", "an install hint: %s", evs[i].Raw)
		require.Contains(t, evs[i].str("content"), "npm install", "an install hint: %s", evs[i].Raw)
	})
	t.Run("API error 500", func(t *testing.T) {
		t.Parallel()
		cl := newCluster(t, "", mockanthropic.Turn{When: "fail-500", Status: 500})
		gw := cl.startGateway("gw")
		cl.startWorker("worker")
		c := cl.dial(gw, "alice")
		sid := accept(t, cl, c, "please fail-500", "", "r1")
		evs := c.waitEnd(sid, 1, 60*time.Second)
		sum := checkRun(t, evs, 1)
		complete := sum.completes[0]
		success, _ := complete.boolean("success")
		require.False(t, success, complete.Raw)
		code, _ := complete.M["exitCode"].(float64)
		require.NotZero(t, code, complete.Raw)
		require.Equal(t, "failed", sum.terminals[0].str("state"))
		var errs []string
		for _, e := range evs[:indexOf(evs, "complete")] {
			if e.Kind == "error" {
				errs = append(errs, e.str("content"))
			}
		}
		require.NotEmpty(t, errs, kinds(evs))
		found := false
		for _, e := range errs {
			found = found || contains(e, "API Error: 500")
		}
		require.True(t, found, "an error row says API Error: 500: %q", errs)
		require.Len(t, cl.mock.ScriptedRequests(), 1, "no retry with CLAUDE_CODE_MAX_RETRIES=0")
	})
}

// TestAbortDuringTool: an abort while the CLI runs a Bash tool (a long
// sleep; the CLI runs it in a session of its own, CLI_FACTS §7) ends the run
// with one complete{aborted:true} and leaves neither the CLI nor the tool
// behind.
func TestAbortDuringTool(t *testing.T) {
	t.Parallel()
	// A sleep length no other process uses, to find the tool's processes.
	nap := fmt.Sprintf("%d.%03d", 50+rand.IntN(40), rand.IntN(1000))
	t.Cleanup(func() {
		for _, pid := range procsWithArg(nap) {
			t.Logf("killing leftover tool process %d", pid)
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	cl := newCluster(t, "", mockanthropic.Turn{When: "tool-abort", Text: "Sleeping.", ToolUses: []mockanthropic.ToolUse{{
		Name: "Bash", Input: map[string]any{"command": "sleep " + nap, "description": "Sleep a while"},
	}}})
	gw := cl.startGateway("gw")
	w := cl.startWorker("worker")
	c := cl.dial(gw, "alice")
	sid := accept(t, cl, c, "please tool-abort", "", "r1")
	c.waitEvent(sid, "the tool_use", 60*time.Second, func(e event) bool { return e.Kind == "tool_use" })
	eventually(t, 10*time.Second, "the tool's sleep to run", func() bool { return len(procsWithArg(nap)) >= 2 })
	t.Logf("tool processes (bash, sleep): %v, CLI: %v", procsWithArg(nap), procsWithArg(sid))

	c.send(map[string]any{"type": "abort-session", "sessionId": sid})
	evs := c.waitEnd(sid, 1, 15*time.Second)
	sum := checkRun(t, evs, 1)
	requireComplete(t, sum.completes[0], 0, false, true)
	require.Equal(t, "aborted", sum.terminals[0].str("state"))
	eventually(t, 10*time.Second, "the CLI to be gone", func() bool { return len(procsWithArg(sid)) == 0 })
	eventually(t, 10*time.Second, "the worker to finish the run", func() bool { return cl.workerRuns(w) == "0" })
	require.Equal(t, sum.last, lastSeq(c.events(sid)), "nothing after the abort's terminal state")

	// Regression: the worker used to signal only the CLI's process group;
	// the tool's bash and sleep live in another session and the CLI does not
	// kill them on SIGTERM, so they outlived the abort.
	// Up to 15 s for them to go on a slow machine: the tool sleeps 50 s
	// or more, so one that survived the abort is still there then.
	t.Run("no tool process survives the abort", func(t *testing.T) {
		deadline := time.Now().Add(15 * time.Second)
		for len(procsWithArg(nap)) > 0 && time.Now().Before(deadline) {
			time.Sleep(50 * time.Millisecond)
		}
		require.Empty(t, procsWithArg(nap), "processes of the aborted run's Bash tool (sleep %s) still run", nap)
	})
}

// TestWorkerStopMidRun: SIGTERM on a worker with a run that does not end by
// itself: after the drain timeout (2 s here) the run is killed and completed
// once as failed, the CLI is gone and the worker exits 0.
func TestWorkerStopMidRun(t *testing.T) {
	t.Parallel()
	cl := newCluster(t, "", mockanthropic.Turn{When: "hang-stop", Text: "Working", Hang: true})
	gw := cl.startGateway("gw")
	w := cl.startWorker("worker")
	c := cl.dial(gw, "alice")
	sid := accept(t, cl, c, "please hang-stop", "", "r1")
	waitHanging(t, cl, 1)
	stopped := time.Now()
	w.signal(syscall.SIGTERM)
	evs := c.waitEnd(sid, 1, 20*time.Second)
	t.Logf("the run ended %s after SIGTERM", time.Since(stopped).Round(time.Millisecond))
	sum := checkRun(t, evs, 1)
	ok, _ := sum.completes[0].boolean("success")
	require.False(t, ok, sum.completes[0].Raw)
	aborted, _ := sum.completes[0].boolean("aborted")
	require.False(t, aborted, sum.completes[0].Raw)
	require.Equal(t, "failed", sum.terminals[0].str("state"))
	require.Equal(t, "error", evs[beforeEnd(evs)].Kind, kinds(evs))
	eventually(t, 10*time.Second, "the CLI to be gone", func() bool { return len(procsWithArg(sid)) == 0 })
	select {
	case <-w.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the worker did not exit after its drain")
	}
	require.Equal(t, 0, w.cmd.ProcessState.ExitCode())
	require.Equal(t, sum.last, lastSeq(c.events(sid)))
}

// TestWorkerKillLeavesNoTool: a worker killed with -9 while the Claude CLI
// runs a Bash tool: the CLI dies with the worker (Pdeathsig), and the
// tool, which the CLI runs in a session of its own, is killed by the next
// worker on the host (its environment names the dead worker). Before, it
// ran on for as long as the command did.
func TestWorkerKillLeavesNoTool(t *testing.T) {
	t.Parallel()
	marker := uniqueNumber(4)
	cl := newCluster(t, "", mockanthropic.Turn{When: "tool-left", Text: "Sleeping", ToolUses: []mockanthropic.ToolUse{{
		ID: "toolu_left", Name: "Bash", Input: map[string]any{"command": "sleep " + marker, "description": "Sleep"}}}})
	gw := cl.startGateway("gw")
	w1 := cl.startWorker("worker1")
	c := cl.dial(gw, "alice")
	sid := accept(t, cl, c, "please tool-left", "", "r1")
	eventually(t, time.Minute, "the tool's sleep", func() bool { return len(sleepers(marker)) == 1 })

	w1.kill9()
	evs := c.waitEnd(sid, 1, 20*time.Second)
	require.Contains(t, evs[beforeEnd(evs)].Raw, "worker lost")
	require.Len(t, sleepers(marker), 1, "the tool outlives its CLI")

	cl.startWorker("worker2")
	eventually(t, 45*time.Second, "the dead worker's tool gone", func() bool { return len(sleepers(marker)) == 0 })
}
