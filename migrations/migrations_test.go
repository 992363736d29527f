package migrations_test

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/migrations"
	"github.com/agentgate/agentgate/store/storetest"
)

func TestApplyIsIdempotent(t *testing.T) {
	for _, b := range storetest.Backends {
		t.Run(string(b), func(t *testing.T) {
			st := storetest.New(t, storetest.Start(t, b))
			ctx := context.Background()
			v, err := migrations.Apply(ctx, st)
			require.NoError(t, err)
			require.Equal(t, migrations.Current, v)
			v, err = migrations.Apply(ctx, st)
			require.NoError(t, err)
			require.Equal(t, migrations.Current, v)
			got, err := st.SchemaVersion(ctx)
			require.NoError(t, err)
			require.Equal(t, migrations.Current, got)
		})
	}
}

func TestApplyRefusesNewerSchema(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	ctx := context.Background()
	require.NoError(t, st.SetSchemaVersion(ctx, migrations.Current+1))
	_, err := migrations.Apply(ctx, st)
	require.ErrorContains(t, err, "newer")
}
