package store

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/redis/go-redis/v9/maintnotifications"
)

// Defaults of Config fields left at their zero value.
const (
	DefaultPrefix       = "ag"
	DefaultRetention    = 7 * 24 * time.Hour
	DefaultHistoryLimit = 10000
	// DefaultHistoryBytes bounds the event data a session stream holds.
	DefaultHistoryBytes = 32 << 20
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
	// HistoryLimit is the number of events a session stream keeps (up to
	// 64 more between trims). Zero means 10000.
	HistoryLimit int
	// HistoryBytes bounds the event data a session stream keeps: the
	// oldest events go first, the newest always stays. Zero means
	// DefaultHistoryBytes.
	HistoryBytes int64
	// ShellOutputBytes bounds the output a terminal's stream holds (the
	// oldest chunks go first). Zero means DefaultShellOutputBytes.
	ShellOutputBytes int
	// ShellRetention is how long an ended terminal's hash and output are
	// kept. Zero means DefaultShellRetention.
	ShellRetention time.Duration
	// PoolSize is the connection pool size. Zero means go-redis' default.
	PoolSize int
	// Standalone says the server is a single Redis, not a cluster (the
	// embedded store), so New does not ask it: one connection less at start.
	Standalone bool
	// Logger receives the store's logs. Nil means slog.Default().
	Logger *slog.Logger
}

// Store is agentgate's view of Redis.
type Store struct {
	// rdb is a *redis.Client on a single Redis, a *redis.ClusterClient on
	// a Redis Cluster (then cluster is set too).
	rdb     redis.UniversalClient
	cluster *redis.ClusterClient
	sc      *scriptSet
	k       keys
	cfg     Config
	// limits is the run scripts' stream limits argument, "<events> <bytes>".
	limits  string
	log     *slog.Logger
	floors  seqFloors
	claimed claims
	done    doneRuns
	// stop ends the store's own goroutines (recheckLoop, measureClock).
	stop     chan struct{}
	stopOnce sync.Once
	// repairedAt is when RunningSessions last rebuilt the indexes.
	repairMu   sync.Mutex
	repairedAt time.Time
	// deadAsks are the permission index's entries the last sweep found
	// pending nowhere (request id -> session id); SweepPermissionIndex
	// removes those the next sweep finds so again.
	deadAsks map[string]string
	// requeued is when Running last looked for the jobs of unclaimed runs.
	requeued requeueChecks

	// probe is closed when Redis answers again (WaitAvailable); nil while
	// nobody waits.
	probeMu sync.Mutex
	probe   chan struct{}

	// clock estimates Redis's clock, for deadlines Redis checks.
	clock redisClock

	// beatRDB is the heartbeats' own client (beatClient); nil until the
	// first heartbeat.
	beatMu  sync.Mutex
	beatRDB redis.UniversalClient

	// beforeEvictExit, set by tests, runs between an eviction's taking of
	// its victim's place and its ending of the victim.
	beforeEvictExit func(victim string)
}

// New connects to Redis and checks that it answers. A URL naming one node
// of a Redis Cluster, or several in go-redis' cluster form
// (redis://HOST:PORT?addr=HOST2:PORT2&…), gives a Store on the cluster.
func New(ctx context.Context, cfg Config) (*Store, error) {
	if cfg.URL == "" {
		return nil, errors.New("store: no Redis URL")
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
	if cfg.HistoryBytes <= 0 {
		cfg.HistoryBytes = DefaultHistoryBytes
	}
	if cfg.ShellOutputBytes <= 0 {
		cfg.ShellOutputBytes = DefaultShellOutputBytes
	}
	if cfg.ShellRetention <= 0 {
		cfg.ShellRetention = DefaultShellRetention
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	useLogger(cfg.Logger)
	s := &Store{k: keys{prefix: cfg.Prefix}, cfg: cfg, log: cfg.Logger,
		limits: fmt.Sprintf("%d %d", cfg.HistoryLimit, cfg.HistoryBytes)}
	rdb, cluster, answered, err := connect(ctx, cfg)
	if err != nil {
		return nil, err
	}
	s.rdb, s.cluster = rdb, cluster
	s.rdb.AddHook(metricsHook{})
	if cluster != nil {
		s.sc = shardedScripts()
	} else {
		s.sc = plainScripts()
	}
	if !answered {
		if err := s.Ping(ctx); err != nil {
			_ = s.rdb.Close()
			return nil, err
		}
	}
	s.stop = make(chan struct{})
	go s.recheckLoop()
	s.clock.measuring = true
	go s.measureClock()
	return s, nil
}

// connect opens the client cfg.URL asks for: a cluster client when the URL
// lists several nodes, or when the one node it names says it runs in
// cluster mode (INFO cluster), else a plain client. answered reports that
// Redis has answered a command on the client returned, so that a Ping
// would tell nothing more.
func connect(ctx context.Context, cfg Config) (redis.UniversalClient, *redis.ClusterClient, bool, error) {
	u, err := url.Parse(cfg.URL)
	if err != nil {
		return nil, nil, false, fmt.Errorf("store: parse Redis URL: %w", URLError(err))
	}
	if !u.Query().Has("addr") {
		opts, err := redis.ParseURL(cfg.URL)
		if err != nil {
			return nil, nil, false, fmt.Errorf("store: parse Redis URL: %w", parseError(err, cfg.URL, u))
		}
		if cfg.PoolSize > 0 {
			opts.PoolSize = cfg.PoolSize
		}
		trimHandshake(&opts.ClientName, &opts.DisableIdentity, &opts.MaintNotificationsConfig)
		if cfg.Standalone {
			return redis.NewClient(opts), nil, false, nil
		}
		// Asked on database 0: a cluster refuses SELECT.
		probeOpts := *opts
		probeOpts.DB = 0
		probe := redis.NewClient(&probeOpts)
		on, answered, err := clusterEnabled(ctx, probe)
		if answered && !on && opts.DB == 0 {
			// The probe is the client asked for, and its connection the
			// first of the pool: a process starting (behind a load
			// balancer, often) opens one connection fewer and makes three
			// round trips fewer before it is ready.
			return probe, nil, true, nil
		}
		_ = probe.Close()
		if err != nil || !on {
			// An error is left to Ping, which reports it as an outage.
			return redis.NewClient(opts), nil, false, nil
		}
		if opts.DB != 0 {
			return nil, nil, false, fmt.Errorf("store: Redis Cluster has only database 0, the URL names %d", opts.DB)
		}
		// The cluster form of the same URL, without the database.
		u.Path = ""
	}
	opts, err := redis.ParseClusterURL(u.String())
	if err != nil {
		return nil, nil, false, fmt.Errorf("store: parse Redis Cluster URL: %w", parseError(err, u.String(), u))
	}
	if cfg.PoolSize > 0 {
		opts.PoolSize = cfg.PoolSize
	}
	tuneClusterRetries(opts)
	trimHandshake(&opts.ClientName, &opts.DisableIdentity, &opts.MaintNotificationsConfig)
	c := redis.NewClusterClient(opts)
	return c, c, false, nil
}

// clientName names agentgate's connections in CLIENT LIST, unless the
// URL's client_name does.
const clientName = "agentgate"

// trimHandshake drops two of the round trips go-redis makes on each new
// connection after HELLO: CLIENT SETINFO (the library's name and version;
// the connection is named in HELLO instead, at no cost) and CLIENT
// MAINT_NOTIFICATIONS (maintenance notices of Redis Enterprise and Redis
// Cloud, which other servers refuse). A process opens its connections as
// it starts and again after an outage, when every round trip is waited for.
func trimHandshake(name *string, noIdentity *bool, maint **maintnotifications.Config) {
	if *name == "" {
		*name = clientName
	}
	*noIdentity = true
	*maint = &maintnotifications.Config{Mode: maintnotifications.ModeDisabled}
}

// tuneClusterRetries lets a command ride out a failover: a master that
// dies is replaced after cluster-node-timeout plus an election (about 5 s
// with a 3 s timeout), during which its slots answer CLUSTERDOWN or do not
// answer at all. go-redis retries those with backoff, following MOVED to the
// promoted replica once it refreshed the slot map; the defaults (3 tries,
// at most 1 s apart) give up too early. Callers that see an error anyway
// (Unavailable) wait for Redis and write again.
func tuneClusterRetries(o *redis.ClusterOptions) {
	if o.MaxRetries == 0 {
		o.MaxRetries = 8
	}
	if o.MaxRedirects == 0 {
		o.MaxRedirects = 8
	}
	if o.MaxRetryBackoff == 0 {
		o.MaxRetryBackoff = 1500 * time.Millisecond
	}
}

// clusterEnabled asks one node whether it runs in cluster mode, and
// reports whether it answered. A server without INFO cluster (miniredis)
// is not a cluster; one that refuses the question (a wrong password) is
// left to the next command to report.
func clusterEnabled(ctx context.Context, rdb *redis.Client) (on, answered bool, err error) {
	info, err := rdb.Info(ctx, "cluster").Result()
	if err != nil {
		if Unavailable(err) {
			return false, false, err
		}
		return false, false, nil
	}
	return strings.Contains(info, "cluster_enabled:1"), true, nil
}

// Cluster reports whether the store runs on a Redis Cluster.
func (s *Store) Cluster() bool { return s.cluster != nil }

// Ping checks that Redis answers.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.rdb.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("store: ping Redis: %w", err)
	}
	return nil
}

// Close releases the connections.
func (s *Store) Close() error {
	s.stopOnce.Do(func() { close(s.stop) })
	s.beatMu.Lock()
	if s.beatRDB != nil {
		_ = s.beatRDB.Close()
	}
	s.beatMu.Unlock()
	return s.rdb.Close()
}

// Prefix is the key prefix in use.
func (s *Store) Prefix() string { return s.cfg.Prefix }
