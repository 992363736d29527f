package link

import (
	"context"
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
	// dialTimeout bounds a dial and its hello: a keystroke waits on it.
	dialTimeout = time.Second
	// writeTimeout bounds one frame's write to a worker that reads nothing.
	writeTimeout = time.Second
	// retryAfter is how long a worker whose link failed, or that has none,
	// is sent its controls through its inbox before the link is tried again.
	retryAfter = 2 * time.Second
	// maxPeers bounds the workers remembered without a link.
	maxPeers = 1024
)

// ErrNoLink is returned by Send when the worker has no usable link: the
// control should go through its inbox.
var ErrNoLink = errors.New("link: no link to the worker")

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
	retryAt time.Time
	buf     []byte
}

// NewClient returns a client that finds workers' links with lookup.
func NewClient(lookup Lookup, log *slog.Logger) *Client {
	if log == nil {
		log = slog.Default()
	}
	return &Client{lookup: lookup, log: log, peers: map[string]*peer{}}
}

// Send writes ctl to worker's link. An error (ErrNoLink or one wrapping
// it) means it was not sent: the caller sends it through the inbox. A nil
// Client has no links.
func (c *Client) Send(ctx context.Context, worker string, ctl store.Control) error {
	if c == nil {
		return ErrNoLink
	}
	if !accepted[ctl.Type] {
		return fmt.Errorf("%w: %s controls take the inbox", ErrNoLink, ctl.Type)
	}
	body, err := json.Marshal(ctl)
	if err != nil || len(body) > MaxFrame {
		return fmt.Errorf("%w: control too large or not encodable", ErrNoLink)
	}
	p := c.peer(worker)
	if p == nil {
		return ErrNoLink
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn == nil {
		if time.Now().Before(p.retryAt) {
			return ErrNoLink
		}
		conn, err := c.dial(ctx, worker)
		if err != nil {
			p.retryAt = time.Now().Add(retryAfter)
			c.log.Debug("no link to worker", "worker", worker, "err", err)
			return fmt.Errorf("%w: %w", ErrNoLink, err)
		}
		p.conn = conn
		go c.watch(p, conn)
	}
	p.buf = appendFrame(p.buf[:0], body)
	_ = p.conn.SetWriteDeadline(time.Now().Add(writeTimeout))
	if _, err := p.conn.Write(p.buf); err != nil {
		// A partial frame ends the link too: the worker drops it unread.
		p.conn.Close()
		p.conn = nil
		p.retryAt = time.Now().Add(retryAfter)
		return fmt.Errorf("%w: write: %w", ErrNoLink, err)
	}
	return nil
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

// pruneLocked forgets the peers without a connection: workers that have
// no link or went away. c.mu must be held.
func (c *Client) pruneLocked() {
	for w, p := range c.peers {
		if p.mu.TryLock() {
			if p.conn == nil {
				delete(c.peers, w)
			}
			p.mu.Unlock()
		}
	}
}

// dial connects to worker's link and says hello.
func (c *Client) dial(ctx context.Context, worker string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	addr, token, err := c.lookup(ctx, worker)
	if err != nil {
		return nil, fmt.Errorf("look up link: %w", err)
	}
	if addr == "" {
		return nil, errors.New("the worker advertises no link")
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, err
	}
	deadline, _ := ctx.Deadline()
	_ = conn.SetDeadline(deadline)
	if _, err := conn.Write([]byte(helloPrefix + token + "\n")); err != nil {
		conn.Close()
		return nil, fmt.Errorf("hello: %w", err)
	}
	var ok [len(helloOK)]byte
	if _, err := io.ReadFull(conn, ok[:]); err != nil || string(ok[:]) != helloOK {
		conn.Close()
		return nil, fmt.Errorf("hello refused by %s: %v", addr, err)
	}
	_ = conn.SetDeadline(time.Time{})
	return conn, nil
}

// watch reads conn until it ends (a worker sends nothing after its hello)
// and then forgets it, so the next send dials again. Runs in its own
// goroutine.
func (c *Client) watch(p *peer, conn net.Conn) {
	_, _ = io.Copy(io.Discard, conn)
	conn.Close()
	p.mu.Lock()
	if p.conn == conn {
		p.conn = nil
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
			p.conn = nil
		}
		p.mu.Unlock()
	}
}
