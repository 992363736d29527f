package store

import "github.com/redis/go-redis/v9"

// ClockMeasured reports whether the store has an estimate of Redis's clock,
// for tests of deadlines Redis checks.
func (s *Store) ClockMeasured() bool {
	s.clock.mu.Lock()
	defer s.clock.mu.Unlock()
	return !s.clock.at.IsZero()
}

// SetBeforeEvictExit has f run between an eviction's taking of its
// victim's place and its ending of the victim.
func (s *Store) SetBeforeEvictExit(f func(victim string)) { s.beforeEvictExit = f }

// SetSending has f told each channel whose SSUBSCRIBE goes out on a
// cluster, or that is queued for the mover of a stalled master, just
// before.
func (sub *Subscriber) SetSending(f func(channel string)) {
	sub.mu.Lock()
	defer sub.mu.Unlock()
	sub.sending = f
}

// PoolStats are the statistics of the store's connection pool (not the
// heartbeats' own connection).
func (s *Store) PoolStats() *redis.PoolStats { return s.rdb.PoolStats() }
