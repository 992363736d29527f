package main

import (
	"bytes"
	"context"
	"io"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestPluginsAdmin runs `agentgate plugins add|ls|rm` against a real Redis.
func TestPluginsAdmin(t *testing.T) {
	t.Run("redis", func(t *testing.T) { testPluginsAdmin(t, storetest.Redis(t)) })
	// The cluster named in go-redis' cluster URL form.
	t.Run("cluster", func(t *testing.T) { testPluginsAdmin(t, storetest.SharedCluster(t).URL) })
}

func testPluginsAdmin(t *testing.T, url string) {
	prefix := storetest.Prefix()
	st := storetest.New(t, url, store.Config{Prefix: prefix})
	ctx := context.Background()
	flags := []string{"--redis", url, "--key-prefix", prefix}
	plugins := func(args ...string) (string, error) {
		var out bytes.Buffer
		err := run(ctx, append(append([]string{"plugins"}, args...), flags...), &out, io.Discard)
		return out.String(), err
	}

	_, err := plugins("add", "tasks", "127.0.0.1:4000")
	require.NoError(t, err)
	_, err = plugins("add", "b-2", "localhost:4001")
	require.NoError(t, err)
	addr, err := st.Plugin(ctx, "tasks")
	require.NoError(t, err)
	require.Equal(t, "127.0.0.1:4000", addr, "stored as ag:plugin:NAME")

	out, err := plugins("ls")
	require.NoError(t, err)
	require.Equal(t, "NAME   ADDRESS\nb-2    localhost:4001\ntasks  127.0.0.1:4000\n", out)

	for _, bad := range [][]string{
		{"add", "bad.name", "127.0.0.1:4000"},
		{"add", "x", "http://127.0.0.1:4000"},
		{"add", "x", "127.0.0.1"},
		{"add", "x", "127.0.0.1:0"},
		{"add", "x", "127.0.0.1:70000"},
		{"add", "x"},
		{"rm", "nobody"},
		{"frob"},
	} {
		_, err := plugins(bad...)
		require.Error(t, err, "%v", bad)
	}

	_, err = plugins("rm", "tasks")
	require.NoError(t, err)
	_, err = st.Plugin(ctx, "tasks")
	require.ErrorIs(t, err, app.ErrNotFound)
}
