package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentgate/agentgate/app"
)

// JobsGroup is the consumer group of the jobs stream that workers share.
const JobsGroup = "workers"

// JobEntry is a job read from the jobs stream.
type JobEntry struct {
	// StreamID is the entry's id in the jobs stream, for AckJob.
	StreamID string
	Job      app.Job
	// Err is set when the entry could not be decoded; ack it and move on.
	Err error
}

// EnsureJobsGroup creates the jobs stream and its consumer group if needed.
func (s *Store) EnsureJobsGroup(ctx context.Context) error {
	err := s.rdb.XGroupCreateMkStream(ctx, s.k.jobs(), JobsGroup, "0").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("store: create jobs group: %w", err)
	}
	return nil
}

// regroup creates the jobs group again after err said it is missing
// (NOGROUP): a Redis that restarted without its data (no persistence, a
// failover to an empty replica) lost it with everything else, and the
// migration that makes it ran when the processes started. It reports
// whether the read is worth trying again.
func (s *Store) regroup(ctx context.Context, err error) bool {
	if err == nil || !strings.HasPrefix(err.Error(), "NOGROUP") {
		return false
	}
	if err := s.EnsureJobsGroup(ctx); err != nil {
		s.log.Warn("create the jobs group again", "err", err)
		return false
	}
	s.log.Warn("the jobs group was missing (Redis lost its data?): created it again")
	return true
}

// ReadJobs waits up to block for new jobs for consumer. block must be
// positive: a zero BLOCK would wait forever and ignore ctx.
func (s *Store) ReadJobs(ctx context.Context, consumer string, count int, block time.Duration) ([]JobEntry, error) {
	if block <= 0 {
		block = time.Second
	}
	args := &redis.XReadGroupArgs{
		Group: JobsGroup, Consumer: consumer, Streams: []string{s.k.jobs(), ">"},
		Count: int64(count), Block: block,
	}
	streams, err := s.rdb.XReadGroup(ctx, args).Result()
	if s.regroup(ctx, err) {
		streams, err = s.rdb.XReadGroup(ctx, args).Result()
	}
	if errors.Is(err, redis.Nil) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("store: read jobs: %w", err)
	}
	var out []JobEntry
	for _, st := range streams {
		for _, m := range st.Messages {
			out = append(out, decodeJob(m))
		}
	}
	return out, nil
}

// ReclaimJobs takes over jobs that another consumer read but did not ack
// within minIdle: that consumer died between reading a job and claiming its
// run. XAUTOCLAIM enforces minIdle on both Redis and miniredis.
func (s *Store) ReclaimJobs(ctx context.Context, consumer string, minIdle time.Duration) ([]JobEntry, error) {
	args := &redis.XAutoClaimArgs{
		Stream: s.k.jobs(), Group: JobsGroup, Consumer: consumer, MinIdle: minIdle, Start: "0-0", Count: 100,
	}
	msgs, _, err := s.rdb.XAutoClaim(ctx, args).Result()
	if s.regroup(ctx, err) {
		msgs, _, err = s.rdb.XAutoClaim(ctx, args).Result()
	}
	if err != nil {
		return nil, fmt.Errorf("store: reclaim jobs: %w", err)
	}
	out := make([]JobEntry, 0, len(msgs))
	for _, m := range msgs {
		out = append(out, decodeJob(m))
	}
	return out, nil
}

// AckJob acknowledges a job and deletes it, so the stream stays short.
func (s *Store) AckJob(ctx context.Context, streamID string) error {
	pipe := s.rdb.Pipeline()
	pipe.XAck(ctx, s.k.jobs(), JobsGroup, streamID)
	pipe.XDel(ctx, s.k.jobs(), streamID)
	if _, err := pipe.Exec(ctx); err != nil {
		return fmt.Errorf("store: ack job %s: %w", streamID, err)
	}
	return nil
}

func decodeJob(m redis.XMessage) JobEntry {
	e := JobEntry{StreamID: m.ID}
	raw, _ := m.Values["job"].(string)
	if raw == "" {
		// On real Redis a pending entry whose body was deleted comes back
		// without values; it must still be acked.
		e.Err = errors.New("job entry has no body")
		return e
	}
	if err := json.Unmarshal([]byte(raw), &e.Job); err != nil {
		e.Err = fmt.Errorf("decode job %s: %w", m.ID, err)
		return e
	}
	e.Job.RunID, _ = m.Values["run"].(string)
	return e
}

// JobsWaiting is how many accepted runs no worker has read yet: the lag of
// the workers' group on the jobs stream (Redis 7 reports it; -1 when the
// server does not).
func (s *Store) JobsWaiting(ctx context.Context) (int64, error) {
	groups, err := s.rdb.XInfoGroups(ctx, s.k.jobs()).Result()
	if err != nil {
		return 0, fmt.Errorf("store: read the jobs group: %w", err)
	}
	for _, g := range groups {
		if g.Name == JobsGroup {
			return g.Lag, nil
		}
	}
	return 0, nil
}

// JobsConsumers returns the names of the jobs group's consumers: one a
// worker process that ever read a job (each runs under an id of its own).
func (s *Store) JobsConsumers(ctx context.Context) ([]string, error) {
	cs, err := s.rdb.XInfoConsumers(ctx, s.k.jobs(), JobsGroup).Result()
	if err != nil {
		return nil, fmt.Errorf("store: list the jobs group's consumers: %w", err)
	}
	names := make([]string, len(cs))
	for i, c := range cs {
		names[i] = c.Name
	}
	return names, nil
}

// DropJobsConsumer deletes a consumer of the jobs group, a worker gone,
// if it holds no pending job (those are reclaimed by live workers first).
// It reports whether it deleted it. A live worker's consumer deleted by
// mistake is made again by its next read.
func (s *Store) DropJobsConsumer(ctx context.Context, consumer string) (bool, error) {
	n, err := s.sc.jobsConsumerDrop.Run(ctx, s.rdb, []string{s.k.jobs()}, JobsGroup, consumer).Int()
	if err != nil {
		return false, fmt.Errorf("store: drop jobs consumer %s: %w", consumer, err)
	}
	return n == 1, nil
}
