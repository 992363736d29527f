package handlers

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
)

// historyKinds are the events Claude Code UI's frontend shows as a chat's
// messages; the others (status, session-state-changed, complete,
// permission requests, session_created) drive its state and are left out,
// as its own server's history leaves them out.
var historyKinds = map[string]bool{
	string(app.KindText): true, string(app.KindThinking): true, string(app.KindToolUse): true,
	string(app.KindToolResult): true, string(app.KindError): true,
}

// promptKey marks the session-state-changed that started a run with a
// prompt (app.RunStarted). Body writes a field's name only as a key: a
// quote inside the prompt itself is escaped.
var promptKey = []byte(`,"prompt":`)

// isMessage reports whether e is one of a chat's messages: an event of
// historyKinds, or the start of a run, which holds the user's prompt.
func isMessage(e store.StoredEvent) bool {
	return historyKinds[e.Kind] || (e.Kind == string(app.KindStateChanged) && bytes.Contains(e.Data, promptKey))
}

// promptMessage is the user's message of a run's start, as the frontend
// shows a user's text (`text{role:"user"}`); ok is false when data holds
// no prompt after all.
func promptMessage(data []byte) (msg []byte, ok bool) {
	var start struct {
		ID        string       `json:"id"`
		SessionID string       `json:"sessionId"`
		Timestamp time.Time    `json:"timestamp"`
		Provider  app.Provider `json:"provider"`
		Prompt    string       `json:"prompt"`
	}
	if json.Unmarshal(data, &start) != nil || start.Prompt == "" {
		return nil, false
	}
	ev := app.Text("user", start.Prompt)
	ev.ID, ev.SessionID, ev.Timestamp, ev.Provider = start.ID+"_prompt", start.SessionID, start.Timestamp, start.Provider
	msg, err := ev.Body()
	return msg, err == nil
}

// historyPage bounds the events one read of a history pass asks Redis for.
const historyPage = 1000

// sessionMessages answers GET /api/providers/sessions/:id/messages
// [?limit=N&offset=M], the route on which Claude Code UI's frontend loads
// a chat's history (on every open, reload and reconnect) from its own
// server, which reads the CLIs' transcripts: the session's stored events
// of the kinds it shows, oldest first, offset and limit counted from the
// newest, as `{messages, total, hasMore, offset, limit}` (total leaves
// tool results out, as that server counts). The id may be the one a
// Codex or Cursor CLI gave the conversation. A page holds every message
// of its range, however large (a session keeps at most --history-bytes).
func (s *Server) sessionMessages(c echo.Context) error {
	sess, err := s.historySession(c)
	if err != nil {
		return err
	}
	limit := -1 // all
	if c.QueryParam("limit") != "" {
		if limit, err = queryInt(c, "limit", 0, 0, 1<<30); err != nil {
			return err
		}
	}
	offset, err := queryInt(c, "offset", 0, 0, 1<<30)
	if err != nil {
		return err
	}
	if err := s.startRead(c); err != nil {
		return err
	}
	defer s.quotas.endRead(userOf(c).Name)
	ctx := c.Request().Context()

	out := newHistoryWriter(c.Response())
	var total int
	var hasMore bool
	if limit < 0 && offset == 0 {
		// The whole history (Claude Code UI's refresh on every reconnect):
		// one pass, each message sent as it is read.
		total, err = s.historyPass(ctx, sess, 0, sess.LastSeq, func(e store.StoredEvent) error { return out.message(e.Data) })
	} else {
		total, hasMore, err = s.historyPage(ctx, sess, limit, offset, out)
	}
	if err != nil {
		if out.buf != nil {
			// Once the page has begun, the client gets JSON cut short,
			// which it cannot parse: an error, not a shorter history.
			s.log.Warn("read a session's history", "session", sess.ID, "err", err)
		}
		return err
	}
	tail := make([]byte, 0, 96)
	tail = append(tail, `],"total":`...)
	tail = strconv.AppendInt(tail, int64(total), 10)
	tail = append(tail, `,"hasMore":`...)
	tail = strconv.AppendBool(tail, hasMore)
	tail = append(tail, `,"offset":`...)
	tail = strconv.AppendInt(tail, int64(offset), 10)
	tail = append(tail, `,"limit":`...)
	if limit >= 0 {
		tail = strconv.AppendInt(tail, int64(limit), 10)
	} else {
		tail = append(tail, "null"...)
	}
	tail = append(tail, '}')
	if offset == 0 && limit < 0 {
		// The client holds the session up to here once it has the page's
		// end: a read of the whole history is Claude Code UI's refresh on a
		// reconnect, and the check of the session that follows is sent what
		// came after (missedFrom).
		if err := s.st.NoteHistoryRead(ctx, sess.ID, userOf(c).Name, sess.LastSeq); err != nil {
			s.log.Warn("note a history read", "session", sess.ID, "err", err)
		}
	}
	return out.end(tail)
}

// historyPass reads the session's messages after seq after, up to seq
// upTo (and those stored meanwhile in the last read), handing each to
// send as the route gives it (a run's start as its prompt). It returns how
// many it read that the frontend counts (tool results are not counted).
func (s *Server) historyPass(ctx context.Context, sess app.Session, after, upTo int64, send func(store.StoredEvent) error) (total int, err error) {
	for after < upTo {
		evs, err := s.st.EventsWithin(ctx, sess.ID, after, historyPage, restEventsBytes)
		if err != nil {
			return total, err
		}
		if len(evs) == 0 {
			return total, nil // trimmed meanwhile
		}
		for _, e := range evs {
			after = e.Seq
			if !isMessage(e) {
				continue
			}
			if e.Kind == string(app.KindStateChanged) {
				data, ok := promptMessage(e.Data)
				if !ok {
					continue
				}
				e.Data = data
			}
			if e.Kind != string(app.KindToolResult) {
				total++
			}
			if err := send(e); err != nil {
				return total, err
			}
		}
	}
	return total, nil
}

// historyPage writes a page counted from the newest: a first pass finds
// the seqs of its messages (the whole stream is read, nothing kept but
// seqs), a second sends them. hasMore says it left older messages out.
func (s *Server) historyPage(ctx context.Context, sess app.Session, limit, offset int, out *historyWriter) (total int, hasMore bool, err error) {
	var seqs []int64 // of the messages at most offset+limit from the newest
	messages := 0
	total, err = s.historyPass(ctx, sess, 0, sess.LastSeq, func(e store.StoredEvent) error {
		messages++
		seqs = append(seqs, e.Seq)
		if limit >= 0 && len(seqs) > 2*(offset+limit)+historyPage {
			// Keep the tail only: amortized, not copied per event.
			seqs = append(seqs[:0], seqs[len(seqs)-(offset+limit):]...)
		}
		return nil
	})
	if err != nil {
		return 0, false, err
	}
	end := max(0, len(seqs)-offset)
	start := 0
	if limit >= 0 {
		start = max(0, end-limit)
		hasMore = messages-offset-limit > 0
	}
	seqs = seqs[start:end]
	if len(seqs) == 0 {
		return total, hasMore, nil
	}
	// Both passes read in seq order: the page's seqs are met in theirs.
	next := 0
	_, err = s.historyPass(ctx, sess, seqs[0]-1, seqs[len(seqs)-1], func(e store.StoredEvent) error {
		for next < len(seqs) && seqs[next] < e.Seq {
			next++ // trimmed since the first pass
		}
		if next == len(seqs) || seqs[next] != e.Seq {
			return nil
		}
		next++
		return out.message(e.Data)
	})
	return total, hasMore, err
}

// historyWriter writes a history page's JSON as its messages come: the
// status and the head on the first write, so that an error before any
// message is still answered as one.
type historyWriter struct {
	resp  *echo.Response
	buf   *bufio.Writer
	count int
}

func newHistoryWriter(resp *echo.Response) *historyWriter {
	return &historyWriter{resp: resp}
}

func (w *historyWriter) begin() {
	if w.buf != nil {
		return
	}
	w.resp.Header().Set(echo.HeaderContentType, echo.MIMEApplicationJSON)
	w.resp.WriteHeader(http.StatusOK)
	w.buf = bufio.NewWriterSize(w.resp, 64<<10)
	w.buf.WriteString(`{"messages":[`)
}

// message writes one message of the page.
func (w *historyWriter) message(data []byte) error {
	w.begin()
	if w.count > 0 {
		w.buf.WriteByte(',')
	}
	w.count++
	_, err := w.buf.Write(data)
	return err
}

// end writes what follows the messages and sends what is buffered.
func (w *historyWriter) end(tail []byte) error {
	w.begin()
	w.buf.Write(tail)
	return w.buf.Flush()
}

// historySession is the session a history request names: one of the
// caller's (any for an admin), by agentgate's id or by the id a Codex or
// Cursor CLI gave its conversation (which Claude Code UI lists).
func (s *Server) historySession(c echo.Context) (app.Session, error) {
	sess, err := s.visibleSession(c)
	var he *echo.HTTPError
	if err == nil || !errors.As(err, &he) || he.Code != http.StatusNotFound {
		return sess, err
	}
	for _, p := range []app.Provider{app.Codex, app.Cursor} {
		if known, ok := s.byProviderID(c.Request().Context(), p, c.Param("id")); ok && userOf(c).CanSee(known.Owner) {
			return known, nil
		}
	}
	return app.Session{}, err
}
