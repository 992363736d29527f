package handlers

import (
	"bytes"
	"context"
	"time"

	"github.com/agentgate/agentgate/app"
)

// recentWindow is how far back a paced socket's first check of a running
// session replays the run's events. Claude Code UI's frontend, on a
// reconnect and when it opens a session, reads the history over REST and
// only then checks the session, which follows it from then on: an event
// stored between the two reached it neither way, and stayed missing until
// a reload. Such an event is at most a REST round trip old; the frontend
// drops, by id, the replayed events its history held.
const recentWindow = 5 * time.Second

// recentScan bounds the stored events a check reads to find them.
const recentScan = 64

// recentStart is the seq from which a paced socket that starts following
// sess, a running session, is sent its events: the first of the run's
// events stored within recentWindow before now (a worker's clock stamps
// them), after the run's session_created (replayed, it would navigate the
// page to the session); LastSeq+1 when there are none, or when they
// cannot be read.
func (s *Server) recentStart(ctx context.Context, sess app.Session, now time.Time) int64 {
	next := sess.LastSeq + 1
	evs, err := s.st.EventsWithin(ctx, sess.ID, max(0, sess.LastSeq-recentScan), recentScan, restEventsBytes)
	if err != nil || len(evs) == 0 {
		return next
	}
	if last := evs[len(evs)-1].Seq; last < sess.LastSeq {
		// The read stopped at its byte bound: the rest are replayed.
		next = last + 1
	}
	cutoff := now.Add(-recentWindow)
	for i := len(evs) - 1; i >= 0; i-- {
		e := evs[i]
		runID, at, ok := frameRunAndTime(e.Data)
		if !ok || runID != sess.RunID || at.Before(cutoff) || e.Kind == string(app.KindSessionCreated) {
			break
		}
		next = e.Seq
	}
	return next
}

// frameRunAndTime reads a stored frame's runId and timestamp from its
// envelope, which comes first (`{"seq":N,"runId":"R",…,"timestamp":"T",…`):
// a field's name inside a string value would have its quotes escaped.
func frameRunAndTime(frame []byte) (runID string, at time.Time, ok bool) {
	head := frame[:min(len(frame), 512)]
	runID, ok = stringField(head, `"runId":"`)
	if !ok {
		return "", time.Time{}, false
	}
	ts, ok := stringField(head, `,"timestamp":"`)
	if !ok {
		return "", time.Time{}, false
	}
	at, err := time.Parse(time.RFC3339Nano, ts)
	return runID, at, err == nil
}

// stringField is the value of the first string field whose name and
// opening quote are key, if it holds no escapes.
func stringField(head []byte, key string) (string, bool) {
	i := bytes.Index(head, []byte(key))
	if i < 0 {
		return "", false
	}
	rest := head[i+len(key):]
	end := bytes.IndexByte(rest, '"')
	if end < 0 || bytes.IndexByte(rest[:end], '\\') >= 0 {
		return "", false
	}
	return string(rest[:end]), true
}
