package store

import (
	"fmt"
	"sync"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/agentgate/agentgate/app"
)

// Embedded is an in-process Redis (miniredis) for `agentgate serve` on one
// machine. It listens on loopback with a random password, holds everything
// in memory (a restart forgets every session) and is not for production.
type Embedded struct {
	m    *miniredis.Miniredis
	url  string
	stop chan struct{}
	once sync.Once
}

// clockTick is how often the embedded store's TTL clock is advanced.
// miniredis never expires keys on its own; FastForward from a ticker costs a
// few ms per 10k keys, far less than ClockTTL's sort of every key per command.
const clockTick = time.Second

// StartEmbedded starts an embedded store on 127.0.0.1 and a random port.
func StartEmbedded() (*Embedded, error) {
	m := miniredis.NewMiniRedis()
	password := app.NewID()
	m.RequireAuth(password)
	if err := m.StartAddr("127.0.0.1:0"); err != nil {
		return nil, fmt.Errorf("store: start embedded Redis: %w", err)
	}
	e := &Embedded{m: m, url: fmt.Sprintf("redis://:%s@%s/0", password, m.Addr()), stop: make(chan struct{})}
	go e.advanceClock()
	return e, nil
}

// URL is the redis:// URL of the embedded store, password included.
func (e *Embedded) URL() string { return e.url }

// Close stops the embedded store; everything in it is lost.
func (e *Embedded) Close() {
	e.once.Do(func() {
		close(e.stop)
		e.m.Close()
	})
}

// advanceClock moves miniredis' TTL clock forward with real time.
// Runs in its own goroutine until Close.
func (e *Embedded) advanceClock() {
	t := time.NewTicker(clockTick)
	defer t.Stop()
	last := time.Now()
	for {
		select {
		case <-e.stop:
			return
		case now := <-t.C:
			e.m.FastForward(now.Sub(last))
			last = now
		}
	}
}
