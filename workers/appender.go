package workers

import (
	"context"
	"sync"
	"time"

	"github.com/agentgate/agentgate/store"
)

// appendPipelineMax bounds the appends sent in one pipeline.
const appendPipelineMax = 256

// appendSpacing is the least time between the starts of two pipelines
// while fewer than appendSpacingFill appends wait, once the last pipeline
// carried the appends of more than one run: under load the appends of
// many runs share one round trip (each costs the worker, Redis and the
// gateways a wake-up and a few system calls whatever it carries), while
// one busy run (which batches its own lines) and an append after a quiet
// spell go out at once.
const (
	appendSpacing     = time.Millisecond
	appendSpacingFill = 32
)

// appender sends the appends of this worker's runs to Redis together: the
// appends that arrive while one pipeline is in flight go out in the next
// (store.AppendMany), so runs that each print a line at a time cost the
// worker and Redis one round trip for many events instead of one per
// event. There is no goroutine of its own: the caller that finds no
// pipeline in flight sends it (an append alone costs no hand-over to
// another goroutine), and when its own append is answered it passes the
// lead to the oldest waiting caller.
type appender struct {
	st *store.Store

	mu       sync.Mutex
	leading  bool // a caller is sending pipelines
	queue    []*appendCall
	lastSent time.Time // when the last pipeline started
	lastSize int       // how many appends it carried
}

type appendCall struct {
	req  store.AppendReq
	res  store.AppendResult
	sent bool          // res is set
	lead bool          // woken to lead, not answered
	wake chan struct{} // closed when sent or lead is set
}

func newAppender(st *store.Store) *appender { return &appender{st: st} }

// append stores one run's append and returns the seq of its last event.
// It waits for its pipeline, which is bounded by writeTimeout; a run that
// retries after an error repeats nothing (store.AppendBatch).
func (a *appender) append(_ context.Context, req store.AppendReq) (int64, error) {
	c := &appendCall{req: req, wake: make(chan struct{})}
	a.mu.Lock()
	a.queue = append(a.queue, c)
	if a.leading {
		a.mu.Unlock()
		<-c.wake
		if c.sent {
			return c.res.Seq, c.res.Err
		}
		// c.lead: the previous leader is done, and c is the oldest.
	} else {
		a.leading = true
		a.mu.Unlock()
	}
	a.lead(c)
	return c.res.Seq, c.res.Err
}

// lead sends pipelines until own is answered, then passes the lead on.
func (a *appender) lead(own *appendCall) {
	for !own.sent {
		a.mu.Lock()
		if wait := time.Until(a.lastSent.Add(appendSpacing)); wait > 0 && a.lastSize > 1 && len(a.queue) < appendSpacingFill {
			a.mu.Unlock()
			time.Sleep(wait)
			a.mu.Lock()
		}
		a.lastSent = time.Now()
		n := min(len(a.queue), appendPipelineMax)
		a.lastSize = n
		calls := a.queue[:n:n]
		a.queue = a.queue[n:]
		a.mu.Unlock()
		reqs := make([]store.AppendReq, n)
		for i, c := range calls {
			reqs[i] = c.req
		}
		ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
		res := a.st.AppendMany(ctx, reqs)
		cancel()
		for i, c := range calls {
			c.res, c.sent = res[i], true
			if c != own {
				close(c.wake)
			}
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if len(a.queue) == 0 {
		a.leading = false
		return
	}
	next := a.queue[0]
	next.lead = true
	close(next.wake)
}
