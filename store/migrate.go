package store

import (
	"context"
	"errors"
	"fmt"

	"github.com/redis/go-redis/v9"
)

// KeepQueuedJobs copies the job of every run waiting in the jobs stream
// beside its session (`ag:session:{ID}:job`), as Accept keeps it since key
// schema 2, so that a job the stream loses can be queued again. Runs that
// ended, or moved on to another run, are skipped. Idempotent.
func (s *Store) KeepQueuedJobs(ctx context.Context) error {
	start := "-"
	for {
		msgs, err := s.rdb.XRangeN(ctx, s.k.jobs(), start, "+", 500).Result()
		if err != nil {
			return fmt.Errorf("store: keep queued jobs: %w", err)
		}
		for _, m := range msgs {
			sid, _ := m.Values["session"].(string)
			run, _ := m.Values["run"].(string)
			job, _ := m.Values["job"].(string)
			if sid == "" || job == "" {
				continue
			}
			cur, err := s.rdb.HMGet(ctx, s.k.session(sid), "runId", "state").Result()
			if err != nil && !errors.Is(err, redis.Nil) {
				return fmt.Errorf("store: keep queued jobs: %w", err)
			}
			if len(cur) == 2 && cur[0] == run && cur[1] == "running" {
				if err := s.rdb.SetNX(ctx, s.k.job(sid), job, 0).Err(); err != nil {
					return fmt.Errorf("store: keep queued jobs: %w", err)
				}
			}
		}
		if len(msgs) < 500 {
			return nil
		}
		start = "(" + msgs[len(msgs)-1].ID
	}
}
