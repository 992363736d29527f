// Package migrations holds the ordered, idempotent key-schema migrations.
// Gateways and workers apply them at start, one process at a time under a
// lease; `agentgate migrate` applies them by hand.
package migrations

import (
	"context"
	"fmt"
	"os"
	"sync/atomic"
	"time"

	"github.com/agentgate/agentgate/store"
)

// Migration moves the key schema from Version-1 to Version. Up must be
// idempotent: a process that dies half-way leaves it to be run again.
type Migration struct {
	Version int
	Name    string
	Up      func(ctx context.Context, st *store.Store) error
}

// All are the migrations in order.
var All = []Migration{
	{Version: 1, Name: "jobs stream and its consumer group", Up: func(ctx context.Context, st *store.Store) error {
		return st.EnsureJobsGroup(ctx)
	}},
	// Schema 2 makes every script touch one hash slot (Redis Cluster): the
	// indexes (running set, users' sets, provider and permission indexes)
	// and the jobs stream are written around the scripts, not in them, and
	// a run's job is kept beside its session for a requeue. A store of
	// schema 1 has consistent indexes, but no kept jobs: those of the runs
	// still queued are copied from the stream, and the indexes rebuilt
	// (which is also the repair path of schema 2).
	{Version: 2, Name: "single-slot scripts: queued jobs kept beside their session, indexes rebuilt", Up: func(ctx context.Context, st *store.Store) error {
		if err := st.KeepQueuedJobs(ctx); err != nil {
			return err
		}
		return st.RebuildIndexes(ctx)
	}},
}

// Current is the schema version this build writes.
var Current = All[len(All)-1].Version

// lease names the lease migrations run under.
const lease = "migrate"

// applies numbers the calls of Apply, to tell their lease holders apart.
var applies atomic.Int64

// Apply runs the migrations the store has not seen yet and returns the
// resulting version. It waits (up to ctx) for another process that holds
// the migration lease.
func Apply(ctx context.Context, st *store.Store) (int, error) {
	host, _ := os.Hostname()
	// One holder per call, not per process: the lease lets its holder take
	// it again, and two gateways of one process (or a /readyz migrating
	// while another call does) must wait for each other too.
	holder := fmt.Sprintf("%s-%d-%d", host, os.Getpid(), applies.Add(1))
	for {
		ok, err := st.AcquireLease(ctx, lease, holder, 30*time.Second)
		if err != nil {
			return 0, fmt.Errorf("migrations: take lease: %w", err)
		}
		if ok {
			break
		}
		select {
		case <-ctx.Done():
			return 0, fmt.Errorf("migrations: wait for lease: %w", ctx.Err())
		case <-time.After(200 * time.Millisecond):
		}
	}
	defer func() {
		rel, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = st.ReleaseLease(rel, lease, holder)
	}()
	return ApplyUnshared(ctx, st)
}

// ApplyUnshared is Apply for a store no other process can reach (the
// embedded one): without the lease, whose two scripts are most of the
// embedded store's start.
func ApplyUnshared(ctx context.Context, st *store.Store) (int, error) {
	v, err := st.SchemaVersion(ctx)
	if err != nil {
		return 0, fmt.Errorf("migrations: %w", err)
	}
	if v > Current {
		return v, fmt.Errorf("migrations: Redis holds key schema %d, newer than this build's %d", v, Current)
	}
	for _, m := range All {
		if m.Version <= v {
			continue
		}
		if err := m.Up(ctx, st); err != nil {
			return v, fmt.Errorf("migrations: %d (%s): %w", m.Version, m.Name, err)
		}
		if err := st.SetSchemaVersion(ctx, m.Version); err != nil {
			return v, fmt.Errorf("migrations: %w", err)
		}
		v = m.Version
	}
	return v, nil
}
