package workers

import "log/slog"

// streak says a failure that repeats (a loop that meets Redis away at
// every try) once when it begins and once when it ends, not at every try.
// One loop owns it.
type streak struct{ failing bool }

// failed logs msg with err if this begins a streak.
func (s *streak) failed(log *slog.Logger, msg string, err error) {
	if !s.failing {
		log.Warn(msg, "err", err)
	}
	s.failing = true
}

// ok logs msg if this ends a streak.
func (s *streak) ok(log *slog.Logger, msg string) {
	if s.failing {
		log.Info(msg)
	}
	s.failing = false
}
