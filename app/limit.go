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
		// Past it the least recently watched terminal no socket watches
		// is ended (store.ShellLimit): each one is open in a tab.
		return fmt.Sprintf("Limit reached: at most %d %s, and every one is open in a tab; close one of those tabs first", e.Max, e.Limit)
	}
	return fmt.Sprintf("Limit reached: at most %d %s", e.Max, e.Limit)
}
