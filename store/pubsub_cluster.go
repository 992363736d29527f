package store

import (
	"context"
	"errors"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// shard is a Subscriber's connection to one master of a Redis Cluster,
// carrying the shard channels (SSUBSCRIBE) of the slots that master owns.
//
// go-redis re-subscribes a broken pub/sub connection by itself, but with
// one SSUBSCRIBE naming every channel, which a cluster refuses (CROSSSLOT)
// as soon as the channels lie in two slots. So a shard never reconnects:
// on a connection error (its master died, a replica is being promoted) it
// is closed, the slot map is read again, and each of its channels is
// subscribed anew, one command each, on the connection of the master that
// owns it now; each confirmation reports a Resync, so the gateway reads
// from the stream whatever was published meanwhile. A channel whose slot
// moved to another master (resharding) gets an sunsubscribe from Redis and
// moves the same way.
type shard struct {
	addr string
	ps   *redis.PubSub
	// started says its reader runs; it starts once the first SSUBSCRIBE
	// made the connection (a read before that would connect to any node).
	started bool
}

// errShardDropped: the shard connection an SSUBSCRIBE went out on was
// dropped before the answer was recorded (its master failed meanwhile).
var errShardDropped = errors.New("store: shard connection dropped")

// stalledMaster is a master whose shard connection answered no ping, while
// the mover of its channels (moveChannels) waits for its replica to take
// over. A channel the slot map still gives it is not subscribed there
// meanwhile, which would dial it and wait for the read timeout: it is
// queued for that mover instead.
type stalledMaster struct{ queued []string }

// shardSubscribe subscribes c, channel's subscription, on the connection of
// the master that owns its slot, opening that connection if needed. The
// caller set c.subscribing; it is cleared here. sub.mu is not held: it is
// taken to pick the connection and to record the outcome, never while
// Redis is waited for (a new connection to a stalled master waits for its
// handshake until the read timeout). A channel of a master whose shard
// answered no ping is queued for the mover of its channels instead, unless
// that mover is the caller (stalled names that master). With first (c's
// first Subscribe), a failure fails c's watchers too.
func (sub *Subscriber) shardSubscribe(ctx context.Context, channel string, c *channelSub, first bool, stalled string) error {
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		if attempt > 0 {
			sub.s.cluster.ReloadState(ctx) // in the background
		}
		var master *redis.Client
		if master, err = sub.s.cluster.MasterForKey(ctx, channel); err != nil {
			continue
		}
		addr := master.Options().Addr
		sub.mu.Lock()
		if sub.channels[channel] != c {
			c.subscribing = false
			sub.mu.Unlock()
			return nil // unsubscribed meanwhile
		}
		sending := sub.sending
		if st := sub.unanswered[addr]; st != nil && addr != stalled {
			st.queued = append(st.queued, channel)
			c.subscribing = false
			sub.mu.Unlock()
			if sending != nil {
				sending(channel)
			}
			return nil
		}
		sh := sub.shards[addr]
		if sh == nil {
			// Empty: its connection is made by the first SSUBSCRIBE, to the
			// master of that channel's slot.
			sh = &shard{addr: addr, ps: sub.s.cluster.SSubscribe(context.Background())}
			sub.shards[addr] = sh
		}
		sub.mu.Unlock()

		if sending != nil {
			sending(channel)
		}
		err = sh.ps.SSubscribe(ctx, channel)

		sub.mu.Lock()
		current := sub.shards[addr] == sh
		switch {
		case err != nil:
			if current {
				// Never used again: go-redis would subscribe what it holds
				// (this channel too) in one command on its next connection.
				sub.dropShardLocked(sh)
			}
		case !current:
			// Closed meanwhile: the confirmation may never come.
			err = errShardDropped
		case sub.channels[channel] != c:
			c.subscribing = false
			sub.leaveLocked(channel, sh)
			return nil
		default:
			c.shard = sh
			c.subscribing = false
			if sub.runCtx != nil {
				sub.startShardLocked(sh)
			}
			sub.mu.Unlock()
			return nil
		}
		sub.mu.Unlock()
	}
	sub.s.cluster.ReloadState(ctx)
	sub.mu.Lock()
	c.subscribing = false
	if first {
		sub.failLocked(channel, c, err)
	}
	sub.mu.Unlock()
	return err
}

// dropShardLocked closes a shard and moves the channels it carried to the
// masters that own them. sub.mu is held.
func (sub *Subscriber) dropShardLocked(sh *shard) {
	moved := sub.forgetShardLocked(sh)
	go func() { _ = sh.ps.Close() }()
	if len(moved) > 0 && sub.runCtx != nil {
		ctx := sub.runCtx
		sub.wg.Add(1)
		go func() {
			defer sub.wg.Done()
			sub.moveChannels(ctx, moved, "", false)
		}()
	}
}

// forgetShardLocked takes a shard out of the map and returns the channels
// it carried, now without a shard. sub.mu is held.
func (sub *Subscriber) forgetShardLocked(sh *shard) []string {
	if sub.shards[sh.addr] == sh {
		delete(sub.shards, sh.addr)
	}
	var moved []string
	for name, c := range sub.channels {
		if c.shard == sh {
			c.shard = nil
			moved = append(moved, name)
		}
	}
	return moved
}

// shardMoved handles a MOVED answer on a shard connection: an SSUBSCRIBE
// sent there (from a slot map not yet reloaded) names a slot that master
// no longer owns. The channels of that slot move; the answer to the
// SUNSUBSCRIBE of a channel that moved already concerns none.
func (sub *Subscriber) shardMoved(sh *shard, err error) {
	f := strings.Fields(err.Error())
	if len(f) < 2 {
		return
	}
	slot, perr := strconv.Atoi(f[1])
	if perr != nil {
		return
	}
	sub.moveOff(sh, func() []string {
		var names []string
		for name := range sub.channels {
			if slotOf(name) == slot {
				names = append(names, name)
			}
		}
		return names
	})
}

// moveOff moves channels off sh, whose master no longer owns their slots:
// of the names pick gives (called under sub.mu), those subscribed on sh
// and not being moved already. Each is unsubscribed there, so that no
// later resubscribe of sh's sends it again, then subscribed again where
// its slot is now (moveChannels).
func (sub *Subscriber) moveOff(sh *shard, pick func() []string) {
	sub.mu.Lock()
	var moved []string
	var subs []*channelSub
	for _, name := range pick() {
		if c := sub.channels[name]; c != nil && c.shard == sh && !c.subscribing {
			c.shard = nil
			c.subscribing = true // until its SUNSUBSCRIBE is sent
			moved = append(moved, name)
			subs = append(subs, c)
		}
	}
	ctx := sub.runCtx
	sub.mu.Unlock()
	if len(moved) == 0 {
		return
	}
	for _, name := range moved {
		_ = sh.ps.SUnsubscribe(ctx, name)
	}
	sub.mu.Lock()
	for _, c := range subs {
		c.subscribing = false
	}
	sub.mu.Unlock()
	sub.wg.Add(1)
	go func() {
		defer sub.wg.Done()
		sub.moveChannels(ctx, moved, sh.addr, false)
	}()
}

// slotOf is the Redis Cluster hash slot of key: CRC16 (XMODEM) of its hash
// tag, or of the whole key when it has none, modulo 16384.
func slotOf(key string) int {
	if i := strings.IndexByte(key, '{'); i >= 0 {
		if j := strings.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	var crc uint16
	for i := 0; i < len(key); i++ {
		crc ^= uint16(key[i]) << 8
		for range 8 {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return int(crc) % 16384
}

// startShardLocked starts reading a shard's connection. sub.mu is held.
func (sub *Subscriber) startShardLocked(sh *shard) {
	if sh.started {
		return
	}
	sh.started = true
	ctx := sub.runCtx
	sub.wg.Add(1)
	go func() {
		defer sub.wg.Done()
		stop := context.AfterFunc(ctx, func() { _ = sh.ps.Close() })
		defer stop()
		sub.receive(ctx, sh.ps, sh)
	}()
}

// shardFailed closes a shard whose connection broke and moves its
// channels to the masters that own them now. Runs in the shard's goroutine.
func (sub *Subscriber) shardFailed(ctx context.Context, sh *shard) {
	// Out of the map first, so that no Subscribe picks it meanwhile.
	sub.mu.Lock()
	moved := sub.forgetShardLocked(sh)
	sub.mu.Unlock()
	_ = sh.ps.Close()
	sub.moveChannels(ctx, moved, "", false)
}

// shardUnanswered closes a shard whose master answers no ping and moves
// its channels to the masters that own them once the slot map no longer
// names it (a failover of a stalled master takes cluster-node-timeout and
// an election). Runs in the shard's goroutine.
func (sub *Subscriber) shardUnanswered(ctx context.Context, sh *shard) {
	sub.mu.Lock()
	moved := sub.forgetShardLocked(sh)
	st := sub.unanswered[sh.addr]
	if st != nil {
		// Its channels' mover still runs (it made the shard again, the
		// master having answered a ping): it takes these too.
		st.queued = append(st.queued, moved...)
	} else {
		sub.unanswered[sh.addr] = &stalledMaster{}
	}
	sub.mu.Unlock()
	go func() { _ = sh.ps.Close() }() // a close may wait on the stalled master
	if st == nil {
		sub.moveChannels(ctx, moved, sh.addr, true)
	}
}

// shardDropped handles an sunsubscribe Redis sent on its own: the slot of
// channel moved to another master. One of ours concerns a channel no
// longer on sh, or being moved already.
func (sub *Subscriber) shardDropped(sh *shard, channel string) {
	sub.moveOff(sh, func() []string { return []string{channel} })
}

// moveChannels subscribes channels again on the masters that own them,
// reading the slot map again and retrying until each is subscribed or ctx
// ends (a failover takes seconds). A channel Redis dropped from the master
// at away (its slot moved) waits, for a while, until the slot map no longer
// names that master: go-redis reloads its map in the background, and a
// channel subscribed there again would only be refused (MOVED). With
// stalled, away answered nothing: its channels wait longer, for its
// replica's promotion (cluster-node-timeout and an election), unless it
// answers a ping again (it was only slow, and keeps its slots); a
// subscribe sent to a stalled master would wait for the read timeout. The
// channels subscribed meanwhile whose slot the map gives away are queued
// for this mover (sub.unanswered), which ends once every one is
// subscribed.
func (sub *Subscriber) moveChannels(ctx context.Context, channels []string, away string, stalled bool) {
	backoff := 20 * time.Millisecond
	wait := 10 * time.Second
	if stalled {
		wait = time.Minute
	}
	patience := time.Now().Add(wait)
	maxBackoff := time.Second
	if stalled {
		maxBackoff = 250 * time.Millisecond // the promotion is near
	}
	var st *stalledMaster
	if stalled {
		sub.mu.Lock()
		st = sub.unanswered[away]
		sub.mu.Unlock()
		defer func() {
			sub.mu.Lock()
			if sub.unanswered[away] == st {
				delete(sub.unanswered, away)
			}
			sub.mu.Unlock()
		}()
	}
	// Whether away answered its last ping, sent at most every
	// stalledProbeEvery (each unanswered one takes a second).
	var probed time.Time
	answered := false
	for ctx.Err() == nil {
		if st != nil {
			sub.mu.Lock()
			channels = append(channels, st.queued...)
			st.queued = nil
			if len(channels) == 0 {
				// Under the lock: nothing is queued after it.
				delete(sub.unanswered, away)
			}
			sub.mu.Unlock()
		}
		if len(channels) == 0 {
			return
		}
		sub.s.cluster.ReloadState(ctx)
		var left []string
		for _, name := range channels {
			if away != "" && time.Now().Before(patience) {
				m, err := sub.s.cluster.MasterForKey(ctx, name)
				if err != nil {
					left = append(left, name)
					continue
				}
				if m.Options().Addr == away {
					if stalled && time.Since(probed) >= stalledProbeEvery {
						probed, answered = time.Now(), sub.answers(ctx, m)
					}
					if !answered {
						left = append(left, name)
						continue
					}
				}
			}
			sub.mu.Lock()
			c := sub.channels[name]
			if c == nil || c.shard != nil || c.subscribing {
				sub.mu.Unlock()
				continue // unsubscribed, moved already, or being subscribed
			}
			c.subscribing = true
			sub.mu.Unlock()
			var self string
			if stalled {
				self = away
			}
			if err := sub.shardSubscribe(ctx, name, c, false, self); err != nil {
				left = append(left, name)
			}
		}
		channels = left
		if len(left) > 0 {
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, maxBackoff)
		}
	}
}

// stalledProbeEvery spaces the pings of a master that answered none.
const stalledProbeEvery = 3 * time.Second

// answers reports whether a master answers a ping within a second. The
// ping is not waited for past that: go-redis reads its reply until its own
// read timeout (5 s), whatever the context says.
func (sub *Subscriber) answers(ctx context.Context, m *redis.Client) bool {
	ctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	answer := make(chan error, 1)
	go func() { answer <- m.Ping(ctx).Err() }()
	select {
	case err := <-answer:
		return err == nil
	case <-ctx.Done():
		return false
	}
}

// closeShards closes every shard connection (Run is ending).
func (sub *Subscriber) closeShards() {
	sub.mu.Lock()
	var closing []*shard
	for addr, sh := range sub.shards {
		closing = append(closing, sh)
		delete(sub.shards, addr)
	}
	sub.mu.Unlock()
	// Without sub.mu: a close waits for an SSUBSCRIBE in flight.
	for _, sh := range closing {
		_ = sh.ps.Close()
	}
}

// isMoved reports whether err is a MOVED redirection answered by Redis.
func isMoved(err error) bool {
	var rerr redis.Error
	return errors.As(err, &rerr) && strings.HasPrefix(rerr.Error(), "MOVED ")
}
