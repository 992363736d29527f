package handlers

import (
	"context"

	"github.com/agentgate/agentgate/app"
)

// missedMax bounds the events sendMissed sends: paced, they take 50 ms
// each at most.
const missedMax = 200

// sendMissed sends a paced socket (Claude Code UI's frontend) the events
// of sess its client did not get: on a reconnect, and when it opens a
// session, that frontend reads the history over REST (which notes how far
// it went, NoteHistoryRead) and only then checks the session, which
// follows it from then on; an event stored between the two was in
// neither, and the chat missed it until a reload. The frontend drops by
// id what its history held. Not sent: session_created (it would navigate
// the page) and complete (it would end the indicator of a run that goes
// on, or end one the status reply just said was over). Called before the
// socket's watch, if any, is released at upTo+1.
func (s *Server) sendMissed(ctx context.Context, c *conn, sess app.Session, upTo int64) {
	from, ok, err := s.st.HistoryRead(ctx, sess.ID, c.user.Name)
	if err != nil {
		s.log.Warn("read the history read of a session", "session", sess.ID, "err", err)
		return
	}
	if !ok || from >= upTo {
		return
	}
	for after := max(from, upTo-missedMax); after < upTo; {
		evs, err := s.st.EventsWithin(ctx, sess.ID, after, missedMax, restEventsBytes)
		if err != nil {
			s.log.Warn("read the events a socket missed", "session", sess.ID, "err", err)
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
			switch app.Kind(e.Kind) {
			case app.KindSessionCreated, app.KindComplete:
				continue
			}
			if !c.send(e.Data) {
				return
			}
		}
	}
}
