package store

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/agentgate/agentgate/app"
)

// SetPlugin registers a plugin's address (`ag:plugin:NAME` = HOST:PORT).
func (s *Store) SetPlugin(ctx context.Context, name, addr string) error {
	if err := s.rdb.Set(ctx, s.k.plugin(name), addr, 0).Err(); err != nil {
		return fmt.Errorf("store: add plugin %s: %w", name, err)
	}
	return nil
}

// RemovePlugin removes a plugin; app.ErrNotFound if it was not registered.
func (s *Store) RemovePlugin(ctx context.Context, name string) error {
	n, err := s.rdb.Del(ctx, s.k.plugin(name)).Result()
	if err != nil {
		return fmt.Errorf("store: remove plugin %s: %w", name, err)
	}
	if n == 0 {
		return app.ErrNotFound
	}
	return nil
}

// Plugin returns a plugin's address, or app.ErrNotFound.
func (s *Store) Plugin(ctx context.Context, name string) (string, error) {
	addr, err := s.rdb.Get(ctx, s.k.plugin(name)).Result()
	if errors.Is(err, redis.Nil) {
		return "", app.ErrNotFound
	}
	if err != nil {
		return "", fmt.Errorf("store: read plugin %s: %w", name, err)
	}
	return addr, nil
}

// Plugins returns every registered plugin: name -> address.
func (s *Store) Plugins(ctx context.Context) (map[string]string, error) {
	out := map[string]string{}
	prefix := s.k.plugin("")
	err := s.scanKeys(ctx, prefix+"*", "", func(keys []string) error {
		pipe := s.rdb.Pipeline()
		cmds := make([]*redis.StringCmd, len(keys))
		for i, key := range keys {
			cmds[i] = pipe.Get(ctx, key)
		}
		_, _ = pipe.Exec(ctx) // each command's error is read below
		for i, cmd := range cmds {
			addr, err := cmd.Result()
			if errors.Is(err, redis.Nil) {
				continue // removed meanwhile
			}
			if err != nil {
				return err
			}
			out[strings.TrimPrefix(keys[i], prefix)] = addr
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("store: list plugins: %w", err)
	}
	return out, nil
}
