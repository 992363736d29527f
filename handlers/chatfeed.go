package handlers

import (
	"context"
	"errors"
	"math"

	"github.com/agentgate/agentgate/app"
)

// chatReplayChunk is how many stored events one catch-up read fetches, and
// chatReplayBytes how many bytes of them at most (past them it stops, one
// event at least): a replay holds what it read until its socket takes it.
const (
	chatReplayChunk = 500
	chatReplayBytes = 1 << 20
)

// chatKind is a chat session's event stream for the hub. Its frames are
// stored as sent, and a hole that was trimmed away closes the socket
// (4008): the client reloads the session's history.
func (h *hub) chatKind() *streamKind {
	return &streamKind{
		chunk: chatReplayChunk,
		read: func(ctx context.Context, id string, after int64, n int) ([]storedFrame, error) {
			evs, err := h.st.EventsWithin(ctx, id, after, n, chatReplayBytes)
			frames := make([]storedFrame, len(evs))
			for i, ev := range evs {
				frames[i] = storedFrame{ev.Seq, ev.Data}
			}
			return frames, err
		},
		subscribe:   h.sub.Subscribe,
		unsubscribe: h.sub.Unsubscribe,
		trimmed: func(w *watch, _ int64, _ bool) bool {
			w.c.closeWith(closeSlow)
			return false
		},
		lastSeq: func(ctx context.Context, id string) (int64, error) {
			sess, err := h.st.Session(ctx, id)
			if errors.Is(err, app.ErrNotFound) {
				// Redis came back without the session at all (without
				// its data): it holds none of the frames.
				return 0, nil
			}
			return sess.LastSeq, err
		},
		watched:  watchedSessions,
		replayed: replayedEvents,
	}
}

// attach makes c watch a session, parked until release: the caller writes
// its reply first, then places the watch. It returns once the gateway is
// subscribed to the session's channel, so a stream read after attach
// cannot miss an event. A socket that already watches the session keeps
// its watch (and position) but parks it again; existed says so.
func (h *hub) attach(c *conn, sessionID string) (*watch, bool, error) {
	c.mu.Lock()
	w := c.watches[sessionID]
	c.mu.Unlock()
	if w != nil {
		w.f.mu.Lock()
		w.catching, w.parked = true, true
		w.pos++
		w.f.mu.Unlock()
		return w, true, nil
	}
	w, err := h.join(c.ctx, h.chat, sessionID, c, nil)
	if err != nil {
		return nil, false, err
	}
	c.mu.Lock()
	c.watches[sessionID] = w
	c.mu.Unlock()
	return w, false, nil
}

// release places a parked watch at next and starts delivering: stored
// events from next on, then live ones. With keep, a watch that was already
// placed keeps the earlier of its position and next, so a command on a
// watched session never skips what the socket had not seen.
func (h *hub) release(w *watch, next int64, keep bool) {
	w.f.mu.Lock()
	defer w.f.mu.Unlock()
	if w.done || (keep && w.deferred) {
		return
	}
	if !keep || w.next == 0 || next < w.next {
		w.next = next
	}
	h.startLocked(w)
}

// deferRelease keeps a new, parked watch parked until placeDeferred:
// another check or command of the session meanwhile (a release that
// keeps positions) neither starts it nor places it.
func (h *hub) deferRelease(w *watch) {
	w.f.mu.Lock()
	w.deferred = true
	w.f.mu.Unlock()
}

// placeDeferred ends deferRelease: it places the watch at next and starts
// it, unless a release without keep placed it meanwhile.
func (h *hub) placeDeferred(w *watch, next int64) {
	w.f.mu.Lock()
	defer w.f.mu.Unlock()
	w.deferred = false
	if w.done || w.next != 0 {
		return
	}
	w.next = next
	h.startLocked(w)
}

// placed reports whether w was given a position before (a watch the
// socket had before its latest attach).
func (h *hub) placed(w *watch) bool {
	w.f.mu.Lock()
	defer w.f.mu.Unlock()
	return w.next != 0
}

// abandon undoes an attach whose request failed: a watch that existed
// before goes on from where it was, a new one is removed.
func (h *hub) abandon(c *conn, w *watch, existed bool) {
	if existed {
		h.release(w, math.MaxInt64, true)
		return
	}
	h.detach(c, w.f.key)
}

// detach stops c watching a session.
func (h *hub) detach(c *conn, sessionID string) {
	c.mu.Lock()
	w := c.watches[sessionID]
	delete(c.watches, sessionID)
	c.mu.Unlock()
	if w != nil {
		h.leave(w)
	}
}

// detachWatch stops c watching a session if w is still its watch of it
// (not one placed again since it was read).
func (h *hub) detachWatch(c *conn, sessionID string, w *watch) {
	c.mu.Lock()
	if c.watches[sessionID] != w {
		c.mu.Unlock()
		return
	}
	delete(c.watches, sessionID)
	c.mu.Unlock()
	h.leave(w)
}

// sentUpTo reports whether the watch has handed its socket every event up
// to seq (a catch-up that goes on reads only later ones).
func (w *watch) sentUpTo(seq int64) bool {
	w.f.mu.Lock()
	defer w.f.mu.Unlock()
	return w.next > seq
}

// detachAll is called when a socket closes.
func (h *hub) detachAll(c *conn) {
	c.mu.Lock()
	ids := make([]string, 0, len(c.watches))
	for id := range c.watches {
		ids = append(ids, id)
	}
	c.mu.Unlock()
	for _, id := range ids {
		h.detach(c, id)
	}
}

// event delivers a live session event. It runs on the subscriber's
// goroutine and never blocks on a socket.
func (h *hub) event(sessionID string, frame []byte) {
	seq, ok := app.FrameSeq(frame)
	stored := false
	if !ok {
		if seq, stored = app.StoredOnlySeq(frame); !stored {
			return
		}
	}
	f := h.feed(h.chat, sessionID)
	if f == nil {
		return
	}
	f.mu.Lock()
	if stored {
		h.storedLocked(f, seq)
	} else {
		h.publishLocked(f, seq, func() []byte { return frame })
	}
	f.mu.Unlock()
}
