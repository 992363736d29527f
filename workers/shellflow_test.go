package workers

import (
	"strconv"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestShellFlow: no limit until a socket acknowledges; then at most
// a window on its way, an ack makes room, and acks that stall turn the
// limit off again (nobody watches).
func TestShellFlow(t *testing.T) {
	for _, window := range []int{DefaultShellWindow, 64 << 10} { // the default, --shell-window
		t.Run(strconv.Itoa(window), func(t *testing.T) {
			fl := newShellFlow(window)
			none := func() int { return 0 }
			stop := make(chan struct{})
			returned := func(pending func() int) bool {
				done := make(chan struct{})
				go func() { fl.wait(pending, stop); close(done) }()
				select {
				case <-done:
					return true
				case <-time.After(100 * time.Millisecond):
					return false
				}
			}
			fl.appendedChunks(10, []int{window, window})
			require.True(t, returned(none), "off until the first ack")

			fl.ack(9) // the first of the two chunks was written
			require.True(t, returned(none), "one window on its way")
			require.False(t, returned(func() int { return 1 }), "more than a window on its way")

			done := make(chan struct{})
			go func() { fl.wait(func() int { return 1 }, stop); close(done) }()
			acked := time.Now()
			fl.ack(10)
			select {
			case <-done:
			case <-time.After(time.Second):
				t.Fatal("an ack did not make room")
			}

			fl.appendedChunks(12, []int{window, window})
			fl.wait(none, stop)
			// The stall counts from the last ack (a loaded machine may take most of
			// it to get here).
			require.GreaterOrEqual(t, time.Since(acked), shellFlowStall, "waited for the stall")
			require.True(t, returned(none), "off after the stall")
			fl.ack(11)
			require.True(t, returned(none), "one window on its way again")
			require.False(t, returned(func() int { return 1 }), "on again after an ack")
			close(stop)
		})
	}
}
