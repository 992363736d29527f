package handlers

import (
	"encoding/json"
	"time"
)

// DefaultPaceInterval is the quiet time a paced socket gets after each frame
// its client must see. Claude Code UI's frontend keeps only the latest frame
// in React state and acts on it in an effect (WebSocketContext.tsx,
// useChatRealtimeHandlers.ts at afc717e6): a frame that arrives before React
// has rendered the previous one replaces it unseen. The render of a whole
// chat page takes one or more display frames (16.7 ms each); 50 ms between
// frames is what made that frontend, tried headless, pass chat, Stop and
// reload.
const DefaultPaceInterval = 50 * time.Millisecond

// Values of the /ws query parameter "delivery".
const (
	// deliveryImmediate writes every frame as soon as it is there: for
	// clients that handle every frame (they use seq).
	deliveryImmediate = "immediate"
	// deliveryPaced spaces the frames a client must see (the default for
	// a socket that has not sent a lastSeq).
	deliveryPaced = "paced"
)

// write hands a frame to melody, directly or through the pacer. The pacer
// keeps the frames in the order trySend took them, so once any frame waits
// every later one queues behind it, also after the socket switched to
// immediate delivery (the pacer then drains without waiting).
func (c *conn) write(frame []byte) error {
	if c.interval == 0 {
		_, err := c.toMelody(frame)
		return err
	}
	c.pmu.Lock()
	defer c.pmu.Unlock()
	if !c.latestOnly && !c.pacing {
		_, err := c.toMelody(frame)
		return err
	}
	c.pending = append(c.pending, frame)
	if !c.pacing {
		c.pacing = true
		go c.pace()
	}
	return nil
}

// pace writes the waiting frames, each after the quiet time of the last
// frame that must be seen. It holds no Redis reads and no more than the
// socket's queue: a watch whose frames do not fit reads the session's stream
// at the socket's pace (hub.catchUp), as for any slow socket. Runs in its own
// goroutine while frames wait; it exits when none is left.
func (c *conn) pace() {
	for {
		c.pmu.Lock()
		if len(c.pending) == 0 || c.closed.Load() {
			for range c.pending {
				c.queued.Add(-1)
			}
			c.pending, c.pacing = nil, false
			c.pmu.Unlock()
			return
		}
		frame := c.pending[0]
		c.pending[0] = nil
		c.pending = c.pending[1:]
		wait := time.Duration(0)
		if c.latestOnly {
			wait = time.Until(c.quietUntil)
		}
		c.pmu.Unlock()

		if wait > 0 {
			t := time.NewTimer(wait)
			select {
			case <-t.C:
			case <-c.ctx.Done():
				t.Stop()
			}
		}

		c.pmu.Lock()
		n, err := c.toMelody(frame)
		seen := c.latestOnly && mustBeSeen(frame)
		c.pmu.Unlock()
		if err != nil {
			c.queued.Add(-1)
			continue
		}
		if seen {
			// The quiet runs from the write, not from the hand-over: a
			// writer that ran late would otherwise send this frame and the
			// next together, and the client would see only the second.
			c.awaitWritten(n)
			c.pmu.Lock()
			c.quietUntil = time.Now().Add(c.interval)
			c.pmu.Unlock()
		}
	}
}

// awaitWritten waits until melody wrote the n-th frame handed to it, the
// socket closed, or a second passed (a socket that stalls that long fills
// its queue and is read at its own pace anyway).
func (c *conn) awaitWritten(n int64) {
	deadline := time.NewTimer(time.Second)
	defer deadline.Stop()
	for c.written.Load() < n {
		select {
		case <-c.wrote:
		case <-c.ctx.Done():
			return
		case <-deadline.C:
			return
		}
	}
}

// deliverImmediately ends pacing for the socket: its client handles every
// frame (it sent a lastSeq). Frames already waiting go out at once, in order.
func (c *conn) deliverImmediately() {
	c.pmu.Lock()
	c.latestOnly = false
	c.pmu.Unlock()
}

// isLatestOnly reports whether the socket's client is taken for Claude
// Code UI's frontend, paced or not (conn.latestOnly).
func (c *conn) isLatestOnly() bool {
	c.pmu.Lock()
	defer c.pmu.Unlock()
	return c.latestOnly
}

// frameHead is what mustBeSeen reads of a frame.
type frameHead struct {
	Type string `json:"type"`
	Kind string `json:"kind"`
}

// mustBeSeen reports whether Claude Code UI's frontend acts on a frame, so
// that the next frame must wait for it to be rendered. Frames it ignores may
// be overtaken at once: the lifecycle frames agentgate adds for clients that
// use them (session-state-changed, which that frontend does not interpret,
// and the replies session-accepted and session-busy, which it drops as
// unknown types). That is what lets session_created and complete, which come
// right after them (PROTOCOL §3.3), reach it without a pause in between.
func mustBeSeen(frame []byte) bool {
	var h frameHead
	if err := json.Unmarshal(frame, &h); err != nil {
		return true
	}
	switch {
	case h.Kind == "session-state-changed":
		return false
	case h.Kind == "":
		return h.Type != "session-accepted" && h.Type != "session-busy"
	}
	return true
}
