package link

import (
	"context"
	"crypto/cipher"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/agentgate/agentgate/store"
)

const (
	// dialTimeout bounds a dial and its hello.
	dialTimeout = time.Second
	// writeTimeout bounds one frame's write to a worker that reads nothing.
	writeTimeout = time.Second
	// retryAfter is how long a worker whose link failed, or that has none,
	// is sent its controls through its inbox before the link is tried
	// again; it doubles with each failed dial, up to maxRetryAfter.
	retryAfter    = 2 * time.Second
	maxRetryAfter = time.Minute
	// switchQuiet is how long a terminal must have been sent no input or
	// resize through its worker's inbox before its input takes the link:
	// one sent earlier could still be on its way, and a keystroke must
	// not overtake another. (Acks have no order: any ack may take it.)
	switchQuiet = 250 * time.Millisecond
	// maxPeers bounds the workers remembered without a link.
	maxPeers = 1024
)

// ErrNoLink is returned by Send when the worker has no usable link: the
// control should go through its inbox.
var ErrNoLink = errors.New("link: no link to the worker")

// errNoAdvert is a worker that advertises no link: not a fault.
var errNoAdvert = errors.New("the worker advertises no link")

// Lookup returns the link address and token a worker advertises ("" when
// it has none).
type Lookup func(ctx context.Context, worker string) (addr, token string, err error)

// Client sends controls to workers over their links, one connection per
// worker, dialed on first use and again after it fails.
type Client struct {
	lookup Lookup
	log    *slog.Logger

	mu     sync.Mutex
	peers  map[string]*peer
	closed bool
}

// peer is one worker's link, guarded by its mutex: sends to one worker go
// out in the order they took it.
type peer struct {
	mu      sync.Mutex
	conn    net.Conn
	dialing bool
	// gone is set when the peer left the client's map: a send that took
	// it just before must not dial a link no one would close.
	gone    bool
	retryAt time.Time
	backoff time.Duration
	// inboxAt is when each terminal (by key) was last sent input or a
	// resize through the worker's inbox, within switchQuiet.
	inboxAt map[string]time.Time
	// frames seals the frames of conn, under its key.
	frames *frameWriter
}

// viaInbox records that ctl goes through the inbox. p.mu must be held.
func (p *peer) viaInbox(ctl store.Control, now time.Time) {
	if ctl.Shell == "" {
		return // acks
	}
	if p.inboxAt == nil {
		p.inboxAt = map[string]time.Time{}
	}
	if len(p.inboxAt) >= 64 {
		for k, at := range p.inboxAt {
			if now.Sub(at) >= switchQuiet {
				delete(p.inboxAt, k)
			}
		}
	}
	p.inboxAt[ctl.Shell] = now
}

// mayLink reports whether ctl may take the link: no input or resize of
// its terminal went through the inbox within switchQuiet. p.mu must be
// held.
func (p *peer) mayLink(ctl store.Control, now time.Time) bool {
	at, ok := p.inboxAt[ctl.Shell]
	return !ok || now.Sub(at) >= switchQuiet
}

// NewClient returns a client that finds workers' links with lookup.
func NewClient(lookup Lookup, log *slog.Logger) *Client {
	if log == nil {
		log = slog.Default()
	}
	return &Client{lookup: lookup, log: log, peers: map[string]*peer{}}
}

// Send writes ctl to worker's link. An error (ErrNoLink or one wrapping
// it) means it was not sent: the caller sends it through the inbox. A link
// is dialed in the background, so no send waits on a dial; a nil Client
// has no links.
func (c *Client) Send(ctx context.Context, worker string, ctl store.Control) error {
	if c == nil {
		return ErrNoLink
	}
	if !accepted[ctl.Type] {
		return fmt.Errorf("%w: %s controls take the inbox", ErrNoLink, ctl.Type)
	}
	p := c.lockedPeer(worker)
	if p == nil {
		return ErrNoLink
	}
	defer p.mu.Unlock()
	body, err := json.Marshal(ctl)
	// After the encoding, which takes a while for a large paste: a control
	// that takes the inbox is sent there no earlier than this.
	now := time.Now()
	if err != nil || len(body) > MaxFrame {
		p.viaInbox(ctl, now)
		return fmt.Errorf("%w: control too large or not encodable", ErrNoLink)
	}
	if p.conn == nil || !p.mayLink(ctl, now) {
		if p.conn == nil && !p.dialing && !now.Before(p.retryAt) {
			p.dialing = true
			go c.connect(worker, p)
		}
		p.viaInbox(ctl, now)
		return ErrNoLink
	}
	frame, err := p.frames.frame(body)
	if err == nil {
		_ = p.conn.SetWriteDeadline(now.Add(writeTimeout))
		_, err = p.conn.Write(frame)
	}
	if err != nil {
		// A partial frame ends the link too: the worker drops it unread
		// (a sealed one does not open).
		p.conn.Close()
		p.conn, p.frames = nil, nil
		p.retryAt = time.Now().Add(retryAfter)
		p.viaInbox(ctl, now)
		return fmt.Errorf("%w: write: %w", ErrNoLink, err)
	}
	return nil
}

// connect dials worker's link for p. Runs in its own goroutine.
func (c *Client) connect(worker string, p *peer) {
	conn, aead, err := c.dial(context.Background(), worker)
	c.mu.Lock()
	closed := c.closed
	c.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	p.dialing = false
	if err != nil {
		level := slog.LevelDebug
		if p.backoff == 0 && !errors.Is(err, errNoAdvert) {
			// Once per outage, so an operator sees a firewalled port.
			level = slog.LevelWarn
		}
		p.backoff = min(max(2*p.backoff, retryAfter), maxRetryAfter)
		p.retryAt = time.Now().Add(p.backoff)
		c.log.Log(context.Background(), level, "no link to worker: its terminals' input takes its inbox", "worker", worker, "retry", p.backoff, "err", err)
		return
	}
	if closed {
		conn.Close()
		return
	}
	p.conn, p.frames, p.backoff = conn, &frameWriter{aead: aead}, 0
	go c.watch(p, conn)
}

// peer returns worker's peer, made on first use; nil once closed.
func (c *Client) peer(worker string) *peer {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return nil
	}
	p := c.peers[worker]
	if p == nil {
		if len(c.peers) >= maxPeers {
			c.pruneLocked()
		}
		p = &peer{}
		c.peers[worker] = p
	}
	return p
}

// lockedPeer returns worker's peer locked, one still in the client's map;
// nil once closed.
func (c *Client) lockedPeer(worker string) *peer {
	for {
		p := c.peer(worker)
		if p == nil {
			return nil
		}
		p.mu.Lock()
		if !p.gone {
			return p
		}
		p.mu.Unlock()
	}
}

// pruneLocked forgets the peers without a connection: workers that have
// no link or went away. c.mu must be held.
func (c *Client) pruneLocked() {
	for w, p := range c.peers {
		if p.mu.TryLock() {
			if p.conn == nil && !p.dialing {
				delete(c.peers, w)
				p.gone = true
			}
			p.mu.Unlock()
		}
	}
}

// dial connects to worker's link and says hello; the AEAD seals the
// link's frames.
func (c *Client) dial(ctx context.Context, worker string) (net.Conn, cipher.AEAD, error) {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	addr, token, err := c.lookup(ctx, worker)
	if err != nil {
		return nil, nil, fmt.Errorf("look up link: %w", err)
	}
	if addr == "" {
		return nil, nil, errNoAdvert
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, nil, err
	}
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	key, err := clientHello(conn, token)
	var aead cipher.AEAD
	if err == nil {
		aead, err = newAEAD(key)
	}
	if err != nil {
		conn.Close()
		return nil, nil, fmt.Errorf("hello to %s: %w", addr, err)
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, aead, nil
}

// watch reads conn until it ends (a worker sends nothing after its hello)
// and then forgets it, so the next send dials again. Runs in its own
// goroutine.
func (c *Client) watch(p *peer, conn net.Conn) {
	_, _ = io.Copy(io.Discard, conn)
	conn.Close()
	p.mu.Lock()
	if p.conn == conn {
		p.conn, p.frames = nil, nil
		p.retryAt = time.Now().Add(retryAfter)
	}
	p.mu.Unlock()
}

// Close ends every link.
func (c *Client) Close() {
	if c == nil {
		return
	}
	c.mu.Lock()
	c.closed = true
	peers := c.peers
	c.peers = map[string]*peer{}
	c.mu.Unlock()
	for _, p := range peers {
		p.mu.Lock()
		if p.conn != nil {
			p.conn.Close()
			p.conn, p.frames = nil, nil
		}
		p.mu.Unlock()
	}
}
