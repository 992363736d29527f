package handlers

import (
	"context"
	"log/slog"
	"sync"
	"time"

	"github.com/agentgate/agentgate/internal/metrics"
	"github.com/agentgate/agentgate/store"
)

const (
	// subscribeTimeout bounds the wait for Redis to confirm a subscription.
	subscribeTimeout = 5 * time.Second
	// emptyRetries bounds the re-reads of a stream that does not yet show
	// a frame that was published (trimmed meanwhile, or a terminal reset
	// under a new generation).
	emptyRetries = 50
)

// hub delivers streams with a seq to this gateway's sockets: a chat
// session's events (/ws) and a terminal's output (/shell). It is the one
// place that knows subscriptions and positions. One pub/sub connection
// carries every channel the gateway follows, a feed per stream with at
// least one watching socket. Each socket has its own position in each
// stream it watches (the next seq it needs): a live frame is sent when it
// is next and ignored when already sent. A socket that is behind — its
// queue full, a publish missed, a replay, the pub/sub connection back
// after an outage — reads the stream at its own pace until nothing newer
// than its position was published; then live delivery takes over. Every
// frame is stored before it is published, so there is no gap and no
// duplicate, and nothing is held per socket but its position: memory stays
// bounded whatever the rate.
type hub struct {
	st  *store.Store
	sub *store.Subscriber
	log *slog.Logger

	// chat and terminal are the two kinds of stream.
	chat, terminal *streamKind

	mu    sync.Mutex
	feeds map[feedKey]*feed
}

type feedKey struct {
	kind *streamKind
	key  string
}

// streamKind is what differs between the kinds of stream the hub delivers.
type streamKind struct {
	// chunk is how many stored frames one catch-up read fetches.
	chunk int
	// read returns up to n stored frames of key with seq > after.
	read        func(ctx context.Context, key string, after int64, n int) ([]storedFrame, error)
	subscribe   func(ctx context.Context, key string) error
	unsubscribe func(key string)
	// trimmed handles n frames a watch needs that are no longer stored
	// (quiet: a first replay that did not ask for them). It reports
	// whether the watch goes on with what remains. f.mu is not held.
	trimmed func(w *watch, n int64, quiet bool) bool
	// caughtUp, if set, is called with f.mu held when a watch turns live.
	caughtUp func(w *watch)
	// lastSeq, if set, reads the newest stored seq after the pub/sub
	// connection came back, to find a Redis that restarted without its
	// last writes.
	lastSeq func(ctx context.Context, key string) (int64, error)
	watched *metrics.Gauge
	// replayed counts frames sent from the stream (nil: not counted).
	replayed *metrics.Counter
}

// storedFrame is one frame read back from a stream.
type storedFrame struct {
	seq   int64
	frame []byte
}

// feed is one stream followed by this gateway.
type feed struct {
	key  string
	kind *streamKind

	mu sync.Mutex
	// gen is the stream's generation: a terminal restarted elsewhere
	// starts again at seq 1 under a newer one. Chat streams keep 0.
	gen     int64
	maxSeen int64 // the highest seq published in gen, or sent from its stream
	watches map[*watch]struct{}
	term    *termFeed // terminals only
}

// watch is one socket's position in one stream. Fields are guarded by the
// feed's mutex.
type watch struct {
	c    *conn
	f    *feed
	sock *shellSocket // terminals only
	gen  int64
	next int64 // the next seq the socket needs
	// catching is set while the watch reads the stream, or waits for its
	// position (parked, see release); live frames pass it by meanwhile.
	catching bool
	parked   bool
	// resynced is set when the pub/sub connection came back while the
	// watch was catching: a frame published meanwhile may have been
	// missed, so its next empty read does not make it live; the read
	// after it does.
	resynced bool
	// quietTrim skips the trim notice of a first replay without lastSeq.
	quietTrim  bool
	subscribed bool
	done       bool
	// pos changes whenever the watch is repositioned; a catch-up of an
	// older pos stops.
	pos int
	// held counts the signal keys the socket typed that the terminal's
	// worker has not answered yet; while it is not 0 the watch is
	// catching and no catch-up runs (terminals only, see holdForSignal).
	// holdID names the latest hold, whose timer ends it; flushedTo is the
	// last seq of the output a signal key threw away.
	held, holdID int
	flushedTo    int64
	// touched is the terminal generation this watch was counted in as
	// attached (store.ShellTouch), so that it is counted once per
	// generation (terminals only).
	touched int64
	// deferred keeps a new watch parked while what the socket's history
	// read missed is sent to it (chat only): a release meanwhile that
	// keeps positions leaves it to placeDeferred.
	deferred bool
	// exited is made when the terminal's exit is sent to the watch, and
	// closed once its frames are queued (terminals only).
	exited chan struct{}
	// claim is, for the watch of a socket that took its terminal for
	// itself (an init without shellId, terminals.attach), the number
	// Redis gave its claim: a claim of a higher number, made on any
	// gateway, ends the watch. 0 for a watch that shares the terminal,
	// claimPending while its claim is on its way (see terminals.claim).
	// beaten is the highest claim heard while its own was on its way.
	claim, beaten int64
}

// at reports whether the watch is still at position pos and not done: a
// catch-up of an older position stops. It takes the feed's lock.
func (w *watch) at(pos int) bool {
	w.f.mu.Lock()
	defer w.f.mu.Unlock()
	return w.pos == pos && !w.done
}

func newHub(st *store.Store, log *slog.Logger, broadcast func([]byte), outage func()) *hub {
	h := &hub{st: st, log: log, feeds: map[feedKey]*feed{}}
	h.sub = st.NewSubscriber(store.SubscriberHandlers{
		Event:     h.event,
		Resync:    func(id string) { h.resync(h.chat, id) },
		Broadcast: broadcast,
		Outage:    outage,
	})
	h.chat = h.chatKind()
	return h
}

// run reads pub/sub until ctx ends. Runs in its own goroutine.
func (h *hub) run(ctx context.Context) error {
	done := make(chan struct{})
	go func() { defer close(done); h.checkChats(ctx) }()
	err := h.sub.Run(ctx)
	<-done
	return err
}

// chatCheckEvery is how often the gateway has Redis confirm the chat
// streams it follows.
const chatCheckEvery = 5 * time.Second

// checkChats has Redis confirm, every chatCheckEvery, that it still holds
// what the sockets here were sent of each chat stream they follow, until
// ctx ends. A Redis that lost its data without dropping the pub/sub
// connection (FLUSHALL, FLUSHDB, its keys deleted) told nobody: the run's
// worker stops at its next write, no complete follows, and a socket that
// stayed open waited for good. A socket sent a frame the stream no
// longer holds is closed with 1012, as resume does after a restart, with
// the seq this check read: nothing is read again.
// Terminals have the same check in their refresh (ShellTouch).
func (h *hub) checkChats(ctx context.Context) {
	t := time.NewTicker(chatCheckEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		feeds := h.feedsOf(h.chat)
		if len(feeds) == 0 {
			continue
		}
		// What each live socket was sent, read before Redis is asked: a
		// frame is stored before it is published, so Redis holds at least
		// that much unless it lost it (a socket sent more since was sent
		// what Redis stored since, and is not judged by this read).
		type sent struct {
			w    *watch
			upTo int64
		}
		ids, sockets := make([]string, len(feeds)), make([][]sent, len(feeds))
		for i, f := range feeds {
			ids[i] = f.key
			f.mu.Lock()
			for w := range f.watches {
				if !w.catching && !w.done && w.next > 1 {
					sockets[i] = append(sockets[i], sent{w, w.next - 1})
				}
			}
			f.mu.Unlock()
		}
		cctx, cancel := context.WithTimeout(ctx, requestTimeout)
		last, held, err := h.st.LastSeqs(cctx, ids)
		cancel()
		if err != nil {
			continue // an outage: the subscription's own resync follows it
		}
		for i, f := range feeds {
			for _, sw := range sockets[i] {
				if held[i] && sw.upTo <= last[i] {
					continue
				}
				// As resume does after a restart that lost them.
				h.log.Warn("Redis no longer holds events a socket was sent; it resumes", "session", f.key, "lastSeq", last[i], "sent", sw.upTo)
				sw.w.c.closeWith(closeStoreReset)
			}
		}
	}
}

// testHookJoining, when set by a test, is called in join once the watch is
// in its feed, before the subscription.
var testHookJoining func()

// join adds a parked watch of key for c, placed by place (f.mu held), and
// returns once the gateway is subscribed to the stream's channel, so a
// stream read after join cannot miss a frame.
func (h *hub) join(ctx context.Context, kind *streamKind, key string, c *conn, place func(w *watch)) (*watch, error) {
	h.mu.Lock()
	f := h.feeds[feedKey{kind, key}]
	if f == nil {
		f = &feed{key: key, kind: kind, watches: map[*watch]struct{}{}}
		h.feeds[feedKey{kind, key}] = f
		kind.watched.Inc()
	}
	w := &watch{c: c, f: f, catching: true, parked: true}
	f.mu.Lock()
	if place != nil {
		place(w)
	}
	f.watches[w] = struct{}{}
	f.mu.Unlock()
	h.mu.Unlock()
	if testHookJoining != nil {
		testHookJoining()
	}

	ctx, cancel := context.WithTimeout(ctx, subscribeTimeout)
	defer cancel()
	if err := kind.subscribe(ctx, key); err != nil {
		h.leave(w)
		return nil, err
	}
	f.mu.Lock()
	_, still := f.watches[w]
	w.subscribed = still
	f.mu.Unlock()
	if !still {
		// It left while subscribing (leave found it unsubscribed): the
		// subscription is given back here, or it would stay for good.
		kind.unsubscribe(key)
	}
	return w, nil
}

// leave takes a watch out of its feed, drops the feed when it was the last
// and gives back its subscription. It reports whether the watch was still
// there: a watch leaves once, and a second unsubscribe would take another
// watcher's subscription.
func (h *hub) leave(w *watch) bool {
	f := w.f
	h.mu.Lock()
	f.mu.Lock()
	if _, ok := f.watches[w]; !ok {
		f.mu.Unlock()
		h.mu.Unlock()
		return false
	}
	w.done = true
	w.pos++
	delete(f.watches, w)
	if len(f.watches) == 0 && h.feeds[feedKey{f.kind, f.key}] == f {
		delete(h.feeds, feedKey{f.kind, f.key})
		f.kind.watched.Dec()
	}
	subscribed := w.subscribed
	f.mu.Unlock()
	h.mu.Unlock()
	if subscribed {
		f.kind.unsubscribe(f.key)
	}
	return true
}

func (h *hub) feed(kind *streamKind, key string) *feed {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.feeds[feedKey{kind, key}]
}

// feedsOf lists the feeds of one kind.
func (h *hub) feedsOf(kind *streamKind) []*feed {
	h.mu.Lock()
	defer h.mu.Unlock()
	var list []*feed
	for k, f := range h.feeds {
		if k.kind == kind {
			list = append(list, f)
		}
	}
	return list
}

// startLocked makes w read the stream from its position. f.mu must be held.
func (h *hub) startLocked(w *watch) {
	w.catching, w.parked = true, false
	w.pos++
	go h.catchUp(w, w.pos)
}

// publishLocked delivers the live frame seq of f's generation to the
// watches that need it next; frame builds it once, on first use. It never
// blocks on a socket. f.mu must be held.
func (h *hub) publishLocked(f *feed, seq int64, frame func() []byte) {
	f.maxSeen = max(f.maxSeen, seq)
	var b []byte
	for w := range f.watches {
		if w.catching || w.done || seq < w.next {
			continue
		}
		if seq == w.next {
			if b == nil {
				b = frame()
			}
			if w.c.trySend(b) {
				w.next++
				continue
			}
		}
		// Behind (queue full) or a publish was missed: read the stream.
		h.startLocked(w)
	}
}

// storedLocked is publishLocked for a frame Redis stored and did not
// publish (too large for pub/sub): the watches that need it read the
// stream. f.mu must be held.
func (h *hub) storedLocked(f *feed, seq int64) {
	f.maxSeen = max(f.maxSeen, seq)
	for w := range f.watches {
		if w.catching || w.done || seq < w.next {
			continue
		}
		h.startLocked(w)
	}
}

// resync re-reads a stream for every live watch after the pub/sub
// connection came back: what was published meanwhile is only stored.
func (h *hub) resync(kind *streamKind, key string) {
	f := h.feed(kind, key)
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for w := range f.watches {
		if w.done {
			continue
		}
		if w.catching {
			w.resynced = true
			continue
		}
		if kind.lastSeq == nil {
			h.startLocked(w)
			continue
		}
		w.catching = true
		w.pos++
		go h.resume(w, w.pos, w.next)
	}
}

// resume is the catch-up after the pub/sub connection came back. Redis may
// have restarted without its last writes (its AOF is fsynced every second):
// a socket that already had frames Redis no longer holds is closed (1012)
// and resumes with recovered:false, rather than wait for seqs that will
// carry other frames. Runs in its own goroutine.
func (h *hub) resume(w *watch, pos int, next int64) {
	for {
		last, err := w.f.kind.lastSeq(w.c.ctx, w.f.key)
		if store.Unavailable(err) {
			if h.st.WaitAvailable(w.c.ctx) != nil {
				return
			}
			continue
		}
		if err == nil && last < next-1 {
			w.f.mu.Lock()
			current := w.pos == pos && !w.done
			w.f.mu.Unlock()
			if !current {
				// Unsubscribed or placed again meanwhile: that position
				// is no longer the socket's.
				return
			}
			h.log.Warn("Redis lost frames a socket had; it resumes", "stream", w.f.key, "lastSeq", last)
			w.c.closeWith(closeStoreReset)
			return
		}
		h.catchUp(w, pos)
		return
	}
}

// catchUp delivers stored frames to w from its position at the socket's
// pace, until nothing newer than its position was published; then live
// delivery takes over. Runs in its own goroutine, one per watch at a time.
func (h *hub) catchUp(w *watch, pos int) {
	f, c := w.f, w.c
	empty := 0
	for {
		f.mu.Lock()
		if w.pos != pos || w.done {
			f.mu.Unlock()
			return
		}
		quiet := w.quietTrim
		w.quietTrim = false
		f.mu.Unlock()

		if !c.replaySlot(func() bool { return !w.at(pos) }) {
			return
		}
		// Moved or ended while it waited for the slot: read nothing.
		f.mu.Lock()
		stale := w.pos != pos || w.done
		next := w.next
		// This read sees all that was stored before a resync so far.
		w.resynced = false
		f.mu.Unlock()
		if stale {
			c.replayDone()
			return
		}
		frames, err := f.kind.read(c.ctx, f.key, next-1, f.kind.chunk)
		if err != nil || len(frames) == 0 {
			c.replayDone()
		}
		if store.Unavailable(err) {
			// Redis is down or loading: wait for it and read on from the
			// same position, rather than close.
			if h.st.WaitAvailable(c.ctx) != nil {
				return
			}
			continue
		}
		if err != nil {
			if c.ctx.Err() != nil {
				return
			}
			h.log.Warn("replay", "stream", f.key, "err", err)
			c.closeWith(closeSlow) // the client reconnects and resumes
			return
		}
		if len(frames) == 0 {
			f.mu.Lock()
			if w.pos != pos || w.done {
				f.mu.Unlock()
				return
			}
			if w.resynced {
				// The subscription came back during the read: what was
				// published while it was away is read again.
				f.mu.Unlock()
				continue
			}
			if f.maxSeen < w.next {
				w.catching = false
				if f.kind.caughtUp != nil {
					f.kind.caughtUp(w)
				}
				f.mu.Unlock()
				return
			}
			empty++
			missing := int64(0)
			if empty > emptyRetries {
				// Published but never readable: trimmed while we read.
				missing = f.maxSeen + 1 - w.next
			}
			f.mu.Unlock()
			if missing > 0 && !h.skip(w, pos, missing, quiet) {
				return
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		empty = 0
		delivered := h.deliver(w, pos, frames, quiet)
		c.replayDone()
		if !delivered {
			return
		}
	}
}

// deliver sends stored frames in order at the socket's pace. It returns
// false when the watch was repositioned or the socket is gone.
func (h *hub) deliver(w *watch, pos int, frames []storedFrame, quiet bool) bool {
	f, c := w.f, w.c
	current := func() bool { return w.at(pos) }
	for i := 0; i < len(frames); {
		if !c.waitRoomFor(int64(len(frames[i].frame)), current) {
			return false
		}
		f.mu.Lock()
		if w.pos != pos || w.done {
			f.mu.Unlock()
			return false
		}
		var missing int64
		for ; i < len(frames); i++ {
			fr := frames[i]
			if fr.seq < w.next {
				continue
			}
			if fr.seq > w.next {
				missing = fr.seq - w.next
				break
			}
			if !c.trySend(fr.frame) {
				break // full again: wait for room
			}
			w.next++
			f.maxSeen = max(f.maxSeen, fr.seq)
			if f.kind.replayed != nil {
				f.kind.replayed.Inc()
			}
		}
		f.mu.Unlock()
		if missing > 0 && !h.skip(w, pos, missing, quiet) {
			return false
		}
	}
	return true
}

// skip moves w past n frames that are no longer stored, if its kind lets
// it go on without them.
func (h *hub) skip(w *watch, pos int, n int64, quiet bool) bool {
	if !w.f.kind.trimmed(w, n, quiet) {
		return false
	}
	w.f.mu.Lock()
	defer w.f.mu.Unlock()
	if w.pos != pos || w.done {
		return false
	}
	w.next += n
	return true
}
