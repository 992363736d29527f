package workers

import (
	"context"
	"time"

	"github.com/agentgate/agentgate/store"
)

// refusedPause is how long a write that Redis refused (full, or unable to
// persist) waits before it is tried again: Redis answers meanwhile, so
// there is nothing to probe, and it takes writes again only once keys
// expired, a save succeeded or an operator acted.
const refusedPause = time.Second

// waitable reports whether a write that failed with err is to be tried
// again later rather than given up: Redis did not answer, or refused it
// for now.
func waitable(err error) bool { return store.Unavailable(err) || store.Refused(err) }

// waitStore waits before a write that failed with err is tried again: until
// Redis answers after an outage, a pause when it refused the write; at
// most until ctx ends.
func waitStore(ctx context.Context, st *store.Store, err error) {
	if !store.Refused(err) {
		_ = st.WaitAvailable(ctx)
		return
	}
	t := time.NewTimer(refusedPause)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
	}
}
