package app

import "fmt"

// Limit names one of the per-user limits of PROTOCOL §2.
type Limit string

// The limits a store enforces; the gateway's own (sockets, frame rate) are
// checked where the frames arrive.
const (
	LimitRunsPerUser      Limit = "running sessions per user"
	LimitTerminalsPerUser Limit = "open terminals per user"
)

// LimitError says a user is at one of their limits. Its text is the one
// the client gets, and it names the limit.
type LimitError struct {
	Limit Limit
	Max   int
}

func (e *LimitError) Error() string {
	switch e.Limit {
	case LimitRunsPerUser:
		return fmt.Sprintf("Limit reached: at most %d %s; wait for a run to finish or abort one", e.Max, e.Limit)
	case LimitTerminalsPerUser:
		return fmt.Sprintf("Limit reached: at most %d %s; close one first", e.Max, e.Limit)
	}
	return fmt.Sprintf("Limit reached: at most %d %s", e.Max, e.Limit)
}
