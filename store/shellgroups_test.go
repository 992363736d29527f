package store

import (
	"context"
	"testing"

	"github.com/alicebob/miniredis/v2"
	"github.com/stretchr/testify/require"
)

func TestShellGroupsDecode(t *testing.T) {
	var g shellGroups
	type in struct{ channel, payload string }
	steps := []struct {
		in   in
		want ShellLive
		ok   bool
	}{
		{in{"a", "O 2 7 3"}, ShellLive{}, false},
		// Chunks are taken as they are, whatever they look like.
		{in{"a", "O 9 9 9"}, ShellLive{Kind: 'o', Gen: 2, Seq: 7, Data: "O 9 9 9"}, true},
		// Another channel's messages are its own.
		{in{"b", "s 1 4 1"}, ShellLive{Kind: 's', Gen: 1, Seq: 4, Flushed: true}, true},
		{in{"a", "e 1 2 0 - exit"}, ShellLive{Kind: 'o', Gen: 2, Seq: 8, Data: "e 1 2 0 - exit"}, true},
		{in{"a", ""}, ShellLive{Kind: 'o', Gen: 2, Seq: 9, Data: ""}, true},
		// The group is over: messages parse again.
		{in{"a", "e 2 9 0 - exit"}, ShellLive{Kind: 'e', Gen: 2, Seq: 9, Reason: "exit"}, true},
		{in{"a", "o 2 10 legacy form"}, ShellLive{Kind: 'o', Gen: 2, Seq: 10, Data: "legacy form"}, true},
		{in{"a", "not a message"}, ShellLive{}, false},
	}
	for i, s := range steps {
		got, ok := g.decode(s.in.channel, s.in.payload)
		require.Equal(t, s.ok, ok, "step %d", i)
		require.Equal(t, s.want, got, "step %d", i)
	}
	require.Empty(t, g.pending)

	// A group cut by a lost connection is forgotten when the channel is
	// confirmed again.
	_, ok := g.decode("a", "O 3 1 5")
	require.False(t, ok)
	m, ok := g.decode("a", "x")
	require.True(t, ok)
	require.Equal(t, int64(1), m.Seq)
	g.reset("a")
	m, ok = g.decode("a", "u 3 0 https://x.test/")
	require.True(t, ok)
	require.Equal(t, ShellLive{Kind: 'u', Gen: 3, Data: "https://x.test/"}, m)
}

func TestParseShellGroup(t *testing.T) {
	for _, bad := range []string{"", "O", "O 1 2", "O 1 2 0", "O 1 2 -1", "O x 2 3", "O 1 x 3", "O 1 2 x", "O 1 2 3 4", "o 1 2 3", "O1 2 3"} {
		_, _, _, ok := parseShellGroup(bad)
		require.False(t, ok, bad)
	}
	gen, seq, n, ok := parseShellGroup("O 4 100 2")
	require.True(t, ok)
	require.Equal(t, [3]int64{4, 100, 2}, [3]int64{gen, seq, n})
}

func FuzzShellGroupsDecode(f *testing.F) {
	for _, s := range []string{"O 1 1 2", "o 1 2 a", "e 1 2 0 - x", "u 1 0 u", "s 1 2 0", ""} {
		f.Add(s, s)
	}
	f.Fuzz(func(t *testing.T, first, second string) {
		var g shellGroups
		for _, p := range []string{first, second, second} {
			m, ok := g.decode("c", p)
			if ok && m.Kind == 0 {
				t.Fatalf("a message without a kind from %q", p)
			}
		}
		if p := g.pending["c"]; p != nil && p.left < 1 {
			t.Fatalf("a group left pending with %d chunks to come", p.left)
		}
	})
}

// TestSubscriberForgetsACutGroup: a connection lost in the middle of a
// group is followed by the channel's confirmation on the new one, and what
// comes after it is read as messages again, not as the group's chunks.
func TestSubscriberForgetsACutGroup(t *testing.T) {
	mr := miniredis.RunT(t)
	st, err := New(context.Background(), Config{URL: "redis://" + mr.Addr(), Standalone: true})
	require.NoError(t, err)
	t.Cleanup(func() { _ = st.Close() })
	var got []ShellLive
	sub := st.NewSubscriber(SubscriberHandlers{})
	sub.HandleShell(ShellHandlers{Message: func(key string, m ShellLive) {
		require.Equal(t, "k", key)
		got = append(got, m)
	}})
	ch := st.k.shellLive("k")
	sub.dispatch(ch, "O 1 1 3")
	sub.dispatch(ch, "part")
	sub.confirmed(ch) // subscribed again after the connection dropped
	sub.dispatch(ch, "e 1 1 0 - lost")
	require.Equal(t, []ShellLive{
		{Kind: 'o', Gen: 1, Seq: 1, Data: "part"},
		{Kind: 'e', Gen: 1, Seq: 1, Reason: "lost"},
	}, got)
}
