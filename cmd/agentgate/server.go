package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"time"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/handlers"
	"github.com/agentgate/agentgate/internal/metrics"
	"github.com/agentgate/agentgate/migrations"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/workers"
)

// loginTTL is the life of the token printed by the embedded default.
const loginTTL = 7 * 24 * time.Hour

// runServer runs `serve`, `gateway` or `worker` until ctx ends, then shuts
// down in order: sockets are closed with 1001 so clients move to another
// gateway, HTTP stops, runs drain (or are killed and completed as failed).
func runServer(ctx context.Context, mode string, args []string, stdout, stderr io.Writer) error {
	var c config
	fs, finish := newFlags(mode, stderr, &c)
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("agentgate %s: unexpected argument %q", mode, fs.Arg(0))
	}
	if err := finish(); err != nil {
		return err
	}
	if mode != "gateway" { // a worker runs here
		if err := c.checkHeartbeat(); err != nil {
			return err
		}
	}
	log := c.logger(stderr).With("role", mode)
	if c.CPUProfile != "" {
		stop, err := startCPUProfile(c.CPUProfile)
		if err != nil {
			return err
		}
		defer stop()
	}
	runsGateway, runsWorker := mode != "worker", mode != "gateway"
	if runsWorker && c.accounts() != nil {
		if err := checkIsolation(fs, c); err != nil {
			return err
		}
	}

	redisURL := c.Redis
	if err := checkRedisURL(redisURL); err != nil {
		return err
	}
	var embedded *store.Embedded
	if redisURL == "" {
		if mode != "serve" {
			return fmt.Errorf("agentgate %s needs --redis (AGENTGATE_REDIS_URL); only serve has an embedded store", mode)
		}
		var err error
		if embedded, err = store.StartEmbedded(); err != nil {
			return err
		}
		defer embedded.Close()
		redisURL = embedded.URL()
		log.Warn("using the embedded in-memory store: one machine only, and a restart forgets every session")
	}
	if runsGateway && c.Auth == handlers.AuthPlatform && len(c.TrustedProxies) == 0 {
		return errors.New("--auth platform needs --trusted-proxies (AGENTGATE_TRUSTED_PROXIES): the addresses of the proxies that set the user header; from any other peer, a request could name any user")
	}
	secret := []byte(c.JWTSecret)
	if runsGateway && c.Auth == handlers.AuthJWT && len(secret) == 0 {
		if embedded == nil {
			return errors.New("--jwt-secret (AGENTGATE_JWT_SECRET) is required with --redis")
		}
		secret = randomSecret()
	}
	if runsGateway && c.Auth == handlers.AuthJWT {
		if err := checkSecret(secret); err != nil {
			return err
		}
	}

	// Components run on their own contexts so shutdown can stop them in
	// order; one that fails by itself stops the process.
	var wg sync.WaitGroup
	failed := make(chan error, 2)
	background, stopBackground := context.WithCancel(context.Background())
	defer stopBackground()
	workerCtx, stopWorker := context.WithCancel(context.Background())
	defer stopWorker()

	// The listeners come first: while the process waits for Redis it is
	// alive (/healthz) and not ready (/readyz).
	var front frontHandler
	var httpServer *http.Server
	var addr string
	if runsGateway {
		ln, err := net.Listen("tcp", c.Listen)
		if err != nil {
			return fmt.Errorf("listen on %s: %w", c.Listen, err)
		}
		var limited net.Listener
		httpServer, limited = gatewayHTTP(&front, ln, c.MaxConnections, gatewayTimeouts, log)
		defer httpServer.Close()
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := httpServer.Serve(limited); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Error("http server", "err", err)
			}
		}()
		addr = ln.Addr().String()
	}
	workerReady := make(chan struct{}) // closed once the worker is registered
	if c.MetricsListen != "" {
		var ready <-chan struct{}
		if runsWorker {
			ready = workerReady
		}
		var gatewayReady http.Handler
		if runsGateway {
			gatewayReady = &front
		}
		metricsServer, err := serveMetrics(workerCtx, c.MetricsListen, ready, gatewayReady, log)
		if err != nil {
			return err
		}
		defer metricsServer.Close()
	}

	cfg := c.storeConfig(redisURL, log)
	cfg.Standalone = embedded != nil
	st, err := openStoreWhenUp(ctx, cfg, log)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped (SIGTERM) while waiting for Redis
		}
		return err
	}
	defer st.Close()
	migrateCtx, cancel := context.WithTimeout(ctx, 30*time.Second)
	apply := migrations.Apply
	if embedded != nil {
		// Nothing else can reach the embedded store: no lease to take.
		apply = migrations.ApplyUnshared
	}
	version, err := apply(migrateCtx, st)
	cancel()
	if err != nil {
		return err
	}

	reaper, err := workers.NewReaper(workers.ReaperConfig{Store: st, HeartbeatTTL: c.HeartbeatTTL, Logger: log})
	if err != nil {
		return err
	}
	wg.Add(1)
	go func() { defer wg.Done(); _ = reaper.Run(background) }()

	var worker *workers.Worker
	workerDone := make(chan struct{})
	if runsWorker {
		linkLn, linkAddr, err := c.linkListener(mode, redisURL)
		if err != nil {
			return err
		}
		if linkLn != nil {
			defer linkLn.Close()
			log.Info("worker link listening", "addr", linkLn.Addr().String(), "advertised", linkAddr)
			if c.LinkAdvertise == "" && linkOnlyHere(linkLn, linkAddr) {
				// Redis on loopback (a sidecar, a tunnel): the address
				// toward it is no address another machine can dial.
				log.Warn("worker link advertised on loopback, as Redis is reached there: gateways on other machines cannot dial it and send keystrokes through Redis; set --link-advertise HOST:PORT",
					"advertised", linkAddr)
			}
		}
		worker, err = workers.New(workers.Config{
			Store: st,
			Providers: map[app.Provider]workers.Provider{
				app.Claude: workers.ClaudeProvider{}, app.Codex: workers.CodexProvider{},
				app.Gemini: workers.GeminiProvider{}, app.Cursor: workers.CursorProvider{},
			},
			Bins: c.bins(), Workspaces: c.workspaces(),
			HeartbeatInterval: c.HeartbeatInterval, HeartbeatTTL: c.HeartbeatTTL, DrainTimeout: c.DrainTimeout,
			ShellDetachTimeout: c.ShellDetach,
			ShellWindow:        c.ShellWindow,
			PermissionTimeout:  c.PermissionTimeout,
			WatchInterval:      c.WatchInterval,
			PassEnv:            c.ProviderEnv,
			Accounts:           c.accounts(),
			SingleUser:         mode == "serve" && c.accounts() == nil,
			MaxRuns:            c.MaxRuns,
			MaxTerminals:       c.MaxTerminals,
			Link:               linkLn,
			LinkAdvertise:      linkAddr,
			Logger:             log,
		})
		if err != nil {
			return err
		}
		go func() {
			defer close(workerDone)
			if err := worker.Run(workerCtx); err != nil {
				failed <- err
			}
		}()
		go func() {
			select {
			case <-worker.Ready():
				close(workerReady)
			case <-workerDone:
			}
		}()
		log.Info("worker started", "worker", worker.ID(), "workspaces", c.workspaces().Roots, "procs", runtime.GOMAXPROCS(0))
		if runsGateway {
			// serve: its gateway takes commands (and prints its URL) only
			// once its worker is registered, or the first command would
			// find no worker.
			select {
			case <-worker.Ready():
			case err := <-failed:
				return err
			case <-ctx.Done():
			}
		}
	} else {
		close(workerDone)
	}

	var gateway *handlers.Server
	if runsGateway {
		gateway, err = handlers.New(handlers.Config{
			Store:      st,
			Auth:       &handlers.Auth{Mode: c.Auth, Secret: secret, UserHeader: c.UserHeader, TrustedProxies: c.TrustedProxies},
			Workspaces: c.workspaces(), AllowedOrigins: c.origins(), MaxMessageSize: c.MaxMessageSize,
			PublicHosts: c.publicHosts(), MaxSocketsPerUser: c.MaxSocketsPerUser, MaxFrameRate: c.MaxFrameRate,
			Providers:     app.Providers,
			SchemaVersion: version, Migrate: func(ctx context.Context) (int, error) { return apply(ctx, st) },
			ShellDetachTimeout: c.ShellDetach, HeartbeatTTL: c.HeartbeatTTL, Logger: log,
			MaxRunsPerUser: c.MaxRunsPerUser, MaxTerminalsPerUser: c.MaxTermsPerUser,
			MaxSessionsPerUser: c.MaxSessions,
			PaceInterval:       c.pace(),
			MetricsElsewhere:   c.MetricsListen != "",
		})
		if err != nil {
			return err
		}
		if mode == "gateway" {
			defer holdHeapFloor(gatewayHeapFloor, func() bool { return gateway.Terminals() > 0 })()
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := gateway.Run(background); err != nil && background.Err() == nil {
				failed <- err
			}
		}()
		front.set(gateway.Handler())
		log.Info("gateway listening", "addr", addr, "procs", runtime.GOMAXPROCS(0))
		if embedded != nil && c.Auth == handlers.AuthJWT {
			select {
			case <-gateway.Listening():
			case err := <-failed:
				return err
			case <-ctx.Done():
			}
			if err := printLoginURL(stdout, addr, secret); err != nil {
				return err
			}
		}
	}

	var runErr error
	select {
	case <-ctx.Done():
	case runErr = <-failed:
		log.Error("a component stopped", "err", runErr)
	}
	log.Info("shutting down")
	if gateway != nil {
		if c.DrainGrace > 0 && runErr == nil {
			// Unready first: the load balancer stops sending new sockets
			// here while the open ones still stream.
			gateway.StopAccepting()
			log.Info("draining: /readyz answers 503; sockets close after the grace", "grace", c.DrainGrace)
			time.Sleep(c.DrainGrace)
		}
		gateway.Drain()
		shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = httpServer.Shutdown(shutdownCtx)
		cancel()
	}
	stopWorker()
	<-workerDone
	stopBackground()
	wg.Wait()
	return runErr
}

// startCPUProfile profiles the process into path until the returned
// function is called.
func startCPUProfile(path string) (func(), error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("cpu profile: %w", err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}

// serveMetrics serves the process's Prometheus metrics, a liveness check
// and a readiness check on addr (--metrics-listen): for a worker, which has
// no other listener, and for a gateway whose metrics should not be public
// (its own address then does not serve them). /readyz answers 200 once
// ready is closed (the worker is registered: gateways can send it work)
// until ctx ends (it drains), and, in a process that runs a gateway, only
// when the gateway's own /readyz (gatewayReady) does.
func serveMetrics(ctx context.Context, addr string, ready <-chan struct{}, gatewayReady http.Handler, log *slog.Logger) (*http.Server, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen on %s (--metrics-listen): %w", addr, err)
	}
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", metrics.Handler())
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		if ready != nil {
			select {
			case <-ready:
			default:
				http.Error(w, "not registered yet", http.StatusServiceUnavailable)
				return
			}
		}
		if ctx.Err() != nil {
			http.Error(w, "draining", http.StatusServiceUnavailable)
			return
		}
		if gatewayReady != nil {
			// The gateway's own answer (starting, subscribing, Redis,
			// schema, draining): a probe pointed here must not see a
			// gateway ready that its listener says is not.
			gatewayReady.ServeHTTP(w, r)
			return
		}
		_, _ = io.WriteString(w, "ok\n")
	})
	srv, limited := gatewayHTTP(mux, ln, 64, gatewayTimeouts, log)
	go func() {
		if err := srv.Serve(limited); err != nil && !errors.Is(err, http.ErrServerClosed) {
			log.Error("metrics server", "err", err)
		}
	}()
	log.Info("metrics listening", "addr", ln.Addr().String())
	return srv, nil
}

// httpTimeouts are the deadlines of the gateway's HTTP connections.
type httpTimeouts struct {
	readHeader, read, write, idle time.Duration
}

// gatewayTimeouts bound what a connection that sends nothing useful can
// hold. Sockets are not subject to them: net/http clears a connection's
// deadlines when it is hijacked, so does the WebSocket upgrader, and the
// sockets then keep their own (pings and pongs). The idle timeout is longer
// than the usual load balancer's (60 s): a backend that closes first makes
// the balancer answer 502 now and then.
var gatewayTimeouts = httpTimeouts{
	readHeader: 10 * time.Second, read: 30 * time.Second, write: 2 * time.Minute, idle: 75 * time.Second,
}

// maxHeaderBytes bounds a request's header (a token is about 200 bytes;
// nginx's default buffers take 32 KiB): net/http's default, 1 MiB, let a
// client without a token make a gateway hold that much per connection.
const maxHeaderBytes = 16 << 10

// gatewayHTTP is the HTTP server of a gateway and the listener it must serve,
// which holds at most maxConns connections at once, sockets included.
func gatewayHTTP(h http.Handler, ln net.Listener, maxConns int, t httpTimeouts, log *slog.Logger) (*http.Server, net.Listener) {
	// Over the cap a connection waits in the kernel's accept queue until
	// one closes, rather than being accepted and closed at once: a burst of
	// reconnects (another gateway went away) is then served late instead of
	// turning into a retry storm. The queue is bounded by the kernel
	// (somaxconn), which drops attempts past it, so descriptors stay bounded.
	srv := &http.Server{
		Handler: h, ReadHeaderTimeout: t.readHeader, ReadTimeout: t.read, WriteTimeout: t.write, IdleTimeout: t.idle,
		MaxHeaderBytes: maxHeaderBytes,
		ErrorLog:       slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	return srv, newLimitListener(ln, maxConns)
}

// printLoginURL prints the URL of the bundled web client with a token of the
// local user, for the embedded default.
func printLoginURL(w io.Writer, addr string, secret []byte) error {
	user := localUser()
	token, err := handlers.IssueToken(secret, user, true, loginTTL)
	if err != nil {
		return err
	}
	host, port, _ := net.SplitHostPort(addr)
	if ip := net.ParseIP(host); ip == nil || ip.IsUnspecified() {
		host = "127.0.0.1"
	}
	u := url.URL{Scheme: "http", Host: net.JoinHostPort(host, port), Path: "/", RawQuery: "token=" + url.QueryEscape(token)}
	fmt.Fprintf(w, "agentgate is running. Open %s\n", u.String())
	fmt.Fprintf(w, "WebSocket clients: ws://%s/ws?token=%s (user %q, valid %s)\n", net.JoinHostPort(host, port), token, user, loginTTL)
	return nil
}

func randomSecret() []byte {
	b := make([]byte, 32)
	_, _ = rand.Read(b)
	return []byte(hex.EncodeToString(b))
}

// checkIsolation refuses a worker with per-user accounts whose secrets its
// users could still read: a command line is readable by every account on
// the host (/proc/PID/cmdline), and a Redis without a password can be
// written by any process that reaches it.
func checkIsolation(fs *flag.FlagSet, c config) error {
	var err error
	fs.Visit(func(f *flag.Flag) {
		if f.Name == "redis" || f.Name == "jwt-secret" {
			err = fmt.Errorf("--user-uids: give --%s through its environment variable: a command line is readable by every account on the host", f.Name)
		}
	})
	if err != nil {
		return err
	}
	if c.Redis != "" {
		u, perr := url.Parse(c.Redis)
		if perr != nil {
			return fmt.Errorf("--redis: parse Redis URL: %w", store.URLError(perr))
		}
		if _, ok := u.User.Password(); !ok {
			return errors.New("--user-uids: Redis needs a password (requirepass or an ACL user) in AGENTGATE_REDIS_URL, or users' processes could write to it")
		}
	}
	return nil
}
