package handlers

import (
	"context"
	"encoding/json"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
	"github.com/olahol/melody"

	"github.com/agentgate/agentgate/app"
)

// closeReason says why the gateway closed a socket; it labels logs and metrics.
type closeReason int

const (
	closeNone       closeReason = iota
	closeSlow                   // the outgoing queue was full (4008)
	closeShutdown               // the gateway is draining (1001)
	closeStoreReset             // Redis lost events the socket had (1012)
	closeExpired                // the socket's token expired (4401)
)

func (r closeReason) String() string {
	switch r {
	case closeSlow:
		return "slow_consumer"
	case closeShutdown:
		return "shutdown"
	case closeStoreReset:
		return "store_reset"
	case closeExpired:
		return "token_expired"
	}
	return "none"
}

// conn wraps one melody session with the bounded outgoing queue PROTOCOL
// §3.5 asks for: melody drops a frame silently when its buffer is full, so
// conn counts the frames queued and not yet written, keeps melody's share
// of them under its buffer's size, and closes the socket with 4008 when the
// queue is full. A client that sees 4008 reconnects and resumes from its
// lastSeq, so no event is lost silently.
type conn struct {
	s      *melody.Session
	user   app.User
	ctx    context.Context // ends when the socket closes
	cancel context.CancelFunc
	limit  int64

	queued atomic.Int64
	qbytes atomic.Int64 // the bytes of the queued frames (not of a closed socket's)
	// byteLimit is maxQueuedBytes (a test may queue more).
	byteLimit int64
	closed    atomic.Bool
	room      chan struct{} // signalled when the queue drained to half

	// inMelody counts the frames in melody's buffer, at most share;
	// held are the queued frames behind them, handed to melody as it
	// writes (toMelody, sent), and not while paused. Guarded by hmu, which
	// is taken last.
	hmu      sync.Mutex
	share    int
	inMelody int
	held     [][]byte
	paused   bool
	// handed counts the frames given to melody (guarded by hmu), written
	// those it wrote; wrote is signalled at each write of a paced socket,
	// whose pacer times the quiet after a frame from its write.
	handed  int64
	written atomic.Int64
	wrote   chan struct{}

	mu      sync.Mutex
	watches map[string]*watch // sessions this socket follows, by id
	// missedSent are the sessions this socket was sent what its history
	// read missed (missedFrom), once each.
	missedSent []string
	// replays holds a slot for each catch-up of this socket that holds
	// frames it read (replaySlot); made on the first one.
	replays chan struct{}

	// interval is the quiet time after a frame the client must see (0:
	// never paced, as /shell); latestOnly, pending, pacing and quietUntil
	// are the pacer's state (pace.go), guarded by pmu. pmu may be taken
	// while a feed's mutex is held (hub.publishLocked sends under it); no
	// other lock is taken while pmu is held.
	interval time.Duration
	pmu      sync.Mutex
	// latestOnly is set for a /ws client taken for Claude Code UI's
	// frontend (no ?delivery=immediate, no lastSeq sent yet): its frames
	// are paced when interval is not 0, and it needs the frames that
	// frontend acts on either way (endRefusedCommand).
	latestOnly bool
	pacing     bool
	pending    [][]byte
	quietUntil time.Time

	// quota is the user's share of the gateway, refusal the frame that
	// answers a frame over its rate, and refusedAt when it was last sent
	// (read goroutine only).
	quota     *userQuota
	refusal   []byte
	refusedAt time.Time
}

// newConn wraps a socket; a non-zero interval paces its frames (pace.go)
// until its client shows that it handles every frame.
func newConn(s *melody.Session, user app.User, limit int, interval time.Duration) *conn {
	// Not the request's context: it ends as soon as the upgrade handler
	// returns.
	ctx, cancel := context.WithCancel(context.Background())
	c := &conn{
		s: s, user: user, ctx: ctx, cancel: cancel, limit: int64(limit), byteLimit: maxQueuedBytes, share: melodyFrames,
		room: make(chan struct{}, 1), watches: map[string]*watch{},
		interval: interval, latestOnly: interval > 0,
	}
	if interval > 0 {
		c.wrote = make(chan struct{}, 1)
	}
	if !user.Expires.IsZero() {
		// A token is checked when the socket opens; past its expiry the
		// socket goes too, so that expiry bounds what a leaked token can do.
		t := time.AfterFunc(time.Until(user.Expires), func() { c.closeWith(closeExpired) })
		context.AfterFunc(ctx, func() { t.Stop() })
	}
	return c
}

// maxReplays is how many of a socket's watches may hold frames read back
// from their streams at once: a socket that subscribes to a hundred
// sessions and reads nothing holds two reads' worth, not a hundred.
const maxReplays = 2

// replaySlot waits for one of the socket's replay slots; false when the
// socket closed first, or when stale reports the catch-up that waits
// moved on (looked at every replayRecheck). replayDone gives it back.
//
// Without the second, a client that held both slots (two long replays,
// read at a trickle) and subscribed again and again left one goroutine
// waiting per subscribe, each for a catch-up already superseded.
func (c *conn) replaySlot(stale func() bool) bool {
	c.mu.Lock()
	if c.replays == nil {
		c.replays = make(chan struct{}, maxReplays)
	}
	slots := c.replays
	c.mu.Unlock()
	select {
	case slots <- struct{}{}:
		return true
	default:
	}
	tick := time.NewTicker(replayRecheck)
	defer tick.Stop()
	for {
		select {
		case slots <- struct{}{}:
			return true
		case <-c.ctx.Done():
			return false
		case <-tick.C:
			if stale() {
				return false
			}
		}
	}
}

// replayRecheck is how often a catch-up waiting for a replay slot looks
// whether it is still wanted.
const replayRecheck = 200 * time.Millisecond

func (c *conn) replayDone() { <-c.replays }

// trySend queues a frame if the queue has room. It never blocks and never
// closes the socket: a session event that does not fit is read back from
// the stream by the hub.
func (c *conn) trySend(frame []byte) bool { return c.offer(frame, c.limit) }

// maxQueuedBytes bounds the bytes a socket's queue holds, besides its
// frames: a terminal chunk of control bytes escapes to six times its size,
// and 64 such frames are 12 MiB a socket. A frame larger than this is still
// taken by an empty queue.
const maxQueuedBytes = 4 << 20

// offer queues a frame if fewer than limit frames, and fewer than
// maxQueuedBytes, wait.
func (c *conn) offer(frame []byte, limit int64) bool {
	if c.closed.Load() {
		return false
	}
	if c.queued.Add(1) > limit {
		c.queued.Add(-1)
		return false
	}
	n := int64(len(frame))
	if b := c.qbytes.Add(n); b > c.byteLimit && b > n {
		c.qbytes.Add(-n)
		c.queued.Add(-1)
		return false
	}
	if err := c.write(frame); err != nil {
		c.qbytes.Add(-n)
		c.queued.Add(-1)
		return false
	}
	return true
}

// roomy reports whether the queue is at most half full, in frames and bytes.
func (c *conn) roomy() bool {
	return c.queued.Load() <= c.limit/2 && c.qbytes.Load() <= c.byteLimit/2
}

// replyWait is how long a reply waits for room in a full queue before the
// socket is closed as a slow consumer.
const replyWait = 5 * time.Second

// send queues a frame that exists nowhere else (a reply), waiting a little
// for room; a socket that cannot take it is closed with 4008, so that the
// client reconnects instead of missing it.
func (c *conn) send(frame []byte) bool {
	deadline := time.Now().Add(replyWait)
	for !c.trySend(frame) {
		if c.closed.Load() {
			return false
		}
		if testHookSendRetry != nil {
			testHookSendRetry()
		}
		// Room for this frame, not any room: a frame over half the
		// queue's bytes found the queue roomy at once, failed to fit,
		// and spun until the socket closed.
		if !c.waitRoomFor(int64(len(frame)), func() bool { return time.Now().Before(deadline) }) {
			c.closeWith(closeSlow)
			return false
		}
	}
	return true
}

// testHookSendRetry, when set by a test, is called each time send found no
// room for its frame.
var testHookSendRetry func()

// reply encodes and queues a reply frame.
func (c *conn) reply(v any) bool {
	b, err := json.Marshal(v)
	if err != nil {
		return false
	}
	return c.send(b)
}

// melodyFrames is how many of a socket's queued frames wait in melody's
// buffer; the rest of the queue (up to limit) waits in conn.held. Melody
// allocates its buffer whole when a socket opens (40 bytes a frame, 3 KiB
// for the whole queue of 64), while held exists only while the socket is
// behind: most sockets never are.
const melodyFrames = 8

// shellMelodyFrames is melodyFrames for a /shell socket: a flood's frames
// are up to 32 KiB, and a frame in melody's buffer can no longer be held
// back after a signal key (terminals.holdForSignal); one is enough to keep
// melody's writer busy, since it takes the next at each write.
const shellMelodyFrames = 1

// melodyBufferSize is melody's MessageBufferSize: melodyFrames, and room
// for the frames melody writes itself.
const melodyBufferSize = melodyFrames + 8

// toMelody hands a frame to melody's buffer, or holds it behind the frames
// already held when the buffer has its share. It never blocks. It returns
// the frame's number among those handed to melody; written reaches it
// once the frame is written.
func (c *conn) toMelody(frame []byte) (int64, error) {
	c.hmu.Lock()
	defer c.hmu.Unlock()
	if len(c.held) == 0 && c.inMelody < c.share && !c.paused {
		if err := c.s.Write(frame); err != nil {
			return 0, err
		}
		c.inMelody++
	} else {
		if c.s.IsClosed() {
			return 0, melody.ErrSessionClosed
		}
		c.held = append(c.held, frame)
	}
	c.handed++
	return c.handed, nil
}

// sent is called by melody after a frame of n bytes was written: the next
// held frame takes its place in melody's buffer.
func (c *conn) sent(n int) {
	c.hmu.Lock()
	c.inMelody--
	c.handHeldLocked()
	c.hmu.Unlock()
	c.written.Add(1)
	if c.wrote != nil {
		select {
		case c.wrote <- struct{}{}:
		default:
		}
	}
	c.qbytes.Add(-int64(n))
	c.queued.Add(-1)
	if c.roomy() {
		select {
		case c.room <- struct{}{}:
		default:
		}
	}
}

// handHeldLocked hands held frames to melody up to its share, unless
// paused. c.hmu must be held.
func (c *conn) handHeldLocked() {
	for len(c.held) > 0 && c.inMelody < c.share && !c.paused {
		frame := c.held[0]
		c.held[0] = nil
		c.held = c.held[1:]
		if len(c.held) == 0 {
			c.held = nil
		}
		if c.s.Write(frame) == nil {
			c.inMelody++
		} else {
			c.queued.Add(-1)
		}
	}
}

// pause stops handing queued frames to melody: what melody already has
// is written, the rest waits (a /shell socket whose user typed a signal
// key, see terminals.holdForSignal).
func (c *conn) pause() {
	c.hmu.Lock()
	c.paused = true
	c.hmu.Unlock()
}

// resume hands the queued frames to melody again, after dropping those
// for which drop (if not nil) reports true.
func (c *conn) resume(drop func(frame []byte) bool) {
	c.hmu.Lock()
	c.paused = false
	dropped := 0
	if drop != nil && len(c.held) > 0 {
		kept := c.held[:0]
		for _, frame := range c.held {
			if drop(frame) {
				c.qbytes.Add(-int64(len(frame)))
				c.queued.Add(-1)
				dropped++
				continue
			}
			kept = append(kept, frame)
		}
		clear(c.held[len(kept):])
		c.held = kept
		if len(c.held) == 0 {
			c.held = nil
		}
	}
	c.handHeldLocked()
	c.hmu.Unlock()
	if dropped > 0 && c.roomy() {
		select {
		case c.room <- struct{}{}:
		default:
		}
	}
}

// waitRoomFor blocks until the queue is at most half full and a frame of n
// bytes fits its bytes (offer takes one past them only into an empty
// queue: a large frame otherwise found room at once, failed to fit, and
// spun), so a replay fills it at the pace the client reads. It returns
// false if the socket closed, or once wanted reports false (looked at
// every 50 ms at least): a waiter that is no longer wanted must not wait
// for as long as a client that reads just enough keeps the queue over
// half.
func (c *conn) waitRoomFor(n int64, wanted func() bool) bool {
	fits := func() bool {
		q := c.qbytes.Load()
		return c.roomy() && (q+n <= c.byteLimit || q == 0)
	}
	for !fits() {
		if c.closed.Load() || !wanted() {
			return false
		}
		select {
		case <-c.room:
		case <-c.ctx.Done():
			return false
		case <-time.After(50 * time.Millisecond):
		}
	}
	return !c.closed.Load()
}

// closeWith closes the socket with the code of reason, once, without
// waiting: callers hold locks, and a slow consumer's TCP buffer is the one
// most likely to be full.
func (c *conn) closeWith(reason closeReason) {
	if c.claimClose(reason) {
		go c.writeClose(reason)
	}
}

// closeNow is closeWith that returns once the close frame was written (or
// could not be within a second): a draining gateway must not exit first.
func (c *conn) closeNow(reason closeReason) {
	if c.claimClose(reason) {
		c.writeClose(reason)
	}
}

func (c *conn) claimClose(reason closeReason) bool {
	if !c.closed.CompareAndSwap(false, true) {
		return false
	}
	socketCloses.WithLabelValues(reason.String()).Inc()
	return true
}

// writeClose sends the close frame through WriteControl, which gorilla
// allows next to melody's writer, because the full queue cannot take it
// (melody's own Close would recurse), then closes the connection.
func (c *conn) writeClose(reason closeReason) {
	code, text := app.CloseGoingAway, "gateway shutting down"
	switch reason {
	case closeSlow:
		code, text = app.CloseSlowConsumer, "slow consumer"
	case closeStoreReset:
		code, text = app.CloseStoreRestart, "session store restarted"
	case closeExpired:
		code, text = app.CloseTokenExpired, "token expired"
	}
	ws := c.s.WebsocketConnection()
	_ = ws.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(code, text), time.Now().Add(time.Second))
	_ = ws.Close()
}

func (c *conn) watching(sessionID string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.watches[sessionID] != nil
}
