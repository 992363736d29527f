package workers

import (
	"context"
	"errors"
	"io"
	"sync"
	"time"

	"github.com/agentgate/agentgate/app"
)

// permissions decides the tool requests of one run: by the run's rules
// when they say, else by asking the user through the session and waiting
// for an answer that any gateway forwards to this worker's inbox.
type permissions struct {
	r       *run
	prov    Conversational
	in      *providerInput
	timeout time.Duration

	mu         sync.Mutex
	rules      app.ToolRules
	pending    map[string]*pendingAsk // by the request id the user sees
	byProvider map[string]string      // provider's request id -> user's
	inputBytes int                    // of the pending requests (askBytes)
	closed     bool
}

// maxPendingAsks bounds the requests of one run that wait for the user:
// each is held here and in Redis, and every status reply lists them all.
// The reference frontend shows them one at a time; past it, a request is
// denied at once.
const maxPendingAsks = 64

// The bytes of tool input that may wait for the user: each request's input
// is held here, in Redis and in every status reply, and a CLI's line (its
// whole input) may be 16 MiB. Past either bound a request is denied at once.
const (
	maxAskInput     = 1 << 20 // one request's
	maxPendingInput = 4 << 20 // all of a run's pending requests'
)

// maxAskName bounds a request's tool name and the provider's id for it:
// both are held and listed with its input, and no real tool or id comes
// near it (a line a user's process forged into the CLI's output could
// carry megabytes in either).
const maxAskName = 256

// askBytes is what a request holds of maxPendingInput.
func askBytes(a ToolAsk) int { return len(a.Input) + len(a.Tool) + len(a.ID) }

type pendingAsk struct {
	id    string
	ask   ToolAsk
	req   app.PendingPermission // as recorded in Redis
	timer *time.Timer           // nil for questions to the user, which never time out
}

func newPermissions(r *run, prov Conversational, in *providerInput, timeout time.Duration) *permissions {
	if timeout <= 0 {
		timeout = app.DefaultPermissionTimeout
	}
	return &permissions{
		r: r, prov: prov, in: in, timeout: timeout,
		rules:   app.RulesOf(r.job.Options),
		pending: map[string]*pendingAsk{}, byProvider: map[string]string{},
	}
}

// ask handles one request of the provider. It is called from the output
// pump, after the events before it were appended, so the
// permission_request follows the tool_use it is about.
func (p *permissions) ask(a ToolAsk) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return
	}
	switch {
	case len(a.ID) > maxAskName:
		// No answer: it would carry the id back.
		p.mu.Unlock()
		return
	case len(a.Tool) > maxAskName:
		p.mu.Unlock()
		p.in.write(p.prov.Answer(a, false, nil, app.DenyNameTooLong))
		return
	}
	decision := p.rules.Decide(a.Tool, a.Input)
	if decision != app.Ask {
		p.mu.Unlock()
		if decision == app.Allow {
			p.in.write(p.prov.Answer(a, true, a.Input, ""))
		} else {
			p.in.write(p.prov.Answer(a, false, nil, app.DenyBySetting))
		}
		return
	}
	if _, asked := p.byProvider[a.ID]; asked {
		// The same request again: the first one's answer serves both.
		p.mu.Unlock()
		return
	}
	if len(a.Input) > maxAskInput {
		p.mu.Unlock()
		p.in.write(p.prov.Answer(a, false, nil, app.DenyTooLarge))
		return
	}
	if len(p.pending) >= maxPendingAsks || p.inputBytes+askBytes(a) > maxPendingInput {
		p.mu.Unlock()
		p.in.write(p.prov.Answer(a, false, nil, app.DenyTooMany))
		return
	}
	// The id users see is minted here, not the provider's: provider ids
	// are unique only within one process, and an answer is routed by id
	// across every session (ag:permissions).
	id := app.NewID()
	req := app.PendingPermission{RequestID: id, ToolName: a.Tool, Input: a.Input, ReceivedAt: time.Now().UnixMilli()}
	pa := &pendingAsk{id: id, ask: a, req: req}
	// Registered before the request is visible, so a quick answer finds it.
	p.pending[id] = pa
	p.byProvider[a.ID] = id
	p.inputBytes += askBytes(a)
	if !app.InteractiveTool(a.Tool) {
		pa.timer = time.AfterFunc(p.timeout, func() { p.expire(id) })
	}
	p.mu.Unlock()

	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	err := p.r.w.st.AskPermission(ctx, p.r.ref, req)
	cancel()
	if err != nil {
		// Nobody can answer a request that was not recorded: deny it
		// rather than leave the tool waiting.
		if p.take(id) != nil {
			p.in.write(p.prov.Answer(a, false, nil, app.DenyCancelled))
		}
		if errors.Is(err, app.ErrStaleRun) {
			p.r.stop(stopStale)
			return
		}
		p.r.log.Warn("record permission request", "tool", a.Tool, "err", err)
	}
}

// held returns the requests waiting for the user, as recorded in Redis.
func (p *permissions) held() []app.PendingPermission {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := make([]app.PendingPermission, 0, len(p.pending))
	for _, pa := range p.pending {
		out = append(out, pa.req)
	}
	return out
}

// askAgain records again requests Redis no longer holds while the CLI
// still waits on them (a restart without its last writes, a failover):
// otherwise no tab shows them and no answer reaches them until they time
// out, and a question to the user never does. A request answered meanwhile
// is settled again, so that the copy written here does not stay.
func (p *permissions) askAgain(ctx context.Context, lost []app.PendingPermission) {
	for _, req := range lost {
		p.mu.Lock()
		_, waiting := p.pending[req.RequestID]
		p.mu.Unlock()
		if !waiting {
			// Answered since held() read it: the answer's settle is what
			// Redis lacked, not the request.
			continue
		}
		if err := p.r.w.st.AskPermission(ctx, p.r.ref, req); err != nil {
			p.r.log.Warn("record permission request again", "request", req.RequestID, "err", err)
			continue
		}
		p.r.log.Warn("permission request lost by Redis recorded again", "request", req.RequestID)
		p.mu.Lock()
		_, still := p.pending[req.RequestID]
		p.mu.Unlock()
		if !still {
			p.settle(req.RequestID, app.PermissionCancelled)
		}
	}
}

// answer applies a user's answer. An unknown or already settled request id
// is ignored, as in the reference: two tabs may answer the same request.
func (p *permissions) answer(ans app.PermissionAnswer) {
	pa := p.take(ans.RequestID)
	if pa == nil {
		// Settled here already, or never recorded here: if Redis still
		// shows it (its settle failed, or a stalled Redis recorded it
		// after this worker gave up on it), every tab keeps a prompt no
		// answer reaches. Cancelled now, which changes nothing if Redis
		// holds no such request.
		p.settle(ans.RequestID, app.PermissionCancelled)
		return
	}
	if ans.Allow {
		if ans.RememberEntry != "" {
			p.mu.Lock()
			p.rules.Remember(ans.RememberEntry)
			p.mu.Unlock()
		}
		p.in.write(p.prov.Answer(pa.ask, true, ans.UpdatedInput, ""))
	} else {
		msg := ans.Message
		if msg == "" {
			msg = app.DenyByUser
		}
		p.in.write(p.prov.Answer(pa.ask, false, nil, msg))
	}
	p.settle(pa.id, app.PermissionAnswered)
}

// expire denies a request nobody answered in time.
func (p *permissions) expire(id string) {
	pa := p.take(id)
	if pa == nil {
		return
	}
	p.in.write(p.prov.Answer(pa.ask, false, nil, app.DenyTimedOut))
	p.settle(id, app.PermissionTimeout)
}

// withdraw settles a request the provider itself stopped waiting for (an
// interrupt).
func (p *permissions) withdraw(providerID string) {
	p.mu.Lock()
	id := p.byProvider[providerID]
	p.mu.Unlock()
	if pa := p.take(id); pa != nil {
		p.settle(pa.id, app.PermissionCancelled)
	}
}

// close cancels what is still pending once the provider has exited.
func (p *permissions) close() {
	p.mu.Lock()
	p.closed = true
	var left []*pendingAsk
	for _, pa := range p.pending {
		left = append(left, pa)
	}
	p.mu.Unlock()
	for _, pa := range left {
		if p.take(pa.id) != nil {
			p.settle(pa.id, app.PermissionCancelled)
		}
	}
}

// take removes a pending request and stops its timer; nil if it was not
// pending, so each request is settled by exactly one of its doors.
func (p *permissions) take(id string) *pendingAsk {
	p.mu.Lock()
	defer p.mu.Unlock()
	pa := p.pending[id]
	if pa == nil {
		return nil
	}
	delete(p.pending, id)
	delete(p.byProvider, pa.ask.ID)
	p.inputBytes -= askBytes(pa.ask)
	if pa.timer != nil {
		pa.timer.Stop()
	}
	return pa
}

func (p *permissions) settle(id, reason string) {
	ctx, cancel := context.WithTimeout(context.Background(), writeTimeout)
	defer cancel()
	if _, err := p.r.w.st.SettlePermission(ctx, p.r.ref, id, reason); err != nil {
		p.r.log.Warn("settle permission request", "request", id, "err", err)
	}
}

// providerInput is a provider's stdin. Lines are written by a goroutine
// that runs only while there is something to write, so that a provider that
// stops reading never blocks the caller (the worker's inbox loop answers
// permissions for every run), and an idle run costs no goroutine.
type providerInput struct {
	mu      sync.Mutex
	w       io.WriteCloser // nil until start
	queue   [][]byte
	writing bool // a drain goroutine runs
	closing bool // close was called: no more lines
	closed  bool // w is closed
}

// inputQueue bounds the lines waiting for a provider that does not read.
const inputQueue = 64

func newProviderInput() *providerInput { return &providerInput{} }

// write queues a line; after close, or when the provider has stopped
// reading for inputQueue lines, the line is dropped.
func (in *providerInput) write(line []byte) {
	if len(line) == 0 {
		return
	}
	in.mu.Lock()
	defer in.mu.Unlock()
	if in.closing || len(in.queue) >= inputQueue {
		return
	}
	in.queue = append(in.queue, line)
	in.kick()
}

// start attaches the process' stdin once it runs; lines queued before are
// written first.
func (in *providerInput) start(w io.WriteCloser) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.w = w
	in.kick()
}

// close ends the input once the queued lines are written.
func (in *providerInput) close() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.closing = true
	in.kick()
}

// kick starts a drain goroutine when there is work and none runs. It is
// called with mu held.
func (in *providerInput) kick() {
	if in.w == nil || in.writing || in.closed || (len(in.queue) == 0 && !in.closing) {
		return
	}
	in.writing = true
	go in.drain()
}

// drain writes the queue, and closes w once close was called and the queue
// is empty or w failed.
func (in *providerInput) drain() {
	for {
		in.mu.Lock()
		if len(in.queue) == 0 {
			in.writing = false
			shut := in.closing && !in.closed
			in.closed = in.closed || shut
			in.mu.Unlock()
			if shut {
				_ = in.w.Close()
			}
			return
		}
		line := in.queue[0]
		in.queue = in.queue[1:]
		in.mu.Unlock()
		if _, err := in.w.Write(line); err != nil {
			in.mu.Lock()
			in.closing, in.queue = true, nil
			in.mu.Unlock()
		}
	}
}
