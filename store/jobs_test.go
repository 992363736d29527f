package store_test

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store/storetest"
)

// TestJobsGroupComesBack: a Redis that lost its data (restarted without
// persistence) lost the workers' consumer group with it, which only the
// migrations at start make. Reading and reclaiming jobs make it again
// instead of failing with NOGROUP forever, and a run accepted after is
// read.
func TestJobsGroupComesBack(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) {
			url := storetest.Start(t, b)
			st := storetest.New(t, url)
			rdb := redisClient(t, url)
			ctx := context.Background()
			jobs := st.Prefix() + ":jobs"

			require.NoError(t, rdb.Del(ctx, jobs).Err())
			got, err := st.ReclaimJobs(ctx, "w1", time.Minute)
			require.NoError(t, err)
			require.Empty(t, got)

			require.NoError(t, rdb.Del(ctx, jobs).Err())
			got, err = st.ReadJobs(ctx, "w1", 10, 10*time.Millisecond)
			require.NoError(t, err)
			require.Empty(t, got)

			res := accept(t, st, newSession("alice"), true)
			got, err = st.ReadJobs(ctx, "w1", 10, 10*time.Millisecond)
			require.NoError(t, err)
			require.Len(t, got, 1)
			require.Equal(t, res.RunID, got[0].Job.RunID)
		})
	}
}

// TestDropJobsConsumer: a consumer of the jobs group is deleted only while
// it holds no pending job (deleting it would drop those).
func TestDropJobsConsumer(t *testing.T) {
	st := storetest.New(t, storetest.Redis(t))
	ctx := context.Background()
	// A consumer is made by the read that gets it a job.
	for _, name := range []string{"idle", "holding"} {
		accept(t, st, newSession("alice"), true)
		got, err := st.ReadJobs(ctx, name, 10, 10*time.Millisecond)
		require.NoError(t, err)
		require.Len(t, got, 1)
		if name == "idle" {
			require.NoError(t, st.AckJob(ctx, got[0].StreamID))
		}
	}
	names, err := st.JobsConsumers(ctx)
	require.NoError(t, err)
	require.ElementsMatch(t, []string{"idle", "holding"}, names)

	for name, want := range map[string]bool{"idle": true, "holding": false} {
		dropped, err := st.DropJobsConsumer(ctx, name)
		require.NoError(t, err)
		require.Equal(t, want, dropped, name)
	}
	names, err = st.JobsConsumers(ctx)
	require.NoError(t, err)
	require.Equal(t, []string{"holding"}, names)
}
