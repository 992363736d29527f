package main

import (
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/user"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/handlers"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/workers"
)

// config is the configuration of PROTOCOL §1: every flag has an environment
// variable of the same meaning; a flag given on the command line wins over
// the variable, which wins over the default.
type config struct {
	Listen            string
	Redis             string
	JWTSecret         string
	TrustedProxies    []netip.Prefix
	Auth              string
	UserHeader        string
	Workspaces        string
	KeyPrefix         string
	AllowedOrigins    string
	LogFormat         string // text or json
	LogLevel          slog.Level
	Retention         time.Duration
	HeartbeatInterval time.Duration
	HeartbeatTTL      time.Duration
	MaxMessageSize    int64
	MaxConnections    int
	MaxSocketsPerUser int
	MaxFrameRate      int
	PublicHosts       string
	DrainTimeout      time.Duration
	DrainGrace        time.Duration
	MetricsListen     string
	LinkListen        string
	LinkAdvertise     string
	CPUProfile        string
	ShellDetach       time.Duration
	PermissionTimeout time.Duration
	WatchInterval     time.Duration
	PaceInterval      time.Duration
	ClaudeBin         string
	CursorBin         string
	CodexBin          string
	GeminiBin         string
	ProviderEnv       []string
	UserUIDs          [2]int // first and last; zero: users' processes run as the worker
	UserHomes         string
	UserMaxProcs      int
	MaxRunsPerUser    int
	MaxTermsPerUser   int
	MaxSessions       int
	MaxRuns           int
	MaxTerminals      int
	ShellHistory      int
	HistoryBytes      int64
	ShellWindow       int
	ShellRetention    time.Duration
}

// option is one row of the flag table.
type option struct {
	flag, env, def, usage string
	set                   func(c *config, v string) error
}

// options is the flag table. Flag names are the contract of PROTOCOL §1.
var options = []option{
	{"listen", "AGENTGATE_LISTEN", "127.0.0.1:8080", "address the gateway listens on", func(c *config, v string) error { c.Listen = v; return nil }},
	{"redis", "AGENTGATE_REDIS_URL", "", "Redis URL (redis://…); empty starts the embedded store (serve only)", func(c *config, v string) error { c.Redis = v; return nil }},
	{"jwt-secret", "AGENTGATE_JWT_SECRET", "", "HS256 secret of the tokens; required with --redis", func(c *config, v string) error { c.JWTSecret = v; return nil }},
	{"auth", "AGENTGATE_AUTH", "jwt", "authentication: jwt, or platform (trust the user header of a proxy)", func(c *config, v string) error { c.Auth = v; return nil }},
	{"trusted-proxies", "AGENTGATE_TRUSTED_PROXIES", "", "with --auth platform (required there): addresses and networks of the proxies whose user header is taken, comma-separated (10.0.0.2, 10.1.0.0/16); a request from any other peer is refused", func(c *config, v string) (err error) {
		c.TrustedProxies, err = handlers.ParseTrustedProxies(v)
		return err
	}},
	{"user-header", "AGENTGATE_USER_HEADER", "X-Forwarded-User", "header that names the user in platform mode", func(c *config, v string) error { c.UserHeader = v; return nil }},
	{"workspaces", "AGENTGATE_WORKSPACES", "", "colon-separated roots project paths must resolve under (default: home directory)", func(c *config, v string) error { c.Workspaces = v; return nil }},
	{"key-prefix", "AGENTGATE_KEY_PREFIX", "ag", "prefix of every Redis key", func(c *config, v string) error { c.KeyPrefix = v; return nil }},
	{"allowed-origins", "AGENTGATE_ALLOWED_ORIGINS", "", "comma-separated browser origins allowed on the sockets (default: same host)", func(c *config, v string) error { c.AllowedOrigins = v; return nil }},
	{"log-format", "AGENTGATE_LOG_FORMAT", "text", "log format: text or json", func(c *config, v string) error {
		switch f := strings.ToLower(v); f {
		case "text", "json":
			c.LogFormat = f
			return nil
		}
		return fmt.Errorf("want text or json, not %q", v)
	}},
	{"log-level", "AGENTGATE_LOG_LEVEL", "info", "log level: debug, info, warn, error", func(c *config, v string) error {
		level, ok := logLevels[strings.ToLower(v)]
		if !ok {
			return fmt.Errorf("want debug, info, warn or error, not %q", v)
		}
		c.LogLevel = level
		return nil
	}},
	{"retention", "AGENTGATE_RETENTION", "7d", "how long the event stream of a finished session is kept", durationSetter(func(c *config) *time.Duration { return &c.Retention })},
	{"heartbeat-interval", "AGENTGATE_HEARTBEAT_INTERVAL", "2s", "how often a worker refreshes its heartbeat", durationSetter(func(c *config) *time.Duration { return &c.HeartbeatInterval })},
	{"heartbeat-ttl", "AGENTGATE_HEARTBEAT_TTL", "10s", "a worker silent this long is dead and its runs are reaped", durationSetter(func(c *config) *time.Duration { return &c.HeartbeatTTL })},
	{"drain-grace", "AGENTGATE_DRAIN_GRACE", "0", "on shutdown, how long a gateway answers /readyz with 503 and refuses new sockets before it closes its sockets with 1001 (time for a load balancer to stop routing to it; 0: close at once)", durationOrOffSetter(func(c *config) *time.Duration { return &c.DrainGrace })},
	{"metrics-listen", "AGENTGATE_METRICS_LISTEN", "", "address /metrics, /healthz and /readyz are served on (/readyz: 200 once a worker is registered); a gateway then serves /metrics here only, not on --listen (empty: a gateway serves /metrics on --listen, a worker none)", func(c *config, v string) error { c.MetricsListen = v; return nil }},
	{"link-listen", "AGENTGATE_LINK_LISTEN", "", "address a worker takes terminal input and acks from gateways on, past Redis (empty: none, but 127.0.0.1:0 for serve; off: none)", func(c *config, v string) error { c.LinkListen = v; return nil }},
	{"link-advertise", "AGENTGATE_LINK_ADVERTISE", "", "HOST:PORT gateways dial for a worker's link (default: --link-listen, its host, when unspecified, replaced by this machine's address toward Redis)", func(c *config, v string) error { c.LinkAdvertise = v; return nil }},
	{"cpu-profile", "AGENTGATE_CPU_PROFILE", "", "write a CPU profile (go tool pprof) of the process to this file until it stops (for benchmarks)", func(c *config, v string) error { c.CPUProfile = v; return nil }},
	{"drain-timeout", "AGENTGATE_DRAIN_TIMEOUT", "10s", "on shutdown, how long runs may finish before they are killed", durationSetter(func(c *config) *time.Duration { return &c.DrainTimeout })},
	{"permission-timeout", "AGENTGATE_PERMISSION_TIMEOUT", "55s", "how long a tool waits for the user's answer before it is denied (never for AskUserQuestion and ExitPlanMode)", durationSetter(func(c *config) *time.Duration { return &c.PermissionTimeout })},
	{"watch-interval", "AGENTGATE_WATCH_INTERVAL", "3s", "how often a worker polls the providers' session folders for sessions_updated (0 turns it off)", durationOrOffSetter(func(c *config) *time.Duration { return &c.WatchInterval })},
	{"pace-interval", "AGENTGATE_PACE_INTERVAL", "50ms", "quiet time after each frame a /ws client that uses no seq must see, as Claude Code UI's frontend needs (0 turns pacing off)", durationOrOffSetter(func(c *config) *time.Duration { return &c.PaceInterval })},
	{"shell-detach-timeout", "AGENTGATE_SHELL_DETACH_TIMEOUT", "30m", "a terminal no socket has watched for this long is killed", durationSetter(func(c *config) *time.Duration { return &c.ShellDetach })},
	{"max-message-size", "AGENTGATE_MAX_MESSAGE_SIZE", "1048576", "largest client frame in bytes; a larger one closes the socket with 1009 (a terminal paste is one frame)", func(c *config, v string) error {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1024 {
			return fmt.Errorf("must be a number of bytes, at least 1024")
		}
		c.MaxMessageSize = n
		return nil
	}},
	{"max-connections", "AGENTGATE_MAX_CONNECTIONS", "10000", "most connections the gateway holds open at once, sockets included; more wait in the kernel's backlog", countSetter(func(c *config) *int { return &c.MaxConnections })},
	{"max-sockets-per-user", "AGENTGATE_MAX_SOCKETS_PER_USER", "64", "most sockets one user holds open on a gateway; one more is refused with 429", countSetter(func(c *config) *int { return &c.MaxSocketsPerUser })},
	{"max-frame-rate", "AGENTGATE_MAX_FRAME_RATE", "50", "frames per second one user's sockets may send to a gateway together (burst: 4 seconds' worth)", countSetter(func(c *config) *int { return &c.MaxFrameRate })},
	{"public-hosts", "AGENTGATE_PUBLIC_HOSTS", "", "comma-separated host names browsers reach the gateway by, for the default origin check", func(c *config, v string) error { c.PublicHosts = v; return nil }},
	{"claude-bin", "AGENTGATE_CLAUDE_BIN", "claude", "Claude Code CLI", func(c *config, v string) error { c.ClaudeBin = v; return nil }},
	{"cursor-bin", "AGENTGATE_CURSOR_BIN", "cursor-agent", "Cursor agent CLI", func(c *config, v string) error { c.CursorBin = v; return nil }},
	{"codex-bin", "AGENTGATE_CODEX_BIN", "codex", "Codex CLI", func(c *config, v string) error { c.CodexBin = v; return nil }},
	{"gemini-bin", "AGENTGATE_GEMINI_BIN", "gemini", "Gemini CLI", func(c *config, v string) error { c.GeminiBin = v; return nil }},
	{"provider-env", "AGENTGATE_PROVIDER_ENV", strings.Join(workers.DefaultPassEnv, ","), "comma-separated variables of the worker's environment (names, or patterns such as ANTHROPIC_*) that provider CLIs and terminals get besides PATH, locale and TZ; AGENTGATE_* never passes", func(c *config, v string) error {
		c.ProviderEnv = []string{}
		for _, name := range strings.Split(v, ",") {
			if name = strings.TrimSpace(name); name == "" {
				continue
			}
			if _, err := path.Match(name, ""); err != nil || strings.ContainsAny(name, "= ") {
				return fmt.Errorf("%q is not a variable name or pattern", name)
			}
			c.ProviderEnv = append(c.ProviderEnv, name)
		}
		return nil
	}},
	{"user-uids", "AGENTGATE_USER_UIDS", "", "FIRST-LAST: run each user's CLIs and terminals under a uid of this range, with a home of their own (worker; needs root); empty runs them as the worker", func(c *config, v string) error {
		c.UserUIDs = [2]int{}
		if v == "" {
			return nil
		}
		first, last, ok := strings.Cut(v, "-")
		a, err1 := strconv.Atoi(first)
		b, err2 := strconv.Atoi(last)
		if !ok || err1 != nil || err2 != nil || a < 1000 || b < a {
			return fmt.Errorf("want FIRST-LAST with 1000 <= FIRST <= LAST, not %q", v)
		}
		c.UserUIDs = [2]int{a, b}
		return nil
	}},
	{"user-homes", "AGENTGATE_USER_HOMES", "/var/lib/agentgate/home", "folder of the users' homes (NAME inside) with --user-uids", func(c *config, v string) error { c.UserHomes = v; return nil }},
	{"user-max-procs", "AGENTGATE_USER_MAX_PROCS", "1024", "with --user-uids: most processes and threads one user's account has at once on the worker's host (RLIMIT_NPROC), where a fork bomb stops (0: no bound)", intSetter(func(c *config) *int { return &c.UserMaxProcs })},
	{"max-runs-per-user", "AGENTGATE_MAX_RUNS_PER_USER", "8", "most runs one user has running at once, on every gateway together (0: no limit)", intSetter(func(c *config) *int { return &c.MaxRunsPerUser })},
	{"max-terminals-per-user", "AGENTGATE_MAX_TERMINALS_PER_USER", "8", "most terminals one user has open at once, on every gateway together (0: no limit)", intSetter(func(c *config) *int { return &c.MaxTermsPerUser })},
	{"max-sessions-per-user", "AGENTGATE_MAX_SESSIONS_PER_USER", "5000", "most sessions one user keeps: a new one past it forgets their least recently active idle session, its events and its entry in their list (0: no limit)", intSetter(func(c *config) *int { return &c.MaxSessions })},
	{"max-runs", "AGENTGATE_MAX_RUNS", "32", "most runs one worker runs at once; more wait for a worker with room", intSetter(func(c *config) *int { return &c.MaxRuns })},
	{"max-terminals", "AGENTGATE_MAX_TERMINALS", "64", "most terminals one worker has open", intSetter(func(c *config) *int { return &c.MaxTerminals })},
	{"history-bytes", "AGENTGATE_HISTORY_BYTES", "33554432", "bytes of event data a session's stream keeps in Redis for replays; past them, or past 10,000 events, the oldest events go first", func(c *config, v string) error {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n < 1<<20 {
			return fmt.Errorf("must be a number of bytes, at least 1048576")
		}
		c.HistoryBytes = n
		return nil
	}},
	{"shell-history", "AGENTGATE_SHELL_HISTORY", "4194304", "bytes of a terminal's output kept in Redis for reattaching (the oldest go first)", func(c *config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 65536 {
			return fmt.Errorf("must be a number of bytes, at least 65536")
		}
		c.ShellHistory = n
		return nil
	}},
	{"shell-window", "AGENTGATE_SHELL_WINDOW", "65536", "bytes of a terminal's output that may be on their way to its sockets before the worker stops reading it (smaller: a Ctrl-C in a flood answers sooner; larger: a flood runs faster)", func(c *config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 16384 || n > 64<<20 {
			return fmt.Errorf("must be a number of bytes, from 16384 to 67108864")
		}
		c.ShellWindow = n
		return nil
	}},
	{"shell-retention", "AGENTGATE_SHELL_RETENTION", "10m", "how long an ended terminal's output is kept", durationSetter(func(c *config) *time.Duration { return &c.ShellRetention })},
}

// intSetter parses a whole number, 0 or more.
func intSetter(field func(*config) *int) func(*config, string) error {
	return func(c *config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 {
			return fmt.Errorf("want a whole number, 0 or more, not %q", v)
		}
		*field(c) = n
		return nil
	}
}

func durationSetter(field func(*config) *time.Duration) func(*config, string) error {
	return func(c *config, v string) error {
		d, err := parseDuration(v)
		if err != nil {
			return err
		}
		*field(c) = d
		return nil
	}
}

// countSetter parses a positive whole number.
func countSetter(field func(*config) *int) func(*config, string) error {
	return func(c *config, v string) error {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			return fmt.Errorf("must be a whole number, at least 1")
		}
		*field(c) = n
		return nil
	}
}

// durationOrOffSetter is durationSetter that also takes "0" for off.
func durationOrOffSetter(field func(*config) *time.Duration) func(*config, string) error {
	set := durationSetter(field)
	return func(c *config, v string) error {
		if v == "0" {
			*field(c) = 0
			return nil
		}
		return set(c, v)
	}
}

// maxDays is the most days a time.Duration holds (about 292 years).
const maxDays = math.MaxInt64 / int64(24*time.Hour)

// parseDuration accepts Go durations and a whole number of days ("7d").
func parseDuration(v string) (time.Duration, error) {
	if days, ok := strings.CutSuffix(v, "d"); ok {
		n, err := strconv.ParseInt(days, 10, 64)
		if err != nil || n <= 0 {
			return 0, fmt.Errorf("invalid duration %q", v)
		}
		if n > maxDays {
			// The product would wrap: a token's expiry in the past, a
			// negative retention.
			return 0, fmt.Errorf("duration %q is too long: at most %dd", v, maxDays)
		}
		return time.Duration(n) * 24 * time.Hour, nil
	}
	d, err := time.ParseDuration(v)
	if err != nil || d <= 0 {
		return 0, fmt.Errorf("invalid duration %q", v)
	}
	return d, nil
}

// bindOptions registers the flag table on fs. The returned function applies
// the environment and the defaults to what was not given as a flag.
func bindOptions(fs *flag.FlagSet, c *config) func() error {
	given := map[string]string{}
	for _, o := range options {
		fs.Func(o.flag, fmt.Sprintf("%s (env %s, default %q)", o.usage, o.env, o.def), func(v string) error {
			given[o.flag] = v
			return nil
		})
	}
	return func() error {
		for _, o := range options {
			v, ok := given[o.flag]
			if !ok {
				v, ok = os.LookupEnv(o.env)
			}
			if !ok {
				v = o.def
			}
			if err := o.set(c, v); err != nil {
				return fmt.Errorf("--%s / %s: %w", o.flag, o.env, err)
			}
		}
		switch c.Auth {
		case "jwt", "platform":
		default:
			return fmt.Errorf("--auth must be jwt or platform, not %q", c.Auth)
		}
		return nil
	}
}

// checkHeartbeat refuses a heartbeat interval over half the TTL, for the
// commands that run a worker: a heartbeat written less often than that is
// missing between refreshes, or expires at the first slow write, and the
// reaper ends the worker's runs as "worker lost".
func (c *config) checkHeartbeat() error {
	if 2*c.HeartbeatInterval > c.HeartbeatTTL {
		return fmt.Errorf("--heartbeat-interval (AGENTGATE_HEARTBEAT_INTERVAL) %s is more than half of --heartbeat-ttl (AGENTGATE_HEARTBEAT_TTL) %s: the worker's heartbeat would expire between refreshes and its runs be reaped as lost; make the TTL at least twice the interval",
			c.HeartbeatInterval, c.HeartbeatTTL)
	}
	return nil
}

// workspaces returns the configured roots, or the home directory.
func (c *config) workspaces() app.Workspaces {
	if c.Workspaces != "" {
		return app.ParseWorkspaces(c.Workspaces)
	}
	if a := c.accounts(); a != nil {
		// Each user works in their own home.
		return app.Workspaces{Roots: []string{filepath.Join(a.Homes, app.UserPlaceholder)}}
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return app.Workspaces{}
	}
	return app.Workspaces{Roots: []string{home}}
}

func (c *config) origins() []string { return splitList(c.AllowedOrigins) }

// publicHosts are the host names of --public-hosts and the one --listen
// names, if it names one rather than an address.
func (c *config) publicHosts() []string {
	hosts := splitList(c.PublicHosts)
	if host, _, err := net.SplitHostPort(c.Listen); err == nil && host != "" && net.ParseIP(host) == nil {
		hosts = append(hosts, host)
	}
	return hosts
}

// splitList splits a comma-separated list, dropping blanks.
func splitList(list string) []string {
	var out []string
	for _, v := range strings.Split(list, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// accounts is the worker's per-user accounts of --user-uids, nil without.
func (c *config) accounts() *workers.Accounts {
	if c.UserUIDs[0] == 0 {
		return nil
	}
	return &workers.Accounts{FirstUID: c.UserUIDs[0], LastUID: c.UserUIDs[1], Homes: c.UserHomes, MaxProcs: c.UserMaxProcs}
}

func (c *config) bins() map[app.Provider]string {
	return map[app.Provider]string{app.Claude: c.ClaudeBin, app.Cursor: c.CursorBin, app.Codex: c.CodexBin, app.Gemini: c.GeminiBin}
}

// storeConfig is the store of every command: the same prefix and
// retention whether a server or an admin command writes.
func (c *config) storeConfig(url string, log *slog.Logger) store.Config {
	return store.Config{
		URL: url, Prefix: c.KeyPrefix, Retention: c.Retention, Logger: log,
		ShellOutputBytes: c.ShellHistory, ShellRetention: c.ShellRetention, HistoryBytes: c.HistoryBytes,
	}
}

// logLevels are the levels --log-level takes, by their lower-case names.
var logLevels = map[string]slog.Level{
	"debug": slog.LevelDebug, "info": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError,
}

// logger builds the slog logger of --log-format and --log-level.
func (c *config) logger(w io.Writer) *slog.Logger {
	opts := &slog.HandlerOptions{Level: c.LogLevel}
	if c.LogFormat == "json" {
		return slog.New(slog.NewJSONHandler(w, opts))
	}
	return slog.New(slog.NewTextHandler(w, opts))
}

// localUser is the user the embedded default logs in: the OS user when its
// name is a valid agentgate user name.
func localUser() string {
	if u, err := user.Current(); err == nil && app.ValidUserName(u.Username) {
		return u.Username
	}
	return "local"
}

// pace is --pace-interval as handlers.Config takes it: there zero means the
// default and a negative value means off.
func (c *config) pace() time.Duration {
	if c.PaceInterval == 0 {
		return -1
	}
	return c.PaceInterval
}

// minSecretBytes is the shortest --jwt-secret taken: any user holds a token
// it signed, and can try guesses of a short secret offline until one
// signs the same token, then sign an admin's.
const minSecretBytes = 32

// placeholderPrefix starts every value of deploy/kubernetes's example
// Secret. Those values are public (they are in this repository), yet long
// enough to pass every other check: a cluster given the example as it is
// would run with a JWT secret anyone can sign an admin's token with, and a
// Redis password every user's terminal knows.
const placeholderPrefix = "change-me"

// isPlaceholder reports whether s is one of the example's placeholders.
func isPlaceholder(s string) bool {
	return strings.HasPrefix(strings.ToLower(s), placeholderPrefix)
}

// checkSecret refuses a JWT secret too short to resist an offline guess,
// and the example's placeholder.
func checkSecret(secret []byte) error {
	if isPlaceholder(string(secret)) {
		return fmt.Errorf("--jwt-secret (AGENTGATE_JWT_SECRET) is a placeholder (it starts with %q): it is public, and anyone could sign any user's or an admin's token with it (make one with: openssl rand -hex 32)", placeholderPrefix)
	}
	if len(secret) < minSecretBytes {
		return fmt.Errorf("--jwt-secret (AGENTGATE_JWT_SECRET) has %d bytes, at least %d are needed: a short secret can be guessed offline from any token it signed (make one with: openssl rand -hex 32)", len(secret), minSecretBytes)
	}
	return nil
}

// checkRedisURL refuses a Redis URL whose password is the example's
// placeholder: it is public, and the users' processes on the workers reach
// Redis. A URL that does not parse is left to the store, which reports it.
func checkRedisURL(redisURL string) error {
	u, err := url.Parse(redisURL)
	if err != nil {
		return nil
	}
	if pw, _ := u.User.Password(); isPlaceholder(pw) {
		return fmt.Errorf("--redis (AGENTGATE_REDIS_URL) has a placeholder password (it starts with %q): it is public (make one with: openssl rand -hex 24, and give it to Redis too)", placeholderPrefix)
	}
	return nil
}
