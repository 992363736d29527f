package handlers

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	"github.com/labstack/echo/v4"
	"golang.org/x/time/rate"
)

// Defaults of the per-user limits of PROTOCOL §2, for Config fields left at
// zero.
const (
	DefaultMaxSocketsPerUser = 64
	DefaultMaxFrameRate      = 50
	// frameBurstSeconds is how many seconds' worth of frames a user may send
	// at once: a client that reconnects sends a burst of status checks.
	frameBurstSeconds = 4
	// refusalEvery bounds the rate-limit errors one socket is sent, so that
	// the refusals of a flood are not a flood of their own.
	refusalEvery = time.Second
	// quotaSweepEvery is how often the quotas of users without sockets are
	// looked at for removal.
	quotaSweepEvery = time.Minute
	// typedWaitMax bounds how long a /shell frame over the rate waits for
	// it (awaitFrames). A user's waiting sockets hold one reservation each,
	// so at the defaults a frame waits at most 64/50 s; the bound only
	// matters with a much lower --max-frame-rate, and stays well under a
	// socket's pong wait (2 ping periods and 10 s), during which its read
	// goroutine reads nothing.
	typedWaitMax = 5 * time.Second
)

// userQuotas are the per-user limits of one gateway: how many sockets a user
// holds open (/ws, /shell and /plugin-ws together), and the frame rate all of
// them share.
type userQuotas struct {
	maxSockets int
	rate       int
	burst      int
	// now is the clock the frame rate is measured on: time.Now, or one a
	// test controls (set before the first socket, under mu).
	now func() time.Time

	mu      sync.Mutex
	users   map[string]*userQuota
	sweptAt time.Time
}

// userQuota is one user's share of a gateway.
type userQuota struct {
	sockets int // guarded by userQuotas.mu
	reads   int // REST reads under way; guarded by userQuotas.mu
	frames  *rate.Limiter
	now     func() time.Time // userQuotas.now when it was made
	// restarts paces the terminal restarts (an init with forceRestart)
	// that a user's sockets ask for: each starts a process on a worker
	// and ends one, which costs the worker far more than a frame.
	restarts *rate.Limiter
	// acks bounds the terminal acks of a user's sockets, which do not pay
	// the frame rate: each still costs a read and a parse.
	acks *rate.Limiter
}

// Terminal acks: a rendering client acks each frame it shows, up to about
// a thousand a second for one terminal in a flood, and a user may have
// several. An ack past the rate is dropped without a word: acks are
// cumulative, so the next one says all it said.
const (
	acksPerFrame  = 100 // the ack rate, in frames of the user's frame rate
	ackBurstRatio = 2   // the burst, in seconds' worth
)

// admitAck reports whether the socket's user may send a terminal ack now.
func (c *conn) admitAck() bool {
	if c.quota == nil || c.quota.acks.Allow() {
		return true
	}
	limitRefusals.WithLabelValues("acks").Inc()
	return false
}

// Terminal restarts: one a second per user and gateway, a few at once.
const (
	restartRate  = 1
	restartBurst = 3
)

// restartsLimitText is the error a restart over the rate is refused with.
const restartsLimitText = "Rate limit: at most one terminal restart per second"

// allowRestart reports whether the socket's user may restart a terminal now.
func (c *conn) allowRestart() bool {
	if c.quota == nil || c.quota.restarts.Allow() {
		return true
	}
	limitRefusals.WithLabelValues("restarts").Inc()
	return false
}

func newUserQuotas(maxSockets, frameRate int) *userQuotas {
	// A subscribe costs a frame per session: the burst takes the largest
	// one, or it could never pass.
	burst := max(frameBurstSeconds*frameRate, maxSubscribe)
	return &userQuotas{maxSockets: maxSockets, rate: frameRate, burst: burst, now: time.Now, users: map[string]*userQuota{}}
}

// acquire takes one of user's sockets, or returns nil when the user already
// holds as many as it may; release gives it back.
func (q *userQuotas) acquire(user string) *userQuota {
	q.mu.Lock()
	defer q.mu.Unlock()
	if now := q.now(); now.Sub(q.sweptAt) >= quotaSweepEvery {
		q.sweep(now)
	}
	u := q.userLocked(user)
	if u.sockets >= q.maxSockets {
		return nil
	}
	u.sockets++
	return u
}

// userLocked returns user's quota, made on first use. q.mu must be held.
func (q *userQuotas) userLocked(user string) *userQuota {
	u := q.users[user]
	if u == nil {
		u = &userQuota{frames: rate.NewLimiter(rate.Limit(q.rate), q.burst), restarts: rate.NewLimiter(restartRate, restartBurst),
			acks: rate.NewLimiter(rate.Limit(acksPerFrame*q.rate), ackBurstRatio*acksPerFrame*q.rate), now: q.now}
		q.users[user] = u
	}
	return u
}

// admitRequest reports whether user may make a REST request now: each
// pays a frame of the same rate as their sockets' frames (a request can
// read a thousand events).
func (q *userQuotas) admitRequest(user string) bool {
	q.mu.Lock()
	u := q.userLocked(user)
	q.mu.Unlock()
	if u.frames.AllowN(u.now(), 1) {
		return true
	}
	limitRefusals.WithLabelValues("frames").Inc()
	return false
}

// maxReadsPerUser bounds the REST reads one user has under way on a
// gateway, event pages and session lists together: an event page holds up
// to restEventsBytes until its client read it, and a client that never
// reads holds it for the write timeout (2 minutes); a session list reads
// up to a thousand session hashes, four times that for running ones.
const maxReadsPerUser = 4

// startRead takes one of user's REST reads, or reports false when
// maxReadsPerUser are under way; endRead gives it back.
func (q *userQuotas) startRead(user string) bool {
	q.mu.Lock()
	defer q.mu.Unlock()
	u := q.userLocked(user)
	if u.reads >= maxReadsPerUser {
		limitRefusals.WithLabelValues("reads").Inc()
		return false
	}
	u.reads++
	return true
}

func (q *userQuotas) endRead(user string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	q.userLocked(user).reads--
}

func (q *userQuotas) release(u *userQuota) {
	q.mu.Lock()
	defer q.mu.Unlock()
	u.sockets--
}

// sweep drops the quotas of users without sockets whose frame budget is
// full again. A quota is kept until then, not dropped with its last socket:
// reconnecting must not refill the budget.
func (q *userQuotas) sweep(now time.Time) {
	q.sweptAt = now
	for name, u := range q.users {
		if u.sockets == 0 && u.reads == 0 && u.frames.TokensAt(now) >= float64(q.burst) && u.restarts.TokensAt(now) >= restartBurst &&
			u.acks.TokensAt(now) >= float64(u.acks.Burst()) {
			delete(q.users, name)
		}
	}
}

// tooManySockets is the answer to an upgrade over the per-user socket cap,
// given before the upgrade.
func (q *userQuotas) tooManySockets() error {
	limitRefusals.WithLabelValues("sockets").Inc()
	return echo.NewHTTPError(http.StatusTooManyRequests,
		fmt.Sprintf("too many sockets for this user: at most %d per gateway", q.maxSockets))
}

// rateLimitText is the error a frame over the rate is answered with.
func (q *userQuotas) rateLimitText() string {
	return fmt.Sprintf("Rate limit: at most %d frames per second per user", q.rate)
}

// admit reports whether n more frames of the socket may be handled now,
// under the rate its user's sockets share. A frame over the rate is not
// handled, and the socket is told so at most once per refusalEvery; it stays
// open. Called on the socket's read goroutine only.
func (c *conn) admit(n int) bool {
	if c.quota == nil || n <= 0 {
		return true // (AllowN of a negative n would give tokens back)
	}
	now := c.quota.now()
	if c.quota.frames.AllowN(now, n) {
		return true
	}
	limitRefusals.WithLabelValues("frames").Inc()
	if now.Sub(c.refusedAt) >= refusalEvery {
		c.refusedAt = now
		c.send(c.refusal)
	}
	return false
}

// awaitFrames is admit for the frames of a terminal, typed by a person or
// sent on their behalf (keystrokes, a paste, a trackpad's scroll events,
// resizes): a frame over the rate is not dropped but waits for it, on the
// socket's read goroutine, which reads nothing meanwhile, so that TCP slows
// the client down. A flood costs its user time, and the gateway one frame
// and a timer per socket. The wait takes a reservation of the user's
// limiter and holds no lock (rate.Limiter's own is held only to reserve):
// another socket of the user, or another user, is never kept waiting by
// it. It ends with the socket's context; a frame whose wait would outlast
// typedWaitMax (a user's many sockets all flooding under a low rate) is
// refused as admit refuses it. Called on the socket's read goroutine only.
func (c *conn) awaitFrames(n int) bool {
	if c.quota == nil || n <= 0 {
		return true
	}
	if c.quota.frames.AllowN(c.quota.now(), n) {
		return true
	}
	// (WaitN waits on the wall clock, whatever quota.now is.)
	ctx, cancel := context.WithTimeout(c.ctx, typedWaitMax)
	defer cancel()
	err := c.quota.frames.WaitN(ctx, n)
	if err == nil {
		limitRefusals.WithLabelValues("frames_waited").Inc()
		return true
	}
	if c.ctx.Err() != nil {
		return false // the socket closed
	}
	return c.admit(n)
}
