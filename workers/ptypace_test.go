package workers

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestPTYPacer: small reads are never followed by a pause; a flood's pause
// grows while reads come in under the target, stays within its bounds,
// and halves when a read found the buffer full.
func TestPTYPacer(t *testing.T) {
	var p ptyPacer
	steps := []struct {
		read int
		want time.Duration
	}{
		{1, 0},                  // an echo
		{800, 0},                // a prompt, a short listing
		{1500, ptyPauseMin},     // a flood starts: the least pause
		{1024, 3 * ptyPauseMin}, // reads a third of the target: three times the pause
		{3072, 3 * ptyPauseMin}, // on target: kept
		{2048, 90 * time.Microsecond},
		{100, 0},            // the flood ended
		{2000, ptyPauseMin}, // another
		{1024, 60 * time.Microsecond},
		{1024, 180 * time.Microsecond},
		{1024, ptyPauseMax}, // bounded
		{1024, ptyPauseMax},
		{4096, ptyPauseMax / 2}, // the buffer was full: the reader is behind
		{4096, ptyPauseMax / 4},
		{32 << 10, ptyPauseMax / 8},
		{4096, 0}, // under the least pause: none
		{4096, 0},
		{2048, ptyPauseMin},
	}
	for i, s := range steps {
		require.Equal(t, s.want, p.after(s.read), "step %d: a read of %d bytes", i, s.read)
	}
}
