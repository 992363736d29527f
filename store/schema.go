package store

import (
	"context"
	"errors"
	"fmt"
	"strconv"

	"github.com/redis/go-redis/v9"
)

// SchemaVersion returns the key-schema version recorded in `ag:schema`
// (0 when none is).
func (s *Store) SchemaVersion(ctx context.Context) (int, error) {
	v, err := s.rdb.Get(ctx, s.k.schema()).Result()
	if errors.Is(err, redis.Nil) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("store: read schema version: %w", err)
	}
	n, err := strconv.Atoi(v)
	if err != nil {
		return 0, fmt.Errorf("store: schema version %q: %w", v, err)
	}
	return n, nil
}

// SetSchemaVersion records the key-schema version.
func (s *Store) SetSchemaVersion(ctx context.Context, v int) error {
	if err := s.rdb.Set(ctx, s.k.schema(), v, 0).Err(); err != nil {
		return fmt.Errorf("store: write schema version: %w", err)
	}
	return nil
}
