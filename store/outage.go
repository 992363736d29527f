package store

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// ErrLoading means Redis answers INFO but is still loading its data after a
// restart: every other command gets LOADING.
var ErrLoading = errors.New("store: Redis is loading its data")

// SlowCall is how long a call takes when it waited out an outage (go-redis
// retries through a failover or a restart): what it read may be a promoted
// replica's, stale by the outage (heartbeats expired while no worker could
// write them, watch times older than the last ones written). A caller that
// acts on such a read counts the call as meeting an outage.
const SlowCall = time.Second

// Unavailable reports whether err means Redis did not answer the question
// (it is down, unreachable, still loading its data after a restart, or too
// slow), as opposed to an answer such as "no such session". Callers wait
// and ask again; they never take it for an answer.
func Unavailable(err error) bool {
	if err == nil || errors.Is(err, redis.ErrClosed) {
		return false
	}
	if errors.Is(err, ErrLoading) || errors.Is(err, ErrLate) {
		return true
	}
	var netErr net.Error
	if errors.As(err, &netErr) || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) || errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	var rerr redis.Error
	if errors.As(err, &rerr) {
		msg := rerr.Error()
		for _, p := range []string{"LOADING ", "BUSY ", "MASTERDOWN ", "TRYAGAIN ", "CLUSTERDOWN ", "READONLY "} {
			if strings.HasPrefix(msg, p) {
				return true
			}
		}
		return false
	}
	// go-redis reports a full pool and a connection it gave up on as plain
	// errors.
	return strings.Contains(err.Error(), "connection pool timeout") || strings.Contains(err.Error(), "i/o timeout")
}

// Full reports whether err is Redis refusing a write because it reached
// its maxmemory (an OOM reply: noeviction, or nothing left to evict). It
// answers other commands, reads and deletes among them, and frees memory
// only as keys expire or an operator acts.
func Full(err error) bool { return replyPrefix(err, "OOM ") }

// Refused reports whether err is Redis answering but refusing a write for
// now: it is Full, it cannot persist its data (MISCONF: a background save
// failed, on a full or broken disk, and Redis takes no write at all until
// one succeeds), or it is a replica (READONLY: a failover demoted it, or
// the URL names one; also Unavailable). A writer waits a while and tries
// again (WaitAvailable would not wait: Redis answers PING).
func Refused(err error) bool {
	return Full(err) || replyPrefix(err, "MISCONF ") || replyPrefix(err, "READONLY ")
}

// Retryable reports whether err says only that Redis could not take the
// call now: it did not answer (Unavailable) or refused the write for now
// (Refused). The same call may succeed later (WaitRetry says when to try).
func Retryable(err error) bool { return Unavailable(err) || Refused(err) }

// refusedPause is how long WaitRetry waits after a refused write: Redis
// answers meanwhile, so there is nothing to probe, and it takes writes
// again only once keys expired, a save succeeded or an operator acted.
const refusedPause = time.Second

// WaitRetry waits before a call that failed with err is tried again: until
// Redis answers after an outage (WaitAvailable), a pause when it refused
// the write; at most until ctx ends.
func (s *Store) WaitRetry(ctx context.Context, err error) {
	if !Refused(err) {
		_ = s.WaitAvailable(ctx)
		return
	}
	t := time.NewTimer(refusedPause)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}

// replyPrefix reports whether err is an error reply of Redis that starts
// with prefix.
func replyPrefix(err error, prefix string) bool {
	var rerr redis.Error
	return errors.As(err, &rerr) && strings.HasPrefix(rerr.Error(), prefix)
}

// CheckWritable asks Redis to take a write that changes nothing (the
// delete of a key never set). It fails when Redis takes no writes though it
// answers (Refused: it cannot persist its data; a read-only replica), as
// well as when it does not answer. Redis at its maxmemory takes it: a
// delete cannot grow memory.
func (s *Store) CheckWritable(ctx context.Context) error {
	if err := s.rdb.Del(ctx, s.k.writable()).Err(); err != nil {
		return fmt.Errorf("store: check that Redis takes writes: %w", err)
	}
	return nil
}

// probeInterval bounds the pause between two probes of an unavailable Redis.
const probeInterval = 500 * time.Millisecond

// WaitAvailable blocks until Redis answers commands again (reachable and
// done loading its data) or ctx ends. One probe serves every waiter, so a
// gateway with thousands of sockets waiting for Redis sends it one PING at a
// time, not one per socket.
func (s *Store) WaitAvailable(ctx context.Context) error {
	s.probeMu.Lock()
	if s.probe == nil {
		s.probe = make(chan struct{})
		go s.runProbe(s.probe)
	}
	ready := s.probe
	s.probeMu.Unlock()
	select {
	case <-ready:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("store: wait for Redis: %w", ctx.Err())
	}
}

// runProbe pings until Redis answers (or the Store is closed), then wakes
// the waiters. Runs in its own goroutine, one at a time.
func (s *Store) runProbe(ready chan struct{}) {
	for pause := 50 * time.Millisecond; ; pause = min(pause*2, probeInterval) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		err := s.probeOnce(ctx)
		cancel()
		if err == nil || !Unavailable(err) {
			break
		}
		time.Sleep(pause)
	}
	s.probeMu.Lock()
	s.probe = nil
	s.probeMu.Unlock()
	close(ready)
}

// probeOnce asks Redis whether it answers. On a cluster every master must
// (a failover leaves one shard without a master for a few seconds while
// the others answer): waiters woken by another master would only fail
// again.
func (s *Store) probeOnce(ctx context.Context) error {
	if s.cluster == nil {
		return s.rdb.Ping(ctx).Err()
	}
	err := s.cluster.ForEachMaster(ctx, func(ctx context.Context, c *redis.Client) error {
		return c.Ping(ctx).Err()
	})
	if err != nil {
		s.cluster.ReloadState(ctx)
	}
	return err
}

// ServerIdentity is which Redis process answers, and for how long it has:
// a new RunID means Redis restarted (and may have lost what it had not
// persisted), and keys with a TTL, such as worker heartbeats, may have
// expired while it was down.
type ServerIdentity struct {
	RunID  string
	Uptime time.Duration
	// Loaded says the server may have started with data of an earlier
	// life: it persists to an AOF, or it loaded keys from a snapshot.
	Loaded bool
}

// Identity reads the answering server's run id, uptime and persistence
// (INFO server persistence); a server still loading its data is ErrLoading.
// On a cluster it describes every master at once (clusterIdentity).
//
// A new run id also makes Running look for the jobs of every unclaimed run
// again (requeueChecks): a restart or failover may have lost them.
func (s *Store) Identity(ctx context.Context) (ServerIdentity, error) {
	id, err := s.identity(ctx)
	if err == nil {
		s.requeued.server(id.RunID)
	}
	return id, err
}

func (s *Store) identity(ctx context.Context) (ServerIdentity, error) {
	if s.cluster != nil {
		return s.clusterIdentity(ctx)
	}
	info, err := s.rdb.Info(ctx, "server", "persistence").Result()
	if err != nil {
		return ServerIdentity{}, fmt.Errorf("store: read server info: %w", err)
	}
	return parseIdentity(info)
}

// parseIdentity reads a ServerIdentity out of INFO server persistence.
func parseIdentity(info string) (ServerIdentity, error) {
	var id ServerIdentity
	for _, line := range strings.Split(info, "\n") {
		k, v, ok := strings.Cut(strings.TrimSpace(line), ":")
		if !ok {
			continue
		}
		switch k {
		case "run_id":
			id.RunID = v
		case "uptime_in_seconds":
			n, _ := strconv.ParseInt(v, 10, 64)
			id.Uptime = time.Duration(n) * time.Second
		case "loading":
			if v == "1" {
				return ServerIdentity{}, ErrLoading
			}
		case "aof_enabled", "rdb_last_load_keys_loaded":
			id.Loaded = id.Loaded || (v != "0" && v != "")
		}
	}
	return id, nil
}
