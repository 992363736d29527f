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

// shardSubscribeLocked subscribes channel on the connection of the master
// that owns its slot, opening that connection if needed. sub.mu is held.
func (sub *Subscriber) shardSubscribeLocked(ctx context.Context, channel string, c *channelSub) error {
	var err error
	for attempt := 0; attempt < 2; attempt++ {
		var sh *shard
		if sh, err = sub.shardForLocked(ctx, channel); err != nil {
			sub.s.cluster.ReloadState(ctx)
			continue
		}
		if err = sh.ps.SSubscribe(ctx, channel); err != nil {
			// Never used again: go-redis would subscribe what it holds
			// (this channel too) in one command on its next connection.
			sub.dropShardLocked(sh)
			sub.s.cluster.ReloadState(ctx)
			continue
		}
		c.shard = sh
		if sub.runCtx != nil {
			sub.startShardLocked(sh)
		}
		return nil
	}
	return err
}

// shardForLocked returns the connection to the master of channel's slot.
// sub.mu is held.
func (sub *Subscriber) shardForLocked(ctx context.Context, channel string) (*shard, error) {
	master, err := sub.s.cluster.MasterForKey(ctx, channel)
	if err != nil {
		return nil, err
	}
	addr := master.Options().Addr
	sh := sub.shards[addr]
	if sh == nil {
		// Empty: its connection is made by the first SSUBSCRIBE, to the
		// master of that channel's slot.
		sh = &shard{addr: addr, ps: sub.s.cluster.SSubscribe(context.Background())}
		sub.shards[addr] = sh
	}
	return sh, nil
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
	sub.mu.Lock()
	var moved []string
	for name, c := range sub.channels {
		if c.shard == sh && slotOf(name) == slot {
			c.shard = nil
			moved = append(moved, name)
		}
	}
	ctx := sub.runCtx
	sub.mu.Unlock()
	for _, name := range moved {
		_ = sh.ps.SUnsubscribe(ctx, name)
	}
	if len(moved) > 0 {
		sub.wg.Add(1)
		go func() {
			defer sub.wg.Done()
			sub.moveChannels(ctx, moved, sh.addr, false)
		}()
	}
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
	sub.mu.Unlock()
	go func() { _ = sh.ps.Close() }() // a close may wait on the stalled master
	sub.moveChannels(ctx, moved, sh.addr, true)
}

// shardDropped handles an sunsubscribe Redis sent on its own: the slot of
// channel moved to another master.
func (sub *Subscriber) shardDropped(sh *shard, channel string) {
	sub.mu.Lock()
	c := sub.channels[channel]
	if c == nil || c.shard != sh {
		sub.mu.Unlock()
		return // an unsubscribe of ours
	}
	c.shard = nil
	ctx := sub.runCtx
	sub.mu.Unlock()
	// Forget it on this connection too, so that no later resubscribe
	// sends it there again.
	_ = sh.ps.SUnsubscribe(ctx, channel)
	sub.wg.Add(1)
	go func() {
		defer sub.wg.Done()
		sub.moveChannels(ctx, []string{channel}, sh.addr, false)
	}()
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
// subscribe sent to a stalled master would hold the Subscriber's lock
// until it timed out.
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
	// Whether away answered its last ping, sent at most every
	// stalledProbeEvery (each unanswered one takes a second).
	var probed time.Time
	answered := false
	for len(channels) > 0 && ctx.Err() == nil {
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
			if c == nil || c.shard != nil {
				sub.mu.Unlock()
				continue // unsubscribed, or moved already
			}
			if err := sub.shardSubscribeLocked(ctx, name, c); err != nil {
				left = append(left, name)
			}
			sub.mu.Unlock()
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
	defer sub.mu.Unlock()
	for addr, sh := range sub.shards {
		_ = sh.ps.Close()
		delete(sub.shards, addr)
	}
}

// isMoved reports whether err is a MOVED redirection answered by Redis.
func isMoved(err error) bool {
	var rerr redis.Error
	return errors.As(err, &rerr) && strings.HasPrefix(rerr.Error(), "MOVED ")
}
