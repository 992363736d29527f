package workers

import (
	"bytes"
	"errors"
	"log/slog"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestStreakSaysBeginAndEnd: three failures in a row are one line, their
// end another, and a success outside a streak says nothing.
func TestStreakSaysBeginAndEnd(t *testing.T) {
	var out bytes.Buffer
	log := slog.New(slog.NewTextHandler(&out, nil))
	var s streak
	s.ok(log, "fine again")
	for range 3 {
		s.failed(log, "heartbeat", errors.New("connection refused"))
	}
	s.ok(log, "fine again")
	s.ok(log, "fine again")
	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	require.Len(t, lines, 2, out.String())
	require.Contains(t, lines[0], "level=WARN msg=heartbeat err=\"connection refused\"")
	require.Contains(t, lines[1], "level=INFO msg=\"fine again\"")
}
