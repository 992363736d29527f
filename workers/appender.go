package workers

import (
	"context"
	"sync"
	"sync/atomic"

	"github.com/agentgate/agentgate/store"
)

// appendPipelineMax bounds the appends sent in one pipeline.
const appendPipelineMax = 256

// appender sends the appends of this worker's runs to Redis together: the
// appends that arrive while one pipeline is in flight go out in the next
// (store.AppendMany), so runs that each print a line at a time cost the
// worker and Redis one round trip for many events instead of one per
// event. An append that finds nothing in flight goes out at once: it waits
// for no timer.
type appender struct {
	st      *store.Store
	running atomic.Bool
	wake    chan struct{}

	mu    sync.Mutex
	queue []*appendCall
}

type appendCall struct {
	req  store.AppendReq
	res  store.AppendResult
	done chan struct{}
}

func newAppender(st *store.Store) *appender {
	return &appender{st: st, wake: make(chan struct{}, 1)}
}

// append stores one run's append and returns the seq of its last event. If
// ctx ends first the append may still be sent: its batch number (see
// store.AppendBatch) makes a retry safe. Without run, it appends alone.
func (a *appender) append(ctx context.Context, req store.AppendReq) (int64, error) {
	if !a.running.Load() {
		return a.st.AppendBatch(ctx, req.Run, req.Batch, req.Events, req.Set)
	}
	c := &appendCall{req: req, done: make(chan struct{})}
	a.mu.Lock()
	a.queue = append(a.queue, c)
	a.mu.Unlock()
	select {
	case a.wake <- struct{}{}:
	default:
	}
	select {
	case <-c.done:
		return c.res.Seq, c.res.Err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// run sends queued appends until ctx ends, then answers what is left
// with ctx's error. Runs in its own goroutine.
func (a *appender) run(ctx context.Context) {
	a.running.Store(true)
	defer a.running.Store(false)
	for {
		select {
		case <-ctx.Done():
			a.mu.Lock()
			left := a.queue
			a.queue = nil
			a.mu.Unlock()
			for _, c := range left {
				c.res.Err = ctx.Err()
				close(c.done)
			}
			return
		case <-a.wake:
		}
		for {
			a.mu.Lock()
			n := min(len(a.queue), appendPipelineMax)
			calls := a.queue[:n:n]
			a.queue = a.queue[n:]
			a.mu.Unlock()
			if n == 0 {
				break
			}
			reqs := make([]store.AppendReq, n)
			for i, c := range calls {
				reqs[i] = c.req
			}
			sendCtx, cancel := context.WithTimeout(context.Background(), writeTimeout)
			res := a.st.AppendMany(sendCtx, reqs)
			cancel()
			for i, c := range calls {
				c.res = res[i]
				close(c.done)
			}
		}
	}
}
