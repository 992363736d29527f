package workers

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// replyDropper is a TCP proxy to Redis that, once armed with a marker,
// swallows every reply on the first connection whose commands carry it:
// Redis runs the command and its client never hears back.
type replyDropper struct {
	ln     net.Listener
	target string

	// dropped is closed when the marker was seen.
	dropped chan struct{}

	mu     sync.Mutex
	marker []byte
	conns  []net.Conn
}

func newReplyDropper(t *testing.T, target string) *replyDropper {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &replyDropper{ln: ln, target: target, dropped: make(chan struct{})}
	go p.accept()
	t.Cleanup(func() {
		_ = ln.Close()
		p.mu.Lock()
		defer p.mu.Unlock()
		for _, c := range p.conns {
			_ = c.Close()
		}
	})
	return p
}

func (p *replyDropper) arm(marker string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.marker = []byte(marker)
}

func (p *replyDropper) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c, s)
		p.mu.Unlock()
		var drop sync.Mutex
		dropping := false
		go func() { // client → Redis, watching for the marker
			defer s.Close()
			buf := make([]byte, 64<<10)
			for {
				n, err := c.Read(buf)
				if n > 0 {
					p.mu.Lock()
					if p.marker != nil && bytes.Contains(buf[:n], p.marker) {
						p.marker = nil
						close(p.dropped)
						drop.Lock()
						dropping = true
						drop.Unlock()
					}
					p.mu.Unlock()
					if _, err := s.Write(buf[:n]); err != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
		go func() { // Redis → client, unless dropping
			defer c.Close()
			buf := make([]byte, 64<<10)
			for {
				n, err := s.Read(buf)
				drop.Lock()
				d := dropping
				drop.Unlock()
				if n > 0 && !d {
					if _, err := c.Write(buf[:n]); err != nil {
						return
					}
				}
				if err != nil {
					return
				}
			}
		}()
	}
}

// TestClaimWithLostReplyIsAskedAgain: a worker's claim that Redis recorded
// but whose reply never came back (a stall past the client's timeout) must
// not leave the run to whoever reclaims its job: another worker finds the
// run claimed by the first and drops the job, and with the first alive
// the reaper never ends it. The first worker asks again and runs it.
// Before, the session stayed running for good.
func TestClaimWithLostReplyIsAskedAgain(t *testing.T) {
	srv := storetest.StartServer(t)
	direct := storetest.New(t, srv.URL)
	proxy := newReplyDropper(t, srv.Addr)
	viaProxy := storetest.New(t, "redis://"+proxy.ln.Addr().String()+"/0?read_timeout=300ms&max_retries=-1",
		store.Config{Prefix: direct.Prefix()})
	prov := Config{
		Providers: map[app.Provider]Provider{app.Claude: scriptProvider{}},
		Bins:      map[app.Provider]string{app.Claude: "sh"},
	}
	first := runWorkerTuned(t, viaProxy, prov, func(w *Worker) { w.reclaimIdle = time.Hour })
	// The claim script loaded first: the dropped reply must be one of a
	// claim Redis ran, not a NOSCRIPT the client would have answered with
	// the script itself.
	_, err := direct.Claim(context.Background(), store.RunRef{SessionID: app.NewID(), RunID: "1"}, "nobody")
	require.NoError(t, err)
	sess := app.Session{ID: app.NewID(), Owner: "alice", Provider: app.Claude, ProjectPath: first.dir}
	proxy.arm(sess.ID)
	_, err = direct.Accept(context.Background(), &store.AcceptRequest{
		Session: sess, New: true,
		Job: app.Job{SessionID: sess.ID, Owner: "alice", Provider: app.Claude, Command: "echo ran", ProjectPath: first.dir, NewSession: true},
	})
	require.NoError(t, err)
	select {
	case <-proxy.dropped:
	case <-time.After(10 * time.Second):
		t.Fatal("the first worker did not claim the run")
	}
	// Started once the first worker read the job (this one could have read
	// it first), the second reclaims jobs left read and unacked for 200 ms.
	prov.Workspaces = app.Workspaces{Roots: []string{first.dir}}
	runWorkerTuned(t, direct, prov, func(w *Worker) { w.reclaimIdle = 200 * time.Millisecond })
	require.Eventually(t, func() bool {
		s, err := direct.Session(context.Background(), sess.ID)
		return err == nil && !s.Running()
	}, 15*time.Second, 20*time.Millisecond, "the run was never started nor ended")
	evs := first.events(sess.ID)
	require.Equal(t, []string{"ran"}, texts(evs))
	require.Len(t, completes(evs), 1)
}
