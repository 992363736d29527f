package handlers

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"runtime/debug"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/olahol/melody"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
)

// Defaults of Config fields left at their zero value.
const (
	DefaultMaxMessageSize = 1 << 20
	DefaultQueueSize      = 64
	DefaultPingPeriod     = 25 * time.Second
	// workerCheckEvery is how long the "is any worker alive" answer is reused.
	workerCheckEvery = time.Second
)

// Config configures a Server.
type Config struct {
	Store *store.Store
	Auth  *Auth
	// Workspaces bound the project paths commands may use; the first root
	// is the default project.
	Workspaces app.Workspaces
	// AllowedOrigins lists the browser origins (scheme://host[:port], or
	// "*") allowed to open sockets. Empty means the request's own origin,
	// on a loopback name, an IP address or one of PublicHosts.
	AllowedOrigins []string
	// PublicHosts are the host names browsers reach the gateway by (its
	// name behind a load balancer), for the default origin check.
	PublicHosts []string
	// Providers are the providers whose commands are accepted.
	Providers []app.Provider
	// MaxMessageSize is the largest client frame. Zero means 1 MiB.
	MaxMessageSize int64
	// MaxSocketsPerUser caps the sockets one user holds open on this
	// gateway, /ws, /shell and /plugin-ws together. Zero means 64.
	MaxSocketsPerUser int
	// MaxFrameRate caps the frames per second that one user's /ws and
	// /shell sockets send to this gateway together, with a burst of four
	// seconds' worth. Zero means 50.
	MaxFrameRate int
	// QueueSize is how many frames may wait for a socket; past it the
	// socket reads the stream at its own pace. Zero means 64.
	QueueSize int
	// PingPeriod is the interval of WebSocket pings. Zero means 25s.
	PingPeriod time.Duration
	// MetricsElsewhere says the process serves /metrics on a listener of
	// its own (--metrics-listen), one a load balancer does not expose: the
	// gateway's own address then answers it 404.
	MetricsElsewhere bool
	// PaceInterval is the quiet time a paced /ws socket gets after each
	// frame its client must see (pace.go). Zero means DefaultPaceInterval;
	// a negative value never paces.
	PaceInterval time.Duration
	// ShellDetachTimeout is how long a terminal lives unwatched; the
	// gateway refreshes its terminals' watch time within it. Zero means
	// 30 minutes.
	ShellDetachTimeout time.Duration
	// HeartbeatTTL is how long a silent worker is taken for dead
	// (--heartbeat-ttl). Zero means 10 seconds.
	HeartbeatTTL time.Duration
	// MaxRunsPerUser bounds the runs one user has running at once, across
	// every gateway. Zero means no limit.
	MaxRunsPerUser int
	// MaxTerminalsPerUser bounds the terminals one user has open at once,
	// across every gateway. Zero means no limit.
	MaxTerminalsPerUser int
	// MaxSessionsPerUser is how many sessions one user keeps: a new one
	// past it forgets their least recently active idle session. Zero
	// means no limit.
	MaxSessionsPerUser int
	// SchemaVersion is the key-schema version /readyz requires.
	SchemaVersion int
	// Migrate applies the key-schema migrations (migrations.Apply, under
	// its lease) and returns the resulting version. /readyz calls it when
	// it finds the schema behind SchemaVersion, as after a Redis that
	// restarted empty (no persistence, FLUSHALL): the migrations are
	// idempotent, and without it every gateway would stay unready for
	// good while requests work. Nil means /readyz only reports.
	Migrate func(ctx context.Context) (int, error)
	// Logger receives the gateway's logs. Nil means slog.Default().
	Logger *slog.Logger
}

// Server is the gateway: the HTTP routes, the chat sockets and the hub that
// feeds them from Redis.
type Server struct {
	cfg       Config
	st        *store.Store
	log       *slog.Logger
	echo      *echo.Echo
	chat      *melody.Melody
	hub       *hub
	providers map[app.Provider]bool
	draining  atomic.Bool
	// drained is set once Drain starts closing sockets; draining earlier,
	// from StopAccepting, while open sockets are still served.
	drained atomic.Bool
	// outages says whether Redis was away a moment ago (outage.go).
	outages outageClock
	// shells and shellSockets serve /shell (terminals.go, shell.go).
	shells       *terminals
	shellSockets *melody.Melody
	// plugins are the open /plugin-ws relays (plugin.go).
	plugins pluginRelays
	// origins and quotas guard the upgrades (auth.go, limits.go);
	// chatRefusal and shellRefusal answer a frame over the rate.
	origins      originPolicy
	quotas       *userQuotas
	chatRefusal  []byte
	shellRefusal []byte

	mu    sync.Mutex
	conns map[*conn]struct{}

	workersMu      sync.Mutex
	workersChecked time.Time
	workersAlive   bool

	// remigration is the migration /readyz started, closed once done
	// (health.go); nil when none runs.
	remigrateMu sync.Mutex
	remigration chan struct{}
}

// New builds a Server; call Run to start its hub and serve Handler.
func New(cfg Config) (*Server, error) {
	if cfg.Store == nil || cfg.Auth == nil {
		return nil, errors.New("handlers: a store and an authenticator are required")
	}
	if cfg.MaxMessageSize <= 0 {
		cfg.MaxMessageSize = DefaultMaxMessageSize
	}
	if cfg.QueueSize <= 0 {
		cfg.QueueSize = DefaultQueueSize
	}
	if cfg.PingPeriod <= 0 {
		cfg.PingPeriod = DefaultPingPeriod
	}
	if cfg.PaceInterval == 0 {
		cfg.PaceInterval = DefaultPaceInterval
	}
	if cfg.MaxSocketsPerUser <= 0 {
		cfg.MaxSocketsPerUser = DefaultMaxSocketsPerUser
	}
	if cfg.MaxFrameRate <= 0 {
		cfg.MaxFrameRate = DefaultMaxFrameRate
	}
	origins, err := newOriginPolicy(cfg.AllowedOrigins, cfg.PublicHosts)
	if err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if len(cfg.Providers) == 0 {
		cfg.Providers = []app.Provider{app.Claude}
	}
	s := &Server{
		cfg: cfg, st: cfg.Store, log: cfg.Logger, conns: map[*conn]struct{}{},
		providers: map[app.Provider]bool{}, origins: origins,
		quotas: newUserQuotas(cfg.MaxSocketsPerUser, cfg.MaxFrameRate),
	}
	text := s.quotas.rateLimitText()
	s.chatRefusal, _ = json.Marshal(app.NewErrorReply(text))
	s.shellRefusal, _ = json.Marshal(app.ShellError{Type: "error", Message: text})
	for _, p := range cfg.Providers {
		s.providers[p] = true
	}
	// A pub/sub connection that fails is an outage too: a terminal check
	// every few seconds can miss a short restart of Redis, and then take
	// a worker whose heartbeat Redis lost for gone.
	s.hub = newHub(cfg.Store, cfg.Logger, s.broadcast, s.outages.saw)
	s.chat = s.newChatSockets()
	s.shells = newTerminals(s.hub, cfg.Store, cfg.Logger, cfg.Workspaces, cfg.ShellDetachTimeout)
	s.shells.maxOpen = cfg.MaxTerminalsPerUser
	// Heartbeats may be missing for a TTL after an outage, and a gateway
	// notices one within two of its terminal checks.
	s.outages.quiet = cmp.Or(cfg.HeartbeatTTL, 10*time.Second) + 2*s.shells.refresh
	s.shells.outages = &s.outages
	s.shellSockets = s.newShellSockets()
	s.echo = s.routes()
	return s, nil
}

// Handler is the gateway's HTTP handler.
func (s *Server) Handler() http.Handler { return s.echo }

// Run feeds sockets from Redis until ctx ends. Runs in its own goroutine.
func (s *Server) Run(ctx context.Context) error {
	done := make(chan struct{})
	go func() { defer close(done); s.shells.run(ctx) }()
	err := s.hub.run(ctx)
	<-done
	s.shells.links.Close()
	return err
}

// StopAccepting marks the gateway not ready: /readyz answers 503 and new
// sockets are refused with 503, while open ones go on until Drain.
func (s *Server) StopAccepting() { s.draining.Store(true) }

// Drain marks the gateway not ready and closes every socket with 1001, so
// that clients reconnect to another instance and resume there. It returns
// once the close frames are written.
func (s *Server) Drain() {
	s.draining.Store(true)
	s.drained.Store(true)
	s.shells.closeAll()
	s.plugins.closeAll()
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for c := range s.conns {
		conns = append(conns, c)
	}
	s.mu.Unlock()
	closeShutdownAll(conns)
}

// closeShutdownAll closes conns with 1001, all at once, and returns once
// their close frames are written.
func closeShutdownAll(conns []*conn) {
	var wg sync.WaitGroup
	for _, c := range conns {
		wg.Add(1)
		go func() { defer wg.Done(); c.closeNow(closeShutdown) }()
	}
	wg.Wait()
}

// Connections is the number of open chat sockets.
func (s *Server) Connections() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.conns)
}

// Terminals is the number of open /shell sockets.
func (s *Server) Terminals() int {
	s.shells.mu.Lock()
	defer s.shells.mu.Unlock()
	return len(s.shells.socks)
}

// recoverPanics answers a request whose handler panicked with a 500 and
// logs the panic with its stack, so that one bad request cannot stop the
// gateway. (Echo's middleware package does the same, but linking it costs
// every start a regular expression compiled at init.)
func (s *Server) recoverPanics(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) (err error) {
		defer func() {
			p := recover()
			if p == nil {
				return
			}
			if p == http.ErrAbortHandler {
				panic(p) // net/http's way to abort a response: not a failure
			}
			s.log.Error("request handler panicked", "panic", p, "method", c.Request().Method, "path", c.Request().URL.Path, "stack", string(debug.Stack()))
			err = echo.NewHTTPError(http.StatusInternalServerError)
		}()
		return next(c)
	}
}

func (s *Server) routes() *echo.Echo {
	e := echo.New()
	e.HideBanner = true
	e.HidePort = true
	e.Use(s.recoverPanics)
	e.HTTPErrorHandler = s.httpError
	e.JSONSerializer = plainJSON{}
	e.GET("/healthz", s.healthz)
	e.GET("/readyz", s.readyz)
	if !s.cfg.MetricsElsewhere {
		e.GET("/metrics", echo.WrapHandler(metricsHandler()))
	}
	e.GET("/ws", s.serveChat)
	e.GET("/shell", s.serveShell)
	e.GET("/plugin-ws/:name", s.servePlugin)
	api := e.Group("/api", s.requireUser)
	api.GET("/auth/user", s.authUser)
	api.GET("/sessions", s.listSessions)
	api.GET("/sessions/:id", s.getSession)
	api.GET("/sessions/:id/events", s.sessionEvents)
	api.POST("/sessions/:id/abort", s.abortSession)
	api.GET("/providers/sessions/:id/messages", s.sessionMessages)
	api.POST("/broadcast", s.publishBroadcast)
	s.webRoutes(e)
	return e
}

func (s *Server) newChatSockets() *melody.Melody {
	m := melody.New()
	m.Config.MaxMessageSize = s.cfg.MaxMessageSize
	// The conn queue holds what does not fit (conn.toMelody).
	m.Config.MessageBufferSize = melodyBufferSize
	m.Config.PingPeriod = s.cfg.PingPeriod
	m.Config.PongWait = 2*s.cfg.PingPeriod + 10*time.Second
	// A socket's read buffer lives as long as it does; client frames are
	// small, and a larger one is read past the buffer, not through it.
	m.Upgrader.ReadBufferSize = 512
	m.Upgrader.WriteBufferSize = 0
	// Idle sockets hold no write buffer: it is taken from the pool per frame.
	m.Upgrader.WriteBufferPool = &sync.Pool{}
	m.Upgrader.CheckOrigin = s.origins.allows
	m.HandleConnect(func(ms *melody.Session) {
		user, _ := ms.Get("user")
		c := newConn(ms, user.(app.User), s.cfg.QueueSize, s.paceInterval(ms.Request))
		c.latestOnly = ms.Request.URL.Query().Get("delivery") != deliveryImmediate
		c.quota, c.refusal = quotaOf(ms), s.chatRefusal
		ms.Set("conn", c)
		releaseUpgrade(ms)
		s.mu.Lock()
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		chatMetrics.sockets.Inc()
		// A socket whose upgrade was under way when Drain listed the
		// sockets is not on its list: it closes itself.
		if s.drained.Load() {
			c.closeNow(closeShutdown)
		}
	})
	m.HandleDisconnect(func(ms *melody.Session) {
		c := connOf(ms)
		c.closed.Store(true)
		c.cancel()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		s.hub.detachAll(c)
		chatMetrics.sockets.Dec()
	})
	m.HandleSentMessage(func(ms *melody.Session, frame []byte) {
		connOf(ms).sent(len(frame))
		chatMetrics.wrote(frame)
	})
	m.HandleMessage(func(ms *melody.Session, data []byte) { onFreshStack(func() { s.onChatMessage(ms, data) }) })
	m.HandleMessageBinary(func(ms *melody.Session, _ []byte) {
		if c := connOf(ms); c.admit(1) {
			c.reply(app.NewErrorReply(app.ErrTextInvalidPayload))
		}
	})
	m.HandleError(func(ms *melody.Session, err error) {
		if errors.Is(err, melody.ErrMessageBufferFull) {
			// Not expected: conn closes first. Still never drop silently.
			connOf(ms).closeWith(closeSlow)
		}
	})
	return m
}

// serveChat authenticates the upgrade of /ws: 401 before any upgrade.
func (s *Server) serveChat(c echo.Context) error {
	switch c.QueryParam("delivery") {
	case "", deliveryPaced, deliveryImmediate:
	default:
		return echo.NewHTTPError(http.StatusBadRequest, "delivery must be paced or immediate")
	}
	return s.serveUpgrade(c, s.chat)
}

// paceInterval is the pacing of a new /ws socket: Config.PaceInterval,
// unless its client asked for immediate delivery (?delivery=immediate).
// Without the parameter a socket is paced until it sends a lastSeq.
func (s *Server) paceInterval(r *http.Request) time.Duration {
	if s.cfg.PaceInterval < 0 || r.URL.Query().Get("delivery") == deliveryImmediate {
		return 0
	}
	return s.cfg.PaceInterval
}

// serveUpgrade authenticates an upgrade (401 before it), takes one of the
// user's sockets (429 before it), and hands the socket to m, whose connect
// handler closes the "upgraded" key's channel.
// Once upgraded, the socket lives on its own goroutines and this handler
// returns: net/http then drops the request's buffers and goroutine, which
// would otherwise stay for the socket's whole life (about 16 KiB each).
func (s *Server) serveUpgrade(c echo.Context, m *melody.Melody) error {
	if s.draining.Load() {
		return s.refuseUpgrade(c, m, echo.NewHTTPError(http.StatusServiceUnavailable, "gateway is draining"))
	}
	user, err := s.cfg.Auth.Authenticate(c.Request())
	if err != nil {
		return s.refuseUpgrade(c, m, authFailure(c, err))
	}
	quota := s.quotas.acquire(user.Name)
	if quota == nil {
		return s.refuseUpgrade(c, m, s.quotas.tooManySockets())
	}
	upgraded := make(chan struct{})
	keys := map[string]any{"user": user, "upgraded": upgraded, "quota": quota}
	done := make(chan error, 1)
	go func() {
		err := m.HandleRequestWithKeys(c.Response(), c.Request(), keys)
		// It returns once the socket closed, or failed to open.
		s.quotas.release(quota)
		done <- err
	}()
	select {
	case <-upgraded:
		return nil
	case err := <-done:
		if errors.Is(err, melody.ErrClosed) {
			return echo.NewHTTPError(http.StatusServiceUnavailable, "gateway is shutting down")
		}
		// A refused upgrade (bad origin, not a WebSocket request) has
		// already been answered.
		return nil
	}
}

// refusedShellDelay holds the answer to a refused /shell upgrade. Claude
// Code UI's Shell tab opens a new socket as soon as its socket closes,
// with no pause, and a refused upgrade closes it: a tab whose token had
// expired asked many times a second for as long as it stayed open.
const refusedShellDelay = time.Second

// refuseUpgrade answers a refused upgrade with err, after
// refusedShellDelay on /shell (or once its client gave up).
func (s *Server) refuseUpgrade(c echo.Context, m *melody.Melody, err error) error {
	if m == s.shellSockets {
		t := time.NewTimer(refusedShellDelay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-c.Request().Context().Done():
		}
	}
	return err
}

// releaseUpgrade tells serveUpgrade that ms is open, and lets go of what
// only the upgrade needed: the request (headers, URL, context: about 1.7
// KiB) and the signal itself, which a socket would otherwise hold for its
// life. HandleConnect calls it once it has read the request.
func releaseUpgrade(ms *melody.Session) {
	if v, ok := ms.Get("upgraded"); ok {
		ms.UnSet("upgraded")
		close(v.(chan struct{}))
	}
	ms.Request = nil
}

// quotaOf returns the user's quota serveUpgrade took for a melody session.
func quotaOf(ms *melody.Session) *userQuota {
	v, _ := ms.Get("quota")
	q, _ := v.(*userQuota)
	return q
}

// connOf returns the conn HandleConnect attached to a melody session;
// melody calls HandleConnect before any other handler of the session.
func connOf(ms *melody.Session) *conn {
	v, _ := ms.Get("conn")
	return v.(*conn)
}

// onFreshStack runs a socket's message handler on a goroutine of its own
// and waits for it, so the socket's frames are still handled in order. A
// handler's stack grows to 8 KiB (JSON, Redis round trips); on the socket's
// read goroutine, which lives as long as the socket, that growth would stay
// until garbage collections shrink it: 7 KiB more per idle socket that had
// sent a frame (BenchmarkWatchingSockets). Handlers keep large values (a
// parsed message, a reply, a run's request) off their frames: a stack
// doubles when it runs out, and in a burst of reconnections every socket's
// handler holds one at once (peak_stack_KiB/conn of
// BenchmarkWatchingSocketsInProcess).
func onFreshStack(handle func()) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		handle()
	}()
	<-done
}

// broadcastHeadroom is how far past its queue limit a chat socket takes a
// broadcast: the queue of a paced socket, or of one reading a replay, is
// often full, and a broadcast that does not fit closes the socket.
const broadcastHeadroom = 8

// broadcast hands a frame Store.Broadcast published to this gateway's chat
// sockets of its one user. It runs on the subscriber's goroutine.
func (s *Server) broadcast(payload []byte) {
	user, frame, err := store.ParseBroadcast(payload)
	if err != nil {
		s.log.Warn("broadcast", "err", err)
		return
	}
	s.mu.Lock()
	conns := make([]*conn, 0, 4)
	for c := range s.conns {
		if c.user.Name == user {
			conns = append(conns, c)
		}
	}
	s.mu.Unlock()
	for _, c := range conns {
		if !c.offer(frame, c.limit+broadcastHeadroom) {
			// A broadcast is not stored: a socket that cannot take it
			// reconnects and reloads.
			c.closeWith(closeSlow)
		}
	}
}

// workerAvailable reports whether any worker is alive, refreshed at most
// once a second so that commands do not each scan the registry. When the
// registry cannot be read it returns what it last knew, and the error.
func (s *Server) workerAvailable(ctx context.Context) (bool, error) {
	s.workersMu.Lock()
	defer s.workersMu.Unlock()
	if time.Since(s.workersChecked) < workerCheckEvery && s.workersAlive {
		return true, nil
	}
	live, err := s.st.LiveWorkers(ctx)
	if err != nil {
		s.log.Warn("list workers", "err", err)
		return s.workersAlive, err
	}
	s.workersAlive = len(live) > 0
	s.workersChecked = time.Now()
	return s.workersAlive, nil
}
