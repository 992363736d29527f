package store

import (
	"strings"
	"sync"
	"time"
)

// seqFloors remembers, per session, the highest seq this process has seen
// written or delivered. A Redis Cluster failover can lose a master's last
// writes that clients already had, and so can a single Redis that restarts
// from an AOF fsynced every second or from a snapshot; every write of a
// session carries the floor, and the script skips Redis' lastSeq past it
// (raise in prelude.lua, which also sets lostUpTo), so that a seq a client
// had is never given to another event. A gateway closes the sockets that
// are ahead of what Redis kept (1012) when it finds the loss first; a
// worker that writes first raises the seqs past them.
type seqFloors struct {
	mu sync.Mutex
	m  map[string]floorEntry
	// prunedAt is when the map was last swept: a sweep looks at every
	// session, so it runs at most once a floorSweep however many events
	// a process with more than floorsKept sessions writes or delivers.
	prunedAt time.Time
}

type floorEntry struct {
	seq  int64
	seen time.Time
}

// floorsKept bounds the sessions remembered: past it, at most once a
// floorSweep, the floors not raised for floorTTL go. A floor matters only
// for the length of an outage: the writes that carry it follow the events
// it records.
const (
	floorsKept = 10000
	floorTTL   = 10 * time.Minute
	floorSweep = time.Minute
)

// note records that seq of session id was written or delivered.
func (f *seqFloors) note(id string, seq int64) {
	if seq <= 0 {
		return
	}
	now := time.Now()
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.m == nil {
		f.m = map[string]floorEntry{}
	}
	if e, ok := f.m[id]; !ok || e.seq < seq {
		f.m[id] = floorEntry{seq: seq, seen: now}
	}
	if len(f.m) > floorsKept && now.Sub(f.prunedAt) >= floorSweep {
		f.prunedAt = now
		for k, e := range f.m {
			if now.Sub(e.seen) > floorTTL {
				delete(f.m, k)
			}
		}
	}
}

// get returns the floor of session id (0 when none is known).
func (f *seqFloors) get(id string) int64 {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.m[id].seq
}

// frameSeq reads the seq of a stored frame, which starts `{"seq":N,`.
func frameSeq(frame string) int64 {
	rest, ok := strings.CutPrefix(frame, `{"seq":`)
	if !ok {
		return 0
	}
	var n int64
	for i := 0; i < len(rest) && i < 20 && rest[i] >= '0' && rest[i] <= '9'; i++ {
		n = n*10 + int64(rest[i]-'0')
	}
	return n
}
