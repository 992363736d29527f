package e2e

import (
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/internal/mockanthropic"
)

// TestLargeEventLive: the real CLI answers with 1.5 MiB of text; its
// event is too large for pub/sub (Redis publishes its seq alone), and the
// watching socket still gets it whole, in order, once, read from the
// stream, with its markup as written.
func TestLargeEventLive(t *testing.T) {
	t.Parallel()
	text := strings.Repeat("<b>large</b> & more ", 80_000) // 1.5 MiB
	cl := newCluster(t, "", mockanthropic.Turn{When: "large-answer", Text: text})
	gw := cl.startGateway("gw")
	cl.startWorker("worker")
	c := cl.dial(gw, "alice")
	sid := accept(t, cl, c, "please large-answer", "", "r1")
	evs := c.waitEnd(sid, 1, 60*time.Second)
	sum := checkRun(t, evs, 1)
	requireComplete(t, sum.completes[0], 0, true, false)
	found := 0
	for _, ev := range evs {
		if strings.Contains(ev.Raw, "<b>large</b>") {
			found++
			require.Greater(t, len(ev.Raw), 1<<20)
			require.Contains(t, ev.Raw, text)
		}
	}
	require.Equal(t, 1, found, "the large event, once: %s", kinds(evs))
}
