package store

// ClockMeasured reports whether the store has an estimate of Redis's clock,
// for tests of deadlines Redis checks.
func (s *Store) ClockMeasured() bool {
	s.clock.mu.Lock()
	defer s.clock.mu.Unlock()
	return !s.clock.at.IsZero()
}
