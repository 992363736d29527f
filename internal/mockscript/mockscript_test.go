package mockscript

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

type turn struct{ when, text string }

func TestScript(t *testing.T) {
	s := New[turn, string](turn{text: "default"}, func(t turn) string { return t.when })
	s.Add(turn{"b", "first b"}, turn{"", "any"}, turn{"b", "second b"})
	require.Equal(t, 3, s.Pending())

	got, i := s.Take("say b")
	require.Equal(t, "first b", got.text)
	require.Equal(t, 0, i)
	got, i = s.Take("say a")
	require.Equal(t, "any", got.text, "an empty marker matches any prompt")
	require.Equal(t, 1, i)
	got, i = s.Take("say a")
	require.Equal(t, "default", got.text, "the b turn waits for a b prompt")
	require.Equal(t, -1, i)
	got, _ = s.Take("b again")
	require.Equal(t, "second b", got.text)
	require.Zero(t, s.Pending())

	s.Record("r1")
	s.Record("r2")
	reqs := s.Requests()
	reqs[0] = "changed"
	require.Equal(t, []string{"r1", "r2"}, s.Requests(), "a copy")

	stop, closed := make(chan struct{}), make(chan struct{})
	done := make(chan struct{})
	go func() { s.Hang(stop, closed); close(done) }()
	require.Eventually(t, func() bool { return s.Hanging() == 1 }, 5*time.Second, time.Millisecond)
	close(stop)
	<-done
	require.Zero(t, s.Hanging())
}
