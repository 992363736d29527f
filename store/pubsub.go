package store

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// SubscriberHandlers receive what a Subscriber reads. They are called from
// the Subscriber's goroutine and must not block.
type SubscriberHandlers struct {
	// Event receives a session event frame published on a session channel.
	Event func(sessionID string, frame []byte)
	// Resync is called for a session whose subscription was re-established
	// after the connection dropped: events published meanwhile were lost
	// and must be read from the stream.
	Resync func(sessionID string)
	// Broadcast receives what Store.Broadcast published, a frame for one
	// user's chat sockets (ParseBroadcast decodes it).
	Broadcast func(payload []byte)
	// Outage, if set, is called when a pub/sub connection fails: Redis
	// went away, and may come back without what it had (heartbeats
	// included).
	Outage func()
}

// ShellHandlers receive what a Subscriber reads on terminal channels, under
// the same rules as SubscriberHandlers.
type ShellHandlers struct {
	// Message receives a message published on a terminal's channel,
	// decoded; one that does not parse is logged and dropped.
	Message func(key string, m ShellLive)
	// Resync is called for a terminal whose subscription was re-established.
	Resync func(key string)
}

// unsubscribeGrace keeps a channel subscribed for a while after its last
// local watcher left, so that a quick reconnect does not race an UNSUBSCRIBE.
const unsubscribeGrace = 10 * time.Second

// Subscriber multiplexes every session channel a gateway needs over one
// pub/sub connection (never one blocking read per socket). Subscribe returns
// once Redis has confirmed the subscription, so a caller that then reads
// the stream cannot miss an event published in between.
//
// On a Redis Cluster, session and terminal channels are shard channels
// (SSUBSCRIBE): they live on the master that owns their slot, and the
// Subscriber holds one connection per master it needs (pubsub_cluster.go);
// broadcasts stay on one plain SUBSCRIBE connection.
type Subscriber struct {
	s        *Store
	ps       *redis.PubSub // plain SUBSCRIBE: everything, or broadcasts on a cluster
	handlers SubscriberHandlers
	shell    ShellHandlers // set by HandleShell before Run
	groups   shellGroups   // terminal output groups being received

	// mu guards what follows; it is never held while Redis is waited for
	// (a SUBSCRIBE that dials a stalled master waits for its read timeout).
	mu       sync.Mutex
	channels map[string]*channelSub // by channel name
	// leaving are the channels whose UNSUBSCRIBE is being sent, each closed
	// once it was: a Subscribe of one waits for it, so that its SUBSCRIBE
	// follows on the connection.
	leaving map[string]chan struct{}
	// shards are the shard-channel connections of a cluster, by master
	// address; runCtx is Run's context once it started (nil before).
	shards map[string]*shard
	// unanswered are the masters whose shard answered no ping, while their
	// channels wait for a failover (pubsub_cluster.go).
	unanswered map[string]*stalledMaster
	runCtx     context.Context
	wg         sync.WaitGroup
	// sending, set by tests, is told each channel whose SSUBSCRIBE goes
	// out on a cluster, or that is queued for the mover of a stalled
	// master's channels, just before (sub.mu not held).
	sending func(channel string)

	// listening is closed once Redis first confirms the broadcast
	// channel: a frame published for a user before then is not heard.
	listening   chan struct{}
	listenedNow sync.Once
}

type channelSub struct {
	refs      int
	ready     chan struct{} // closed on Redis' confirmation
	confirmed bool
	idle      *time.Timer // pending unsubscribe once refs reached 0
	shard     *shard      // the connection that carries it (cluster)
	// subscribing says a SUBSCRIBE of it is being sent (by its first
	// Subscribe, or a move): nothing else sends one meanwhile.
	subscribing bool
	// failed is closed, with err set, when its first SUBSCRIBE failed: the
	// watchers that joined meanwhile fail too.
	failed chan struct{}
	err    error
}

// NewSubscriber returns a Subscriber; call Run to start reading.
func (s *Store) NewSubscriber(h SubscriberHandlers) *Subscriber {
	return &Subscriber{s: s, ps: s.rdb.Subscribe(context.Background()), handlers: h,
		channels: map[string]*channelSub{}, leaving: map[string]chan struct{}{},
		shards: map[string]*shard{}, unanswered: map[string]*stalledMaster{}, listening: make(chan struct{})}
}

// Listening is closed once Redis has confirmed the Subscriber's first
// subscription, to broadcasts (Run makes it): a gateway is not ready
// before, since what is published meanwhile does not reach it.
func (sub *Subscriber) Listening() <-chan struct{} { return sub.listening }

// Run reads messages until ctx ends, then closes the connections. It
// reconnects (and re-subscribes) by itself after a connection error.
// Runs in its own goroutine.
func (sub *Subscriber) Run(ctx context.Context) error {
	// A blocked receive ignores ctx; closing the connection ends it.
	stop := context.AfterFunc(ctx, func() { _ = sub.ps.Close() })
	defer stop()
	defer sub.ps.Close()
	if sub.s.cluster != nil {
		sub.mu.Lock()
		sub.runCtx = ctx
		for _, c := range sub.channels {
			if c.shard != nil {
				sub.startShardLocked(c.shard) // connected by its SSUBSCRIBE
			}
		}
		sub.mu.Unlock()
		defer sub.wg.Wait()
		defer sub.closeShards()
	}
	if err := sub.ps.Subscribe(ctx, sub.s.k.broadcast()); err != nil && ctx.Err() == nil {
		sub.s.log.Warn("subscribe broadcast", "err", err)
	}
	sub.receive(ctx, sub.ps, nil)
	return nil
}

// pubsubIdle is how long the plain pub/sub connection may be silent before
// it is pinged; shardIdle the same for a shard connection, which is moved
// when a ping goes unanswered that long too: a gateway stays deaf to a
// stalled master's slots for at most twice shardIdle after its replica
// took over (plus the failover itself).
const (
	pubsubIdle = 15 * time.Second
	shardIdle  = 2 * time.Second
)

// receive reads one pub/sub connection until ctx ends. With a shard it
// returns on the first connection error instead: the shard's channels are
// then moved to fresh connections (see shard).
func (sub *Subscriber) receive(ctx context.Context, ps *redis.PubSub, sh *shard) {
	backoff := 50 * time.Millisecond
	idle := pubsubIdle
	if sh != nil {
		idle = shardIdle
	}
	pinged := false // a ping went out and nothing came since
	for ctx.Err() == nil {
		msg, err := ps.ReceiveTimeout(ctx, idle)
		if err != nil {
			if ctx.Err() != nil || errors.Is(err, redis.ErrClosed) && sh != nil {
				return
			}
			var netErr net.Error
			if errors.As(err, &netErr) && netErr.Timeout() {
				if pinged && sh != nil {
					// A master that holds the connection open and answers
					// nothing is stalled (a paused VM, a hung disk); its
					// replica may have been promoted meanwhile, and the
					// channels' messages go there. Its kernel keeps the
					// connection alive, so no error would ever come.
					sub.s.log.Warn("pub/sub shard answers no ping: moving its channels", "addr", sh.addr)
					sub.shardUnanswered(ctx, sh)
					return
				}
				// Idle: a ping makes a dead connection show itself.
				_ = ps.Ping(ctx)
				pinged = true
				continue
			}
			if sh != nil && isMoved(err) {
				// An answer, not a broken connection.
				sub.shardMoved(sh, err)
				continue
			}
			sub.s.log.Warn("pub/sub receive", "err", err)
			if sub.handlers.Outage != nil {
				sub.handlers.Outage()
			}
			if sh != nil {
				sub.shardFailed(ctx, sh)
				return
			}
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, 2*time.Second)
			continue
		}
		backoff = 50 * time.Millisecond
		pinged = false
		switch m := msg.(type) {
		case *redis.Message:
			sub.dispatch(m.Channel, m.Payload)
		case *redis.Subscription:
			switch m.Kind {
			case "subscribe", "ssubscribe":
				sub.confirmed(m.Channel)
			case "sunsubscribe":
				if sh != nil {
					sub.shardDropped(sh, m.Channel)
				}
			}
		}
	}
}

func (sub *Subscriber) dispatch(channel, payload string) {
	if channel == sub.s.k.broadcast() {
		if sub.handlers.Broadcast != nil {
			sub.handlers.Broadcast([]byte(payload))
		}
		return
	}
	if id, ok := sub.s.k.sessionOfLive(channel); ok && sub.handlers.Event != nil {
		sub.s.floors.note(id, frameSeq(payload))
		sub.handlers.Event(id, []byte(payload))
		return
	}
	if key, ok := sub.s.k.shellOfLive(channel); ok && sub.shell.Message != nil {
		if m, ok := sub.groups.decode(channel, payload); ok {
			sub.shell.Message(key, m)
		} else if _, _, _, header := parseShellGroup(payload); !header {
			sub.s.log.Warn("unreadable terminal message", "channel", channel, "payload", payload[:min(len(payload), 64)])
		}
	}
}

// HandleShell sets the receivers of terminal channels; call it before Run.
func (sub *Subscriber) HandleShell(h ShellHandlers) { sub.shell = h }

func (sub *Subscriber) confirmed(channel string) {
	if channel == sub.s.k.broadcast() {
		sub.listenedNow.Do(func() { close(sub.listening) })
		return
	}
	// Nothing of a group cut by a lost connection follows a confirmation.
	sub.groups.reset(channel)
	sub.mu.Lock()
	c := sub.channels[channel]
	resync := false
	if c != nil {
		if c.confirmed {
			resync = true
		} else {
			c.confirmed = true
			close(c.ready)
		}
	}
	sub.mu.Unlock()
	if resync && sub.handlers.Resync != nil {
		if id, ok := sub.s.k.sessionOfLive(channel); ok {
			sub.handlers.Resync(id)
		}
	}
	if resync && sub.shell.Resync != nil {
		if key, ok := sub.s.k.shellOfLive(channel); ok {
			sub.shell.Resync(key)
		}
	}
}

// Subscribe adds a watcher of a session's events and returns once the
// channel is subscribed. Every Subscribe needs one Unsubscribe.
func (sub *Subscriber) Subscribe(ctx context.Context, sessionID string) error {
	return sub.subscribe(ctx, sub.s.k.live(sessionID), sessionID)
}

// SubscribeShell is Subscribe for a terminal's channel.
func (sub *Subscriber) SubscribeShell(ctx context.Context, key string) error {
	return sub.subscribe(ctx, sub.s.k.shellLive(key), key)
}

// UnsubscribeShell is Unsubscribe for a terminal's channel.
func (sub *Subscriber) UnsubscribeShell(key string) { sub.unsubscribe(sub.s.k.shellLive(key)) }

func (sub *Subscriber) subscribe(ctx context.Context, channel, sessionID string) error {
	sub.mu.Lock()
	for done := sub.leaving[channel]; done != nil; done = sub.leaving[channel] {
		sub.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return fmt.Errorf("store: subscribe %s: %w", sessionID, ctx.Err())
		}
		sub.mu.Lock()
	}
	c := sub.channels[channel]
	first := c == nil
	if first {
		c = &channelSub{ready: make(chan struct{}), failed: make(chan struct{}), subscribing: true}
		sub.channels[channel] = c
	}
	c.refs++
	if c.idle != nil {
		c.idle.Stop()
		c.idle = nil
	}
	sub.mu.Unlock()

	if first {
		// Sent without sub.mu: Subscribes of other channels, confirmations
		// and moves go on meanwhile; one of this channel joins c and waits.
		var err error
		if sub.s.cluster != nil {
			err = sub.shardSubscribe(ctx, channel, c, true, "")
		} else {
			err = sub.plainSubscribe(ctx, channel, c)
		}
		if err != nil {
			return fmt.Errorf("store: subscribe %s: %w", sessionID, err)
		}
	}
	select {
	case <-c.ready:
		return nil
	case <-c.failed:
		return fmt.Errorf("store: subscribe %s: %w", sessionID, c.err)
	case <-ctx.Done():
		sub.release(channel, c)
		return fmt.Errorf("store: subscribe %s: %w", sessionID, ctx.Err())
	}
}

// plainSubscribe sends the SUBSCRIBE of c, a new channel, on the plain
// pub/sub connection. sub.mu is not held.
func (sub *Subscriber) plainSubscribe(ctx context.Context, channel string, c *channelSub) error {
	err := sub.ps.Subscribe(ctx, channel)
	if err != nil {
		// go-redis keeps a channel whose SUBSCRIBE failed and subscribes
		// it again on every new connection; nothing would ever unsubscribe
		// it. Its UNSUBSCRIBE is tried briefly: the connection is in
		// trouble. c stays in sub.channels until then, so that a Subscribe
		// of the channel meanwhile does not send a SUBSCRIBE before it.
		uctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		_ = sub.ps.Unsubscribe(uctx, channel)
		cancel()
	}
	sub.mu.Lock()
	defer sub.mu.Unlock()
	c.subscribing = false
	if err != nil {
		sub.failLocked(channel, c, err)
	}
	return err
}

// failLocked ends c, whose first SUBSCRIBE failed: it leaves sub.channels,
// and the watchers that joined it meanwhile fail too. sub.mu is held.
func (sub *Subscriber) failLocked(channel string, c *channelSub, err error) {
	if sub.channels[channel] == c {
		delete(sub.channels, channel)
	}
	if c.idle != nil {
		c.idle.Stop()
		c.idle = nil
	}
	c.err = err
	close(c.failed)
}

// Unsubscribe removes a watcher added by Subscribe. The channel itself is
// unsubscribed a little later if no watcher came back meanwhile.
func (sub *Subscriber) Unsubscribe(sessionID string) { sub.unsubscribe(sub.s.k.live(sessionID)) }

func (sub *Subscriber) unsubscribe(channel string) {
	sub.mu.Lock()
	c := sub.channels[channel]
	sub.mu.Unlock()
	if c != nil {
		sub.release(channel, c)
	}
}

// release removes a watcher of c, channel's subscription, unless c is gone
// (its SUBSCRIBE failed: its watchers were told).
func (sub *Subscriber) release(channel string, c *channelSub) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	if sub.channels[channel] != c || c.refs == 0 {
		return
	}
	c.refs--
	if c.refs > 0 {
		return
	}
	c.idle = time.AfterFunc(unsubscribeGrace, func() { sub.idleEnded(channel, c) })
}

// idleEnded unsubscribes c, channel's subscription, if no watcher came back
// during its grace.
func (sub *Subscriber) idleEnded(channel string, c *channelSub) {
	sub.mu.Lock()
	if sub.channels[channel] != c || c.refs > 0 {
		sub.mu.Unlock()
		return
	}
	if c.subscribing {
		// A move is sending its SSUBSCRIBE: looked at again later.
		c.idle = time.AfterFunc(unsubscribeGrace, func() { sub.idleEnded(channel, c) })
		sub.mu.Unlock()
		return
	}
	delete(sub.channels, channel)
	c.idle = nil
	if sub.s.cluster != nil && c.shard == nil {
		sub.mu.Unlock() // subscribed nowhere: waiting to be moved
		return
	}
	sub.leaveLocked(channel, c.shard)
}

// leaveLocked sends the UNSUBSCRIBE of channel, out of sub.channels, on the
// connection that carried it: sh's, or the plain one if sh is nil. sub.mu
// is held, and released: a Subscribe of channel meanwhile waits for the
// UNSUBSCRIBE to be sent before it sends its SUBSCRIBE.
func (sub *Subscriber) leaveLocked(channel string, sh *shard) {
	done := make(chan struct{})
	sub.leaving[channel] = done
	sub.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	if sh != nil {
		_ = sh.ps.SUnsubscribe(ctx, channel)
	} else {
		_ = sub.ps.Unsubscribe(ctx, channel)
	}
	cancel()
	sub.mu.Lock()
	if sub.leaving[channel] == done {
		delete(sub.leaving, channel)
	}
	sub.mu.Unlock()
	close(done)
}
