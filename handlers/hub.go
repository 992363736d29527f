package handlers

import (
	"context"
	"log/slog"
	"math"
	"sync"
	"time"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
)

const (
	// maxHeld and maxHeldBytes bound the live frames a socket keeps while it
	// catches up. Past them the frames are dropped: every frame is in the
	// stream before it is published, so the catch-up reads them back.
	maxHeld      = 1024
	maxHeldBytes = 1 << 20
	// replayChunk is how many stored events one read fetches.
	replayChunk = 500
	// subscribeTimeout bounds the wait for Redis to confirm a subscription.
	subscribeTimeout = 5 * time.Second
)

// hub delivers session events to this gateway's sockets. One pub/sub
// connection carries every session channel the gateway follows (a feed per
// session with at least one watching socket). Each socket has its own
// position (the next seq it needs) in each session it watches: live frames
// are sent when they are next, dropped when already sent, and a frame that
// skips ahead (a publish lost while the connection was down) makes the
// socket read the hole from the stream. Replays work the same way: the
// socket is attached first, holding live frames, then reads the stream and
// merges the held frames by seq, so there is no gap and no duplicate.
//
// A socket whose queue is full falls back to the same catch-up: it reads
// the stream at its own pace until it is live again. Nothing is lost and
// memory stays bounded; the socket is closed (4008) only when what it still
// needs was trimmed from the stream.
type hub struct {
	st  *store.Store
	sub *store.Subscriber
	log *slog.Logger

	mu    sync.Mutex
	feeds map[string]*feed
}

// feed is one session followed by this gateway.
type feed struct {
	id string

	mu      sync.Mutex
	watches map[*conn]*watch
}

// watch is one socket's position in one session. Fields are guarded by the
// feed's mutex.
type watch struct {
	c    *conn
	f    *feed
	next int64 // the next seq this socket needs; 0 while not yet placed
	// holding buffers live frames while a reply is written or a replay runs.
	holding   bool
	held      []heldFrame
	heldBytes int
	// gen changes whenever the watch is repositioned; a replay goroutine
	// of an older generation stops.
	gen int
}

type heldFrame struct {
	seq   int64
	frame []byte
}

func newHub(st *store.Store, log *slog.Logger, broadcast func([]byte)) *hub {
	h := &hub{st: st, log: log, feeds: map[string]*feed{}}
	h.sub = st.NewSubscriber(store.SubscriberHandlers{Event: h.event, Resync: h.resync, Broadcast: broadcast})
	return h
}

// run reads pub/sub until ctx ends. Runs in its own goroutine.
func (h *hub) run(ctx context.Context) error { return h.sub.Run(ctx) }

// attach makes c watch a session, holding live frames until release. It
// returns once the gateway is subscribed to the session's channel, so a
// stream read after attach cannot miss an event. A socket that already
// watches the session keeps its watch (and position) but holds again.
func (h *hub) attach(c *conn, sessionID string) (*watch, bool, error) {
	c.mu.Lock()
	w := c.watches[sessionID]
	c.mu.Unlock()
	if w != nil {
		w.f.mu.Lock()
		w.holding = true
		w.gen++
		w.f.mu.Unlock()
		return w, true, nil
	}

	h.mu.Lock()
	f := h.feeds[sessionID]
	if f == nil {
		f = &feed{id: sessionID, watches: map[*conn]*watch{}}
		h.feeds[sessionID] = f
		watchedSessions.Inc()
	}
	w = &watch{c: c, f: f, holding: true}
	f.mu.Lock()
	f.watches[c] = w
	f.mu.Unlock()
	h.mu.Unlock()

	ctx, cancel := context.WithTimeout(c.ctx, subscribeTimeout)
	defer cancel()
	if err := h.sub.Subscribe(ctx, sessionID); err != nil {
		h.remove(w)
		return nil, false, err
	}
	c.mu.Lock()
	c.watches[sessionID] = w
	c.mu.Unlock()
	return w, false, nil
}

// release places a held watch at next and starts delivering: held frames
// and stored events from next on, then live ones. With keep, a watch that
// was already placed keeps the earlier of its position and next, so a
// command on a watched session never skips what the socket had not seen.
func (h *hub) release(w *watch, next int64, keep bool) {
	w.f.mu.Lock()
	if !keep || w.next == 0 || next < w.next {
		w.next = next
	}
	w.gen++
	gen := w.gen
	w.f.mu.Unlock()
	go h.catchUp(w, gen)
}

// abandon undoes an attach whose request failed: a watch that existed
// before goes on from where it was, a new one is removed.
func (h *hub) abandon(c *conn, w *watch, existed bool) {
	if existed {
		h.release(w, math.MaxInt64, true)
		return
	}
	h.detach(c, w.f.id)
}

// detach stops c watching a session.
func (h *hub) detach(c *conn, sessionID string) {
	c.mu.Lock()
	w := c.watches[sessionID]
	delete(c.watches, sessionID)
	c.mu.Unlock()
	if w != nil {
		h.remove(w)
		h.sub.Unsubscribe(sessionID)
	}
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

func (h *hub) remove(w *watch) {
	h.mu.Lock()
	defer h.mu.Unlock()
	w.f.mu.Lock()
	if w.f.watches[w.c] == w {
		delete(w.f.watches, w.c)
	}
	w.gen++
	empty := len(w.f.watches) == 0
	w.f.mu.Unlock()
	if empty && h.feeds[w.f.id] == w.f {
		delete(h.feeds, w.f.id)
		watchedSessions.Dec()
	}
}

func (h *hub) feed(sessionID string) *feed {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.feeds[sessionID]
}

// event delivers a live frame to the sockets watching its session. It runs
// on the subscriber's goroutine and never blocks on a socket.
func (h *hub) event(sessionID string, frame []byte) {
	seq, ok := app.FrameSeq(frame)
	if !ok {
		return
	}
	f := h.feed(sessionID)
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.watches {
		switch {
		case w.holding:
			w.hold(seq, frame)
		case seq < w.next:
			// Already delivered by a replay.
		case seq == w.next:
			if w.c.trySend(frame) {
				w.next++
				continue
			}
			// The socket is behind: it reads the stream from here.
			w.holding = true
			w.gen++
			go h.catchUp(w, w.gen)
		default:
			// A publish was lost: read the hole from the stream.
			w.holding = true
			w.hold(seq, frame)
			w.gen++
			go h.catchUp(w, w.gen)
		}
	}
}

// hold keeps a live frame for a catch-up, within bounds. Dropping held
// frames is always safe: the catch-up reads them from the stream.
// f.mu must be held.
func (w *watch) hold(seq int64, frame []byte) {
	if len(w.held) >= maxHeld || w.heldBytes+len(frame) > maxHeldBytes {
		w.dropHeld()
	}
	w.held = append(w.held, heldFrame{seq, frame})
	w.heldBytes += len(frame)
}

// dropHeld forgets the held frames. f.mu must be held.
func (w *watch) dropHeld() {
	w.held = nil
	w.heldBytes = 0
}

// resync re-reads a session for every watching socket after the pub/sub
// connection came back: what was published meanwhile is only in the stream.
func (h *hub) resync(sessionID string) {
	f := h.feed(sessionID)
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, w := range f.watches {
		if !w.holding && w.next > 0 {
			w.holding = true
			w.gen++
			go h.resume(w, w.gen)
		}
	}
}

// resume is the catch-up after the pub/sub connection came back. Redis may
// have restarted without its last writes (its AOF is fsynced every second):
// a socket that already had events Redis no longer holds is closed (1012)
// and resumes with recovered:false, rather than wait for seqs that will
// carry other events. Runs in its own goroutine.
func (h *hub) resume(w *watch, gen int) {
	for {
		sess, err := h.st.Session(w.c.ctx, w.f.id)
		if store.Unavailable(err) {
			if h.st.WaitAvailable(w.c.ctx) != nil {
				return
			}
			continue
		}
		if err == nil {
			w.f.mu.Lock()
			rewound := w.gen == gen && sess.LastSeq < w.next-1
			w.f.mu.Unlock()
			if rewound {
				h.log.Warn("Redis lost events a socket had; it resumes", "session", w.f.id, "lastSeq", sess.LastSeq)
				w.c.closeWith(closeStoreReset)
				return
			}
		}
		h.catchUp(w, gen)
		return
	}
}

// catchUp brings a holding watch up to date: it sends held frames that are
// next, reads the stream for what is missing, and lets go of the hold once
// nothing is missing. Runs in its own goroutine, one per watch at a time.
func (h *hub) catchUp(w *watch, gen int) {
	f := w.f
	for {
		f.mu.Lock()
		if w.gen != gen {
			f.mu.Unlock()
			return
		}
		// Send held frames that continue the sequence.
		sortHeld(w.held)
		i, full := 0, false
		for ; i < len(w.held) && w.held[i].seq <= w.next; i++ {
			if w.held[i].seq == w.next {
				if !w.c.trySend(w.held[i].frame) {
					full = true
					break
				}
				w.next++
			}
		}
		w.held = w.held[i:]
		w.heldBytes = 0
		for _, hf := range w.held {
			w.heldBytes += len(hf.frame)
		}
		if full {
			f.mu.Unlock()
			if !w.c.waitRoom() {
				return
			}
			continue
		}
		if len(w.held) == 0 {
			// Live frames arrive in seq order from here on; whatever was
			// stored before the first of them was sent above or is read
			// below only if the stream has it.
			next := w.next
			f.mu.Unlock()
			evs, err := h.st.Events(w.c.ctx, f.id, next-1, replayChunk)
			if err != nil {
				if h.fail(w, gen, err) {
					continue
				}
				return
			}
			if len(evs) == 0 {
				f.mu.Lock()
				if w.gen == gen && len(w.held) == 0 && w.next == next {
					w.holding = false
					f.mu.Unlock()
					return
				}
				f.mu.Unlock()
				continue
			}
			if !h.deliver(w, gen, evs) {
				return
			}
			continue
		}
		// A hole between next and the first held frame.
		next, upTo := w.next, w.held[0].seq
		f.mu.Unlock()
		evs, err := h.st.Events(w.c.ctx, f.id, next-1, int(min(upTo-next, replayChunk)))
		if err != nil {
			if h.fail(w, gen, err) {
				continue
			}
			return
		}
		if len(evs) == 0 || evs[0].Seq != next {
			// The hole was trimmed away: the client must reload history.
			w.c.closeWith(closeSlow)
			return
		}
		if !h.deliver(w, gen, evs) {
			return
		}
	}
}

// deliver sends stored events in order at the socket's pace. It returns
// false when the watch was repositioned or the socket is gone.
func (h *hub) deliver(w *watch, gen int, evs []store.StoredEvent) bool {
	for i := 0; i < len(evs); {
		if !w.c.waitRoom() {
			return false
		}
		w.f.mu.Lock()
		if w.gen != gen {
			w.f.mu.Unlock()
			return false
		}
		for ; i < len(evs); i++ {
			ev := evs[i]
			if ev.Seq < w.next {
				continue
			}
			if ev.Seq > w.next {
				// The stream itself skips (trimmed while we read).
				w.f.mu.Unlock()
				w.c.closeWith(closeSlow)
				return false
			}
			if !w.c.trySend(ev.Data) {
				break // full again: wait for room
			}
			w.next++
			replayedEvents.Inc()
		}
		w.f.mu.Unlock()
	}
	return true
}

// fail handles a stream read of a catch-up that failed, and reports whether
// the catch-up should read again. Redis down or loading its data (after a
// restart) is waited for: the watch keeps its position and held frames, and
// reads on once Redis answers, so an outage closes no socket. Any other
// error closes the socket; the client resumes from its lastSeq.
func (h *hub) fail(w *watch, gen int, err error) bool {
	if w.c.ctx.Err() != nil {
		return false
	}
	if store.Unavailable(err) {
		h.log.Debug("replay waits for Redis", "session", w.f.id, "err", err)
		return h.st.WaitAvailable(w.c.ctx) == nil
	}
	h.log.Warn("replay", "session", w.f.id, "err", err)
	w.c.closeWith(closeSlow)
	return false
}

func sortHeld(held []heldFrame) {
	// Live frames arrive in order; a hole fill may add one out of order.
	for i := 1; i < len(held); i++ {
		for j := i; j > 0 && held[j].seq < held[j-1].seq; j-- {
			held[j], held[j-1] = held[j-1], held[j]
		}
	}
}
