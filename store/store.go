package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
)

// Defaults of Config fields left at their zero value.
const (
	DefaultPrefix       = "ag"
	DefaultRetention    = 7 * 24 * time.Hour
	DefaultHistoryLimit = 10000
	// DefaultShellOutputBytes bounds what a terminal's output stream holds.
	DefaultShellOutputBytes = 4 << 20
	// DefaultShellRetention is how long an ended terminal's output is kept,
	// for a reattach after `exit` to show its end.
	DefaultShellRetention = 10 * time.Minute
	// jobsMaxLen bounds the jobs stream in case acked jobs were not deleted.
	jobsMaxLen = 100000
)

// Config configures a Store.
type Config struct {
	// URL is a redis:// or rediss:// URL. Required.
	URL string
	// Prefix starts every key. Zero means "ag".
	Prefix string
	// Retention is how long a finished session's event stream is kept.
	// Zero means 7 days.
	Retention time.Duration
	// HistoryLimit is the number of events a session stream keeps (trimmed
	// approximately). Zero means 10000.
	HistoryLimit int
	// ShellOutputBytes bounds the output a terminal's stream holds (the
	// oldest chunks go first). Zero means DefaultShellOutputBytes.
	ShellOutputBytes int
	// ShellRetention is how long an ended terminal's hash and output are
	// kept. Zero means DefaultShellRetention.
	ShellRetention time.Duration
	// PoolSize is the connection pool size. Zero means go-redis' default.
	PoolSize int
	// Logger receives the store's logs. Nil means slog.Default().
	Logger *slog.Logger
}

// Store is agentgate's view of Redis.
type Store struct {
	rdb *redis.Client
	k   keys
	cfg Config
	log *slog.Logger

	// probe is closed when Redis answers again (WaitAvailable); nil while
	// nobody waits.
	probeMu sync.Mutex
	probe   chan struct{}
}

// New connects to Redis and checks that it answers.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.URL == "" {
		return nil, errors.New("store: no Redis URL")
	}
	opts, err := redis.ParseURL(cfg.URL)
	if err != nil {
		return nil, fmt.Errorf("store: parse Redis URL: %w", err)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = DefaultPrefix
	}
	if cfg.Retention <= 0 {
		cfg.Retention = DefaultRetention
	}
	if cfg.HistoryLimit <= 0 {
		cfg.HistoryLimit = DefaultHistoryLimit
	}
	if cfg.ShellOutputBytes <= 0 {
		cfg.ShellOutputBytes = DefaultShellOutputBytes
	}
	if cfg.ShellRetention <= 0 {
		cfg.ShellRetention = DefaultShellRetention
	}
	if cfg.PoolSize > 0 {
		opts.PoolSize = cfg.PoolSize
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	useLogger(cfg.Logger)
	s := &Store{rdb: redis.NewClient(opts), k: keys{prefix: cfg.Prefix}, cfg: cfg, log: cfg.Logger}
	s.rdb.AddHook(metricsHook{})
	if err := s.Ping(ctx); err != nil {
		_ = s.rdb.Close()
		return nil, err
	}
	return s, nil
}

// Ping checks that Redis answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("store: ping Redis: %w", err)
	}
	return nil
}

// Close releases the connections.
func (s *Store) Close() error { return s.rdb.Close() }

// Prefix is the key prefix in use.
func (s *Store) Prefix() string { return s.cfg.Prefix }
