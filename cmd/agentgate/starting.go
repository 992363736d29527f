package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/agentgate/agentgate/store"
)

// frontHandler is what a gateway's listener serves: before the gateway is
// up (it waits for Redis), a live but unready process (/healthz 200,
// /readyz and everything else 503), so that an orchestrator neither
// restarts it nor sends it traffic; then the gateway's own handler.
type frontHandler struct {
	h atomic.Pointer[http.Handler]
}

// set hands every later request to h.
func (f *frontHandler) set(h http.Handler) { f.h.Store(&h) }

func (f *frontHandler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if h := f.h.Load(); h != nil {
		(*h).ServeHTTP(w, r)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	switch r.URL.Path {
	case "/healthz":
		_, _ = io.WriteString(w, `{"status":"ok"}`+"\n")
	case "/readyz":
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, `{"status":"starting: waiting for Redis"}`+"\n")
	default:
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(http.StatusServiceUnavailable)
		_, _ = io.WriteString(w, `{"error":"The gateway is starting (waiting for Redis); try again"}`+"\n")
	}
}

// startWaitMax bounds the pause between two tries to reach Redis at start.
const startWaitMax = 2 * time.Second

// openStoreWhenUp opens the store, waiting for Redis while it cannot be reached
// or is loading its data (a gateway and its Redis restarted together, or
// Redis is not up yet), until ctx ends. An exit there would make an
// orchestrator restart the process again and again, with growing delays
// that outlast Redis's own restart. Other errors (a bad URL, a refused
// password) end the start at once.
func openStoreWhenUp(ctx context.Context, cfg store.Config, log *slog.Logger) (*store.Store, error) {
	began, said := time.Now(), false
	for pause := 50 * time.Millisecond; ; pause = min(2*pause, startWaitMax) {
		st, err := store.New(ctx, cfg)
		if err == nil {
			if said {
				log.Info("Redis answers: starting", "waited", time.Since(began).Round(time.Millisecond))
			}
			return st, nil
		}
		if !store.Unavailable(err) || ctx.Err() != nil {
			return nil, err
		}
		if !said {
			said = true
			log.Warn("waiting for Redis", "err", err)
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("stopped while waiting for Redis: %w", err)
		case <-time.After(pause):
		}
	}
}
