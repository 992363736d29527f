package handlers

import (
	"context"
	"slices"
	"time"
)

// missedMax bounds the events sendMissed sends: paced, they take 50 ms
// each at most.
const missedMax = 200

// missedSessions bounds the sessions a socket remembers it was sent
// missed events of; past it, it is sent none.
const missedSessions = 16

// missedFrom tells whether c, a paced socket (Claude Code UI's frontend)
// that is not following the session, is to be sent the events of the
// session after seq from, up to upTo. On a reconnect that frontend reads
// the whole history over REST (refreshFromServer, which notes how far it
// went: NoteHistoryRead) and only then checks the session, which follows
// it from then on: an event stored between the two was in neither, and
// the chat missed it until a reload. A socket is sent them once a session:
// later checks come with no read before them (opening a session checks
// it first), and the frontend would show what the socket got live twice.
func (s *Server) missedFrom(ctx context.Context, c *conn, sessionID string, upTo int64) (from int64, ok bool) {
	c.mu.Lock()
	sent := slices.Contains(c.missedSent, sessionID) || len(c.missedSent) >= missedSessions
	c.mu.Unlock()
	if sent {
		return 0, false
	}
	from, ok, err := s.st.HistoryRead(ctx, sessionID, c.user.Name)
	if err != nil {
		s.log.Warn("read the history read of a session", "session", sessionID, "err", err)
		return 0, false
	}
	if !ok || from >= upTo {
		return 0, false
	}
	c.mu.Lock()
	c.missedSent = append(c.missedSent, sessionID)
	c.mu.Unlock()
	return from, true
}

// sendMissed sends c the session's events after from, up to upTo, of the
// kinds the history route gives (historyKinds): the frontend drops by id
// those its history held. Not the others: a session_created would
// navigate the page, a complete end the indicator of a run that goes on,
// and a permission_request or status after a status reply that said the
// run was over would show it running again (pending requests come with
// the status reply). It runs on a goroutine of its own, since paced
// frames take their time and the socket's other messages must not wait.
func (s *Server) sendMissed(c *conn, sessionID string, from, upTo int64) {
	ctx, cancel := context.WithTimeout(c.ctx, time.Minute)
	defer cancel()
	for after := max(from, upTo-missedMax); after < upTo; {
		evs, err := s.st.EventsWithin(ctx, sessionID, after, missedMax, restEventsBytes)
		if err != nil {
			s.log.Warn("read the events a socket missed", "session", sessionID, "err", err)
			return
		}
		if len(evs) == 0 {
			return
		}
		for _, e := range evs {
			if e.Seq > upTo {
				return
			}
			after = e.Seq
			if historyKinds[e.Kind] && !c.send(e.Data) {
				return
			}
		}
	}
}
