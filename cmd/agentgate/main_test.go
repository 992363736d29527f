package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"regexp"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/handlers"
	"github.com/agentgate/agentgate/store/storetest"
)

func TestOptionPrecedence(t *testing.T) {
	t.Setenv("AGENTGATE_LISTEN", "127.0.0.1:9000")
	t.Setenv("AGENTGATE_RETENTION", "2d")
	t.Setenv("AGENTGATE_KEY_PREFIX", "fromenv")
	var c config
	fs, finish := newFlags("serve", io.Discard, &c)
	require.NoError(t, fs.Parse([]string{"--key-prefix", "fromflag"}))
	require.NoError(t, finish())
	require.Equal(t, "127.0.0.1:9000", c.Listen, "env over default")
	require.Equal(t, "fromflag", c.KeyPrefix, "flag over env")
	require.Equal(t, 48*time.Hour, c.Retention)
	require.Equal(t, 10*time.Second, c.HeartbeatTTL, "default")
	require.Equal(t, int64(1<<20), c.MaxMessageSize)
	require.Equal(t, 10000, c.MaxConnections)
	require.Equal(t, 64, c.MaxSocketsPerUser)
	require.Equal(t, 50, c.MaxFrameRate)
	require.Equal(t, "claude", c.ClaudeBin)
	require.Equal(t, 64<<10, c.ShellWindow)
}

func TestOptionErrors(t *testing.T) {
	for _, args := range [][]string{
		{"--auth", "basic"},
		{"--retention", "soon"},
		{"--heartbeat-ttl", "-1s"},
		{"--max-message-size", "12"},
		{"--max-connections", "0"},
		{"--max-sockets-per-user", "many"},
		{"--max-frame-rate", "-5"},
		{"--shell-window", "4096"},
		{"--shell-window", "1GB"},
	} {
		var c config
		fs, finish := newFlags("serve", io.Discard, &c)
		require.NoError(t, fs.Parse(args))
		require.Error(t, finish(), args)
	}
}

// TestLogOptions: --log-level and --log-format take their values in any
// case and refuse others, naming the valid ones (`--log-level verbose` was
// taken as info, `--log-format JSON` as text, without a word).
func TestLogOptions(t *testing.T) {
	for _, tc := range []struct {
		args    []string
		refused string // what the error names; empty: taken
		json    bool
		debug   bool
	}{
		{args: nil},
		{args: []string{"--log-format", "JSON", "--log-level", "Debug"}, json: true, debug: true},
		{args: []string{"--log-format", "text", "--log-level", "WARN"}},
		{args: []string{"--log-level", "verbose"}, refused: "debug, info, warn or error"},
		{args: []string{"--log-level", "info+2"}, refused: "debug, info, warn or error"},
		{args: []string{"--log-level", ""}, refused: "debug, info, warn or error"},
		{args: []string{"--log-format", "logfmt"}, refused: "text or json"},
	} {
		var c config
		fs, finish := newFlags("serve", io.Discard, &c)
		require.NoError(t, fs.Parse(tc.args))
		err := finish()
		if tc.refused != "" {
			require.ErrorContains(t, err, tc.refused, tc.args)
			continue
		}
		require.NoError(t, err, tc.args)
		var out bytes.Buffer
		c.logger(&out).Debug("hello")
		require.Equal(t, tc.debug, out.Len() > 0, "%v: debug logged", tc.args)
		c.logger(&out).Error("hello")
		require.Equal(t, tc.json, strings.HasPrefix(out.String(), "{"), "%v: JSON", tc.args)
	}
}

// TestParseDuration: Go durations and whole days; a number of days a
// time.Duration cannot hold is refused (it wrapped: `token --ttl 200000d`
// printed a token that had expired in 1987, `--retention 200000d` was
// negative).
func TestParseDuration(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration // 0: refused
	}{
		{"7d", 7 * 24 * time.Hour},
		{"90m", 90 * time.Minute},
		{"106751d", 106751 * 24 * time.Hour}, // the most a Duration holds
		{"106752d", 0},
		{"200000d", 0},
		{"9223372036854775807d", 0},
		{"99999999999999999999d", 0},
		{"2562048h", 0}, // past a Duration too, refused by time.ParseDuration
		{"0d", 0},
		{"-1d", 0},
		{"1.5d", 0},
		{"d", 0},
		{"0s", 0},
		{"soon", 0},
	} {
		d, err := parseDuration(tc.in)
		if tc.want == 0 {
			require.Error(t, err, tc.in)
			continue
		}
		require.NoError(t, err, tc.in)
		require.Equal(t, tc.want, d, tc.in)
	}
	err := run(context.Background(), []string{"token", "--user", "alice", "--jwt-secret", "s3cret-s3cret-s3cret-s3cret-s3cret", "--ttl", "200000d"}, io.Discard, io.Discard)
	require.ErrorContains(t, err, "too long")
	var c config
	fs, finish := newFlags("serve", io.Discard, &c)
	require.NoError(t, fs.Parse([]string{"--retention", "200000d"}))
	require.ErrorContains(t, finish(), "--retention")
}

func TestToken(t *testing.T) {
	var out, errOut bytes.Buffer
	err := run(context.Background(), []string{"token", "--user", "alice", "--admin", "--ttl", "1h", "--jwt-secret", "s3cret-s3cret-s3cret-s3cret-s3cret"}, &out, &errOut)
	require.NoError(t, err)
	lines := strings.Split(strings.TrimRight(out.String(), "\n"), "\n")
	require.Len(t, lines, 1, "the token alone on one line")
	auth := handlers.Auth{Mode: handlers.AuthJWT, Secret: []byte("s3cret-s3cret-s3cret-s3cret-s3cret")}
	req, _ := http.NewRequest(http.MethodGet, "/ws?token="+lines[0], nil)
	user, err := auth.Authenticate(req)
	require.NoError(t, err)
	require.Equal(t, "alice", user.Name)
	require.True(t, user.Admin)

	for _, args := range [][]string{
		{"token", "--jwt-secret", "s"},
		{"token", "--user", "alice"},
		{"token", "--user", "a:b", "--jwt-secret", "s"},
		{"token", "--user", "alice", "--jwt-secret", "s", "--ttl", "forever"},
		{"token", "--user", "alice", "--jwt-secret", "s", "extra"},
	} {
		require.Error(t, run(context.Background(), args, io.Discard, io.Discard), args)
	}
	// A short secret can be guessed offline from any token it signed.
	err = run(context.Background(), []string{"token", "--user", "alice", "--jwt-secret", "changeme"}, io.Discard, io.Discard)
	require.ErrorContains(t, err, "at least 32")
}

// TestGatewayRefusesAShortSecret: a gateway does not start with a JWT
// secret under 32 bytes; the embedded default makes a long one.
func TestGatewayRefusesAShortSecret(t *testing.T) {
	t.Setenv("AGENTGATE_REDIS_URL", "redis://127.0.0.1:1")
	t.Setenv("AGENTGATE_JWT_SECRET", "changeme")
	err := run(context.Background(), []string{"gateway", "--listen", "127.0.0.1:0"}, io.Discard, io.Discard)
	require.ErrorContains(t, err, "has 8 bytes, at least 32")
}

func TestGatewayAndWorkerNeedRedis(t *testing.T) {
	t.Setenv("AGENTGATE_REDIS_URL", "")
	for _, cmd := range []string{"gateway", "worker", "migrate"} {
		err := run(context.Background(), []string{cmd}, io.Discard, io.Discard)
		require.ErrorContains(t, err, "--redis", cmd)
	}
	require.ErrorContains(t, run(context.Background(), []string{"serve", "--listen", "127.0.0.1:0", "oops"}, io.Discard, io.Discard), "unexpected argument")
	err := run(context.Background(), []string{"nonsense"}, io.Discard, io.Discard)
	require.ErrorContains(t, err, "unknown command")
	require.ErrorIs(t, run(context.Background(), nil, io.Discard, io.Discard), flag.ErrHelp)
}

// TestAdminArguments: the admin commands refuse positional arguments they
// do not take, or miss, with their usage, before Redis is dialled
// (`sessions ls alice` listed every session, `migrate foo` migrated).
func TestAdminArguments(t *testing.T) {
	url := storetest.Miniredis(t) // up: before, the commands ran
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"sessions", "ls", "alice"}, `sessions ls: unexpected argument "alice"; usage: agentgate sessions ls [--running]`},
		{[]string{"sessions", "ls", "--running", "alice"}, `sessions ls: unexpected argument "alice"`},
		{[]string{"sessions", "show"}, `sessions show: missing argument; usage: agentgate sessions show ID`},
		{[]string{"sessions", "show", "a", "b"}, `sessions show: unexpected argument "b"`},
		{[]string{"sessions", "abort", "a", "b"}, `sessions abort: unexpected argument "b"`},
		{[]string{"migrate", "foo"}, `migrate: unexpected argument "foo"; usage: agentgate migrate`},
		{[]string{"plugins", "ls", "x"}, `plugins ls: unexpected argument "x"`},
		{[]string{"plugins", "rm", "a", "b"}, `plugins rm: unexpected argument "b"`},
		{[]string{"plugins", "add", "x"}, `plugins add: missing argument; usage: agentgate plugins add NAME HOST:PORT`},
	} {
		err := run(context.Background(), append(tc.args, "--redis", url), io.Discard, io.Discard)
		require.ErrorContains(t, err, tc.want, tc.args)
	}
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"migrate", "--redis", url}, &out, io.Discard))
	require.Contains(t, out.String(), "key schema at version", "no argument: migrated")
}

// TestSubcommandGroupHelp: `agentgate help sessions` and `help plugins`,
// as the usage promises, and -h and --help after them, show their
// subcommands and flags the way `help serve` does (they said
// `unknown subcommand "-h"`); `help X` succeeds (it exited 2).
func TestSubcommandGroupHelp(t *testing.T) {
	for _, tc := range []struct {
		args []string
		want []string
	}{
		{[]string{"help", "sessions"}, []string{"agentgate sessions ls [--running]", "agentgate sessions show ID", "agentgate sessions abort ID", "-running", "-redis"}},
		{[]string{"sessions", "-h"}, []string{"agentgate sessions ls [--running]"}},
		{[]string{"sessions", "--help"}, []string{"agentgate sessions ls [--running]"}},
		{[]string{"help", "plugins"}, []string{"agentgate plugins add NAME HOST:PORT", "agentgate plugins rm NAME", "agentgate plugins ls", "-redis"}},
		{[]string{"plugins", "--help"}, []string{"agentgate plugins add NAME HOST:PORT"}},
		{[]string{"help", "serve"}, []string{"-heartbeat-ttl"}},
	} {
		var out, errOut bytes.Buffer
		err := run(context.Background(), tc.args, &out, &errOut)
		if tc.args[0] == "help" {
			require.NoError(t, err, "help asked for is an answer (exit 0): %v", tc.args)
		} else {
			require.ErrorIs(t, err, flag.ErrHelp, tc.args)
		}
		for _, w := range tc.want {
			require.Contains(t, errOut.String(), w, tc.args)
		}
		require.NotContains(t, errOut.String(), "unknown subcommand", tc.args)
	}
}

// TestServeWithNothingConfigured is the one-command default: an embedded
// store, a random secret, and a login URL that works.
func TestServeWithNothingConfigured(t *testing.T) {
	for _, env := range []string{"AGENTGATE_REDIS_URL", "AGENTGATE_JWT_SECRET", "AGENTGATE_LISTEN"} {
		t.Setenv(env, "")
	}
	t.Setenv("AGENTGATE_WORKSPACES", t.TempDir())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	outR, outW := io.Pipe()
	done := make(chan error, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--listen", "127.0.0.1:0"}, outW, io.Discard)
		outW.Close()
	}()

	var login string
	sc := bufio.NewScanner(outR)
	for sc.Scan() {
		if m := regexp.MustCompile(`Open (http://\S+)`).FindStringSubmatch(sc.Text()); m != nil {
			login = m[1]
			break
		}
	}
	go func() { _, _ = io.Copy(io.Discard, outR) }()
	require.NotEmpty(t, login)
	u, err := url.Parse(login)
	require.NoError(t, err)
	token := u.Query().Get("token")
	require.NotEmpty(t, token)

	resp, err := http.Get("http://" + u.Host + "/readyz")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	req, _ := http.NewRequest(http.MethodGet, "http://"+u.Host+"/api/auth/user", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err = http.DefaultClient.Do(req)
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode, "the printed token logs in")

	page, err := http.Get(login)
	require.NoError(t, err)
	body, _ := io.ReadAll(page.Body)
	page.Body.Close()
	require.Contains(t, string(body), "agentgate")

	stopServe(t, cancel, done)
}

func TestHealthcheck(t *testing.T) {
	var ready atomic.Bool
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/readyz" || !ready.Load() {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	_, port, err := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))
	require.NoError(t, err)

	for _, tc := range []struct {
		name  string
		args  []string
		ready bool
		ok    bool
	}{
		{"listen on a wildcard probes loopback", []string{"--listen", "0.0.0.0:" + port}, true, true},
		{"listen on loopback", []string{"--listen", "127.0.0.1:" + port}, true, true},
		{"url", []string{"--url", srv.URL + "/readyz"}, true, true},
		{"draining", []string{"--url", srv.URL + "/readyz"}, false, false},
		{"nothing listens", []string{"--listen", "127.0.0.1:1", "--timeout", "1s"}, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ready.Store(tc.ready)
			var out, errOut bytes.Buffer
			err := run(context.Background(), append([]string{"healthcheck"}, tc.args...), &out, &errOut)
			if tc.ok {
				require.NoError(t, err)
				require.Contains(t, out.String(), "200 OK")
			} else {
				require.Error(t, err)
			}
		})
	}
}

// TestHealthcheckTarget: the address `agentgate healthcheck` probes follows
// the settings of the process it checks: --listen, or with --metrics
// --metrics-listen (the worker image's HEALTHCHECK, which hard-coded
// 127.0.0.1:9090 and so failed for good once AGENTGATE_METRICS_LISTEN
// was changed or emptied).
func TestHealthcheckTarget(t *testing.T) {
	for _, tc := range []struct {
		listen, metricsListen, url string
		metrics                    bool
		want                       string
	}{
		{"0.0.0.0:8080", "", "", false, "http://127.0.0.1:8080/readyz"},
		{"10.1.2.3:8080", "", "", false, "http://10.1.2.3:8080/readyz"},
		{"[::1]:8080", "", "", false, "http://[::1]:8080/readyz"},
		{"0.0.0.0:8080", "0.0.0.0:9090", "", true, "http://127.0.0.1:9090/healthz"},
		{"0.0.0.0:8080", ":9191", "", true, "http://127.0.0.1:9191/healthz"},
		{"0.0.0.0:8080", "[::]:9191", "", true, "http://127.0.0.1:9191/healthz"},
		{"0.0.0.0:8080", "127.0.0.1:9292", "", true, "http://127.0.0.1:9292/healthz"},
		{"0.0.0.0:8080", "", "", true, ""},
		{"0.0.0.0:8080", "0.0.0.0:9090", "http://x/y", true, "http://x/y"},
	} {
		got, err := healthcheckTarget(config{Listen: tc.listen, MetricsListen: tc.metricsListen}, tc.url, tc.metrics)
		require.NoError(t, err)
		require.Equal(t, tc.want, got, "%+v", tc)
	}
	_, err := healthcheckTarget(config{MetricsListen: "9090"}, "", true)
	require.ErrorContains(t, err, "--metrics-listen")

	// Through the command and the environment, as the image runs it.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/healthz" {
			http.NotFound(w, r)
			return
		}
		_, _ = io.WriteString(w, "ok")
	}))
	t.Cleanup(srv.Close)
	_, port, err := net.SplitHostPort(strings.TrimPrefix(srv.URL, "http://"))
	require.NoError(t, err)
	t.Setenv("AGENTGATE_METRICS_LISTEN", "0.0.0.0:"+port)
	var out bytes.Buffer
	require.NoError(t, run(context.Background(), []string{"healthcheck", "--metrics"}, &out, io.Discard))
	require.Contains(t, out.String(), "200 OK")
	t.Setenv("AGENTGATE_METRICS_LISTEN", "")
	out.Reset()
	require.NoError(t, run(context.Background(), []string{"healthcheck", "--metrics"}, &out, io.Discard), "no listener: nothing to probe")
	require.Contains(t, out.String(), "nothing to probe")
}

// stopServe cancels a running `serve` and waits for it to return cleanly.
func stopServe(t *testing.T, cancel context.CancelFunc, done <-chan error) {
	t.Helper()
	cancel()
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(20 * time.Second):
		t.Fatal("serve did not stop")
	}
}

// TestBadRedisURLHidesPassword: a Redis URL that does not parse (a password
// with a '/' that is not percent-encoded) is refused without printing the
// URL or a piece of its password, at once (the gateway waited for Redis
// for good, as if it were down), by a gateway and by a worker with per-user
// accounts, which parses it first.
func TestBadRedisURLHidesPassword(t *testing.T) {
	t.Setenv("AGENTGATE_REDIS_URL", "redis://:pw1/pw2@127.0.0.1:1/0")
	t.Setenv("AGENTGATE_JWT_SECRET", strings.Repeat("s", 32))
	for _, args := range [][]string{
		{"gateway", "--listen", "127.0.0.1:0"},
		{"worker", "--user-uids", "20000-20099", "--metrics-listen", "127.0.0.1:0"},
	} {
		var errOut bytes.Buffer
		err := run(context.Background(), args, io.Discard, &errOut)
		require.ErrorContains(t, err, "parse", args)
		require.NotContains(t, err.Error()+errOut.String(), "pw1", args)
		require.NotContains(t, err.Error()+errOut.String(), "pw2", args)
	}
}

// TestPlaceholderSecretsRefused: the example Secret's values (public, and
// long enough for the length check) start neither a gateway, a worker, nor
// the token command.
func TestPlaceholderSecretsRefused(t *testing.T) {
	const jwt = "change-me--make-one-with--openssl-rand-hex-32"
	err := run(context.Background(), []string{"token", "--user", "alice", "--jwt-secret", jwt}, io.Discard, io.Discard)
	require.ErrorContains(t, err, "placeholder")
	require.ErrorContains(t, err, "openssl rand -hex 32")
	require.NotContains(t, err.Error(), jwt)
	err = run(context.Background(), []string{"token", "--user", "alice", "--jwt-secret", strings.ToUpper(jwt)}, io.Discard, io.Discard)
	require.ErrorContains(t, err, "placeholder")

	t.Setenv("AGENTGATE_REDIS_URL", "redis://:s3cret-s3cret@127.0.0.1:1/0")
	t.Setenv("AGENTGATE_JWT_SECRET", jwt)
	err = run(context.Background(), []string{"gateway", "--listen", "127.0.0.1:0"}, io.Discard, io.Discard)
	require.ErrorContains(t, err, "placeholder")
	require.ErrorContains(t, err, "openssl rand -hex 32")

	t.Setenv("AGENTGATE_JWT_SECRET", strings.Repeat("s", 32))
	t.Setenv("AGENTGATE_REDIS_URL", "redis://:change-me--make-one-with--openssl-rand-hex-24@127.0.0.1:1/0")
	for _, cmd := range []string{"gateway", "worker"} {
		err = run(context.Background(), []string{cmd, "--listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0"}, io.Discard, io.Discard)
		require.ErrorContains(t, err, "placeholder password", cmd)
		require.NotContains(t, err.Error(), "make-one-with", cmd)
	}
}
