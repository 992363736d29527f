// Package bench holds agentgate's benchmarks: chat fan-out end to end
// against a raw Redis baseline, resume of missed events on another gateway,
// and the memory of idle sockets. They run only with -bench (see
// RESULTS.md for the commands and the figures); `go test ./bench/` alone
// runs nothing slow.
package bench

import (
	"cmp"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"
)

// TestMain removes the agentgate binary a run built (agentgateBinary), 20 MB
// left in the temporary folder by every run otherwise.
func TestMain(m *testing.M) {
	code := m.Run()
	if builtBin != "" {
		_ = os.RemoveAll(filepath.Dir(builtBin))
	}
	os.Exit(code)
}

// latencies collects latency samples (nanoseconds) from many goroutines.
type latencies struct {
	mu sync.Mutex
	ns []int64
}

func (l *latencies) add(s []int64) {
	l.mu.Lock()
	l.ns = append(l.ns, s...)
	l.mu.Unlock()
}

// quantile returns the q-quantile of the samples in milliseconds (NaN when
// there are none). It sorts the samples.
func (l *latencies) quantile(q float64) float64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.ns) == 0 {
		return math.NaN()
	}
	slices.Sort(l.ns)
	i := int(math.Ceil(q*float64(len(l.ns)))) - 1
	i = max(0, min(i, len(l.ns)-1))
	return float64(l.ns[i]) / 1e6
}

// results remembers the raw baseline of each fan-out configuration, so the
// gateway's sub-benchmark of the same configuration can report its ratio.
var results = struct {
	sync.Mutex
	raw map[string]float64 // events/s by "sessions=N/mode"
}{raw: map[string]float64{}}

// waitFor polls cond until it holds or timeout passes; it is a hang guard,
// never a performance assertion.
func waitFor(b *testing.B, timeout time.Duration, what string, cond func() bool) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			b.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// benchLimit lifts the gateway's per-user and connection caps: every
// benchmark socket is one user's, and it opens thousands and sends fast.
const benchLimit = 1_000_000

// benchLimitEnv is benchLimit for a gateway process.
var benchLimitEnv = []string{
	fmt.Sprintf("AGENTGATE_MAX_CONNECTIONS=%d", benchLimit),
	fmt.Sprintf("AGENTGATE_MAX_SOCKETS_PER_USER=%d", benchLimit),
	fmt.Sprintf("AGENTGATE_MAX_FRAME_RATE=%d", benchLimit),
	fmt.Sprintf("AGENTGATE_MAX_RUNS_PER_USER=%d", benchLimit),
	fmt.Sprintf("AGENTGATE_MAX_TERMINALS_PER_USER=%d", benchLimit),
	fmt.Sprintf("AGENTGATE_MAX_RUNS=%d", benchLimit),
	fmt.Sprintf("AGENTGATE_MAX_TERMINALS=%d", benchLimit),
}

// openAll runs open(i) for every i below n, 32 at a time, and returns the
// first error: opening a round's sockets without a thousand dials at once.
func openAll(n int, open func(i int) error) error {
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	sem := make(chan struct{}, 32)
	for i := range n {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			if err := open(i); err != nil {
				mu.Lock()
				first = cmp.Or(first, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return first
}

func configName(sessions int, mode string) string {
	return fmt.Sprintf("sessions=%d/%s", sessions, mode)
}
