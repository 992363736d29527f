package store

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
