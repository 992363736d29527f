package bench

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// resumeEvents is the number of events a resuming client missed.
const resumeEvents = 5000

// BenchmarkResume measures a client that missed a whole session coming back
// on another gateway: the client started the session on gateway A and went
// away; the run then wrote 5,000 events (appended by a worker in batches of
// 64, as workers.maxBatch does). Each op connects to gateway B, which never
// saw the session, sends check-session-status with lastSeq 0 and reads
// until the 5,000th event. The timer covers only send → 5,000th event.
func BenchmarkResume(b *testing.B) {
	url := storetest.StartServer(b).URL
	prefix := storetest.Prefix()
	stA := storetest.New(b, url, store.Config{Prefix: prefix})
	stB := storetest.New(b, url, store.Config{Prefix: prefix})
	stW := storetest.New(b, url, store.Config{Prefix: prefix})
	dir := b.TempDir()
	_, gwA := startGateway(b, stA, dir, 0)
	_, gwB := startGateway(b, stB, dir, 0)
	sessionID := runSession(b, gwA, stW, dir)

	var lat latencies
	var first time.Duration // gateway B's first resume: it subscribes to the session
	steal0, total0 := machineJiffies()
	b.ResetTimer()
	for range b.N {
		b.StopTimer()
		ws, err := dialWS(gwB)
		if err != nil {
			b.Fatal(err)
		}
		msg, _ := json.Marshal(map[string]any{"type": "check-session-status", "sessionId": sessionID, "lastSeq": 0})
		b.StartTimer()
		t0 := time.Now()
		if err := ws.WriteMessage(websocket.TextMessage, msg); err != nil {
			b.Fatal(err)
		}
		readSeqs(b, ws, resumeEvents)
		elapsed := time.Since(t0)
		b.StopTimer()
		lat.add([]int64{int64(elapsed)})
		if first == 0 {
			first = elapsed
		}
		_ = ws.Close()
	}
	b.ReportMetric(lat.quantile(0.5), "p50_ms")
	b.ReportMetric(lat.quantile(0.99), "p99_ms")
	b.ReportMetric(float64(first)/1e6, "first_ms")
	if steal1, total1 := machineJiffies(); total1 > total0 {
		b.ReportMetric(100*float64(steal1-steal0)/float64(total1-total0), "steal_%")
	}
	b.ReportMetric(float64(resumeEvents)*float64(b.N)/b.Elapsed().Seconds(), "events/s")
}

// runSession starts a session through gateway wsURL, closes the socket, and
// plays the run's worker through the store: it appends events in batches of
// 64 and completes the run, so that the session ends at seq resumeEvents.
func runSession(b *testing.B, wsURL string, st *store.Store, dir string) string {
	b.Helper()
	ctx := context.Background()
	const workerID = "bench-worker"
	if err := st.Heartbeat(ctx, store.WorkerInfo{ID: workerID, StartedAt: time.Now()}, time.Hour); err != nil {
		b.Fatal(err)
	}
	ws, err := dialWS(wsURL)
	if err != nil {
		b.Fatal(err)
	}
	cmd, _ := json.Marshal(map[string]any{
		"type": "claude-command", "command": "write a long answer", "options": map[string]any{"projectPath": dir},
	})
	if err := ws.WriteMessage(websocket.TextMessage, cmd); err != nil {
		b.Fatal(err)
	}
	var sessionID string
	for sessionID == "" {
		_ = ws.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, data, err := ws.ReadMessage()
		if err != nil {
			b.Fatal(err)
		}
		var m struct{ Type, SessionID, Error string }
		_ = json.Unmarshal(data, &m)
		switch m.Type {
		case "session-accepted":
			sessionID = m.SessionID
		case "error":
			b.Fatalf("command refused: %s", m.Error)
		}
	}
	_ = ws.Close() // the client goes away

	var job app.Job
	var streamID string
	waitFor(b, 10*time.Second, "the job", func() bool {
		jobs, err := st.ReadJobs(ctx, workerID, 1, 100*time.Millisecond)
		if err != nil {
			b.Fatal(err)
		}
		if len(jobs) == 0 {
			return false
		}
		job, streamID = jobs[0].Job, jobs[0].StreamID
		return true
	})
	ref := store.RunRef{SessionID: job.SessionID, RunID: job.RunID, Provider: job.Provider}
	if ok, err := st.Claim(ctx, ref, workerID); err != nil || !ok {
		b.Fatalf("claim: %v %v", ok, err)
	}
	if err := st.AckJob(ctx, streamID); err != nil {
		b.Fatal(err)
	}
	// Complete writes 2 events (session-state-changed, then complete); the
	// run adds the rest after what the accept wrote.
	sess, err := st.Session(ctx, job.SessionID)
	if err != nil {
		b.Fatal(err)
	}
	text := strings.Repeat("All work and no play makes Jack a dull boy. ", 3)
	for n := resumeEvents - 2 - int(sess.LastSeq); n > 0; {
		batch := make([]app.Event, min(n, 64))
		for i := range batch {
			batch[i] = app.Text("assistant", text)
		}
		if _, err := st.Append(ctx, ref, batch, nil); err != nil {
			b.Fatal(err)
		}
		n -= len(batch)
	}
	res, err := st.Complete(ctx, ref, app.Outcome{})
	if err != nil {
		b.Fatal(err)
	}
	// The complete is the run's last event (after session-state-changed).
	if res.Seq != resumeEvents {
		b.Fatalf("the session ends at seq %d, want %d", res.Seq, resumeEvents)
	}
	return sessionID
}

// readSeqs reads frames until the one of seq last, checking that session
// events arrive as 1, 2, … without a gap or a duplicate.
func readSeqs(b *testing.B, ws *websocket.Conn, last int64) {
	b.Helper()
	_ = ws.SetReadDeadline(time.Now().Add(time.Minute))
	next := int64(1)
	for next <= last {
		_, data, err := ws.ReadMessage()
		if err != nil {
			b.Fatalf("read event %d: %v", next, err)
		}
		seq, ok := app.FrameSeq(data)
		if !ok {
			continue // a reply such as session-status
		}
		if seq != next {
			b.Fatalf("got seq %d, want %d", seq, next)
		}
		next++
	}
}
