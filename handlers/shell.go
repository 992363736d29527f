package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/olahol/melody"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
)

const (
	// DefaultShellDetachTimeout is how long a terminal lives unwatched; the
	// gateway refreshes the watch time of its terminals well within it.
	DefaultShellDetachTimeout = 30 * time.Minute
	// shellReplayChunk is how many stored chunks one catch-up read fetches.
	shellReplayChunk = 64
	// shellEmptyRetries bounds the re-reads of a stream that does not yet
	// show a chunk that was published (a reset under a new generation).
	shellEmptyRetries = 50
)

// Gateway notices (output frames without seq), in the reference's words.
const (
	noticeReconnected = "[Reconnected to existing session]"
	noticeLost        = "[Terminal lost: its worker stopped]"
	noticeRestarted   = "[Terminal restarted]"
)

// shellHub connects /shell sockets to terminals: one feed per terminal
// followed by this gateway, on the gateway's single pub/sub connection.
// Each socket has its own position (the next seq it needs): live chunks are
// sent when they are next, and a socket that is behind (its queue full, a
// chunk missed, a replay) reads the stream at its own pace until it is live
// again. Nothing is held per socket but its position, so memory stays
// bounded whatever the output rate.
type shellHub struct {
	st      *store.Store
	sub     *store.Subscriber
	log     *slog.Logger
	refresh time.Duration
	ws      app.Workspaces
	// maxOpen bounds the terminals one user has open (0: no limit).
	maxOpen int

	mu    sync.Mutex
	feeds map[string]*shellFeed // by shell key
	socks map[*shellSocket]struct{}
}

// shellFeed is one terminal followed by this gateway.
type shellFeed struct {
	key string

	mu      sync.Mutex
	gen     int64  // the newest generation seen
	worker  string // the worker running gen
	maxSeen int64  // the highest seq published in gen
	exit    *store.ShellLive
	watches map[*shellWatch]struct{}
	// written is the highest seq of gen written to a socket here, and
	// acked the one last told to the worker (its flow control); acking is
	// set while a goroutine tells it.
	written, acked int64
	acking         bool
}

// shellWatch is one socket's position in one terminal. Fields are guarded
// by the feed's mutex.
type shellWatch struct {
	sock *shellSocket
	f    *shellFeed
	gen  int64
	next int64 // the next seq the socket needs
	// catching is set while a catch-up goroutine delivers from the stream.
	catching bool
	// quietTrim skips the trim notice of a first replay without lastSeq.
	quietTrim bool
	done      bool
	// pos changes whenever the watch is repositioned; a catch-up of an
	// older pos stops.
	pos int
}

// shellSocket is one /shell socket and the terminal it follows.
type shellSocket struct {
	c  *conn
	mu sync.Mutex
	w  *shellWatch
	// clientAcks is set once the client sends acks: its terminal's flow
	// then follows what it rendered, not what was written to its socket
	// (kernel buffers hold megabytes a slow client has not read).
	clientAcks atomic.Bool
}

func newShellHub(st *store.Store, sub *store.Subscriber, log *slog.Logger, ws app.Workspaces, detach time.Duration) *shellHub {
	if detach <= 0 {
		detach = DefaultShellDetachTimeout
	}
	h := &shellHub{
		st: st, sub: sub, log: log, ws: ws, feeds: map[string]*shellFeed{}, socks: map[*shellSocket]struct{}{},
		refresh: min(max(detach/4, 50*time.Millisecond), 5*time.Second),
	}
	sub.HandleShell(store.ShellHandlers{Message: h.message, Resync: h.resync})
	return h
}

func (s *Server) newShellSockets() *melody.Melody {
	m := melody.New()
	m.Config.MaxMessageSize = s.cfg.MaxMessageSize
	m.Config.MessageBufferSize = s.cfg.QueueSize + 8
	m.Config.PingPeriod = s.cfg.PingPeriod
	m.Config.PongWait = 2*s.cfg.PingPeriod + 10*time.Second
	m.Upgrader.ReadBufferSize = 1024
	m.Upgrader.WriteBufferPool = &sync.Pool{}
	m.Upgrader.CheckOrigin = s.origins.allows
	m.HandleConnect(func(ms *melody.Session) {
		user, _ := ms.Get("user")
		sock := &shellSocket{c: newConn(ms, user.(app.User), s.cfg.QueueSize, 0)}
		sock.c.quota, sock.c.refusal = quotaOf(ms), s.shellRefusal
		ms.Set("shell", sock)
		s.shells.mu.Lock()
		s.shells.socks[sock] = struct{}{}
		s.shells.mu.Unlock()
		shellMetrics.sockets.Inc()
		if v, ok := ms.Get("upgraded"); ok {
			close(v.(chan struct{}))
		}
		// As for chat sockets: one upgraded while Drain ran closes itself.
		if s.drained.Load() {
			sock.c.closeNow(closeShutdown)
		}
	})
	m.HandleDisconnect(func(ms *melody.Session) {
		sock := shellSocketOf(ms)
		sock.c.closed.Store(true)
		sock.c.cancel()
		s.shells.mu.Lock()
		delete(s.shells.socks, sock)
		s.shells.mu.Unlock()
		s.shells.detachSocket(sock)
		shellMetrics.sockets.Dec()
	})
	m.HandleSentMessage(func(ms *melody.Session, frame []byte) {
		sock := shellSocketOf(ms)
		sock.c.sent()
		shellMetrics.wrote(frame)
		if seq, ok := frameSeq(frame); ok && !sock.clientAcks.Load() {
			s.shells.written(sock, seq)
		}
	})
	m.HandleMessage(s.onShellMessage)
	m.HandleMessageBinary(func(ms *melody.Session, _ []byte) {
		if c := shellSocketOf(ms).c; c.admit(1) {
			c.reply(app.ShellError{Type: "error", Message: app.ErrTextInvalidPayload})
		}
	})
	m.HandleError(func(ms *melody.Session, err error) {
		if errors.Is(err, melody.ErrMessageBufferFull) {
			shellSocketOf(ms).c.closeWith(closeSlow)
		}
	})
	return m
}

func shellSocketOf(ms *melody.Session) *shellSocket {
	v, _ := ms.Get("shell")
	return v.(*shellSocket)
}

// serveShell authenticates the upgrade of /shell: 401 before any upgrade.
func (s *Server) serveShell(c echo.Context) error { return s.serveUpgrade(c, s.shellSockets) }

// onShellMessage handles one /shell frame, on the socket's read goroutine,
// so a socket's frames keep their order: an init has queued its open
// control before the input that follows it is sent.
func (s *Server) onShellMessage(ms *melody.Session, data []byte) {
	sock := shellSocketOf(ms)
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("shell message handler panicked", "panic", p, "user", sock.c.user.Name)
			sock.notice("error", "Error: internal error")
		}
	}()
	msg, err := app.ParseShellMessage(data)
	if err == nil && msg.Type == "ack" {
		// Not rate limited: a rendering client acks often, and an ack
		// costs a comparison (and at most one control in flight).
		sock.clientAcks.Store(true)
		s.shells.written(sock, *msg.Seq)
		return
	}
	if !sock.c.admit(1) {
		return
	}
	if err != nil {
		sock.error(err.Error())
		return
	}
	ctx, cancel := context.WithTimeout(sock.c.ctx, requestTimeout)
	defer cancel()
	switch msg.Type {
	case "init":
		s.shells.init(ctx, sock, msg, s.pickWorker)
	case "input":
		s.shells.control(ctx, sock, store.ControlShellInput, msg.Data)
	case "resize":
		s.shells.control(ctx, sock, store.ControlShellResize, store.ShellSize{Cols: msg.Cols, Rows: msg.Rows})
	}
}

// pickWorker chooses a live worker for a new terminal, at random so that
// terminals spread over the workers.
func (s *Server) pickWorker(ctx context.Context) (string, error) {
	live, err := s.st.LiveWorkers(ctx)
	if err != nil {
		return "", err
	}
	if len(live) == 0 {
		return "", app.ErrNoWorker
	}
	return live[rand.IntN(len(live))].ID, nil
}

func (sock *shellSocket) error(text string) {
	sock.c.reply(app.ShellError{Type: "error", Message: text})
}

func (sock *shellSocket) notice(level, text string) {
	sock.c.reply(app.ShellOutput{Type: "output", Data: app.ShellNotice(level, text)})
}

// init opens or reattaches the terminal of an init frame (PROTOCOL §4).
func (h *shellHub) init(ctx context.Context, sock *shellSocket, msg app.ShellMessage, pick func(context.Context) (string, error)) {
	h.detachSocket(sock)
	user := sock.c.user.Name
	dir, err := userProjectDir(h.ws, user, msg.ProjectPath)
	if err != nil {
		sock.error(app.ShellErrInvalidPath)
		return
	}
	key := app.ShellKey(user, dir, msg)
	spec := msg.Spec(user, dir)
	for attempt := 0; attempt < 3; attempt++ {
		info, ok, err := h.st.Shell(ctx, key)
		if err != nil {
			h.fail(sock, "read terminal", err)
			return
		}
		live := ok && info.State != store.ShellExited
		if live {
			alive, err := h.st.WorkerAlive(ctx, info.Worker)
			switch {
			case err != nil:
				h.fail(sock, "check worker", err)
				return
			case !alive:
				sock.notice("error", noticeLost)
				live = false
			case msg.LoginReset():
				// A login must not land in an old prompt: the old
				// terminal goes, a fresh one starts.
				_ = h.st.SendControl(ctx, info.Worker, store.Control{Type: store.ControlShellKill, Shell: key, Gen: info.Gen})
				live = false
			}
		}
		if live {
			sock.notice("info", noticeReconnected)
			from, quiet := int64(1), true
			if msg.LastSeq != nil && *msg.LastSeq <= info.Seq {
				from, quiet = *msg.LastSeq+1, false
			}
			h.attach(ctx, sock, key, info.Gen, info.Worker, from, quiet)
			return
		}
		worker, err := pick(ctx)
		if errors.Is(err, app.ErrNoWorker) {
			sock.error(app.ShellErrNoWorker)
			return
		}
		if err != nil {
			h.fail(sock, "list workers", err)
			return
		}
		gen, opened, err := h.st.ShellOpen(ctx, key, info.Gen, worker, spec.Command(nil), spec, h.maxOpen)
		var limit *app.LimitError
		if errors.As(err, &limit) {
			sock.error(limit.Error())
			return
		}
		if err != nil {
			h.fail(sock, "open terminal", err)
			return
		}
		if !opened {
			continue // another gateway opened it first: reattach to it
		}
		sock.notice("info", spec.Welcome())
		h.attach(ctx, sock, key, gen, worker, 1, true)
		return
	}
	sock.error("Terminal is being restarted elsewhere: try again")
}

func (h *shellHub) fail(sock *shellSocket, what string, err error) {
	h.log.Warn("shell "+what, "user", sock.c.user.Name, "err", err)
	sock.notice("error", "Error: "+what+" failed")
}

// attach makes sock follow terminal key from seq from. It subscribes
// before it reads the stream, so no chunk falls between the two.
func (h *shellHub) attach(ctx context.Context, sock *shellSocket, key string, gen int64, worker string, from int64, quiet bool) {
	h.mu.Lock()
	f := h.feeds[key]
	if f == nil {
		f = &shellFeed{key: key, watches: map[*shellWatch]struct{}{}}
		h.feeds[key] = f
		watchedTerminals.Inc()
	}
	w := &shellWatch{sock: sock, f: f, next: from, catching: true, quietTrim: quiet}
	f.mu.Lock()
	if gen > f.gen {
		f.switchGenLocked(h, gen)
	}
	if gen == f.gen {
		f.worker = worker
	}
	w.gen = f.gen
	if w.gen != gen {
		w.next = 1
	}
	f.watches[w] = struct{}{}
	f.mu.Unlock()
	h.mu.Unlock()

	subCtx, cancel := context.WithTimeout(ctx, subscribeTimeout)
	defer cancel()
	if err := h.sub.SubscribeShell(subCtx, key); err != nil {
		h.removeWatch(w, false)
		h.fail(sock, "subscribe", err)
		return
	}
	sock.mu.Lock()
	sock.w = w
	sock.mu.Unlock()
	if _, err := h.st.ShellTouch(ctx, key, w.gen, +1); err != nil && !errors.Is(err, store.ErrStaleShell) {
		h.log.Warn("shell attach", "err", err)
	}
	// An exit published before the subscription is only in the hash.
	if info, ok, err := h.st.Shell(ctx, key); err == nil && ok && info.Gen == w.gen && info.State == store.ShellExited {
		f.mu.Lock()
		if f.exit == nil && f.gen == info.Gen {
			f.exit = &store.ShellLive{Kind: 'e', Gen: info.Gen, Seq: info.Seq, ExitCode: info.ExitCode, Signal: info.Signal, Reason: info.ExitReason}
			f.maxSeen = max(f.maxSeen, info.Seq)
		}
		f.mu.Unlock()
	}
	f.mu.Lock()
	w.pos++
	pos := w.pos
	f.mu.Unlock()
	go h.catchUp(w, pos)
}

// switchGenLocked moves the feed to a newer generation of its terminal (a
// login reset or forceRestart elsewhere): every socket follows the new
// terminal from its first chunk. f.mu must be held.
func (f *shellFeed) switchGenLocked(h *shellHub, gen int64) {
	f.gen, f.maxSeen, f.exit, f.worker = gen, 0, nil, ""
	f.written, f.acked = 0, 0
	for w := range f.watches {
		if w.done {
			continue
		}
		w.gen, w.next, w.quietTrim = gen, 1, true
		w.sock.c.trySend(noticeFrame("warn", noticeRestarted))
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
			defer cancel()
			_, _ = h.st.ShellTouch(ctx, f.key, gen, +1)
		}()
		h.startCatchUpLocked(w)
	}
	if gen > 0 {
		go h.learnWorker(f, gen)
	}
}

// learnWorker reads the worker of a generation first seen on pub/sub.
func (h *shellHub) learnWorker(f *shellFeed, gen int64) {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	h.workerOf(ctx, f, gen)
}

// workerOf returns the worker of generation gen of f's terminal, reading it
// from the hash (and keeping it) while it is not known yet; "" if gen is no
// longer the terminal's.
func (h *shellHub) workerOf(ctx context.Context, f *shellFeed, gen int64) string {
	f.mu.Lock()
	worker := f.worker
	f.mu.Unlock()
	if worker != "" {
		return worker
	}
	info, ok, err := h.st.Shell(ctx, f.key)
	if err != nil || !ok || info.Gen != gen {
		return ""
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gen == gen && f.worker == "" {
		f.worker = info.Worker
	}
	return info.Worker
}

// control sends input or a resize of sock's terminal to its worker's inbox.
func (h *shellHub) control(ctx context.Context, sock *shellSocket, typ string, v any) {
	sock.mu.Lock()
	w := sock.w
	sock.mu.Unlock()
	if w == nil {
		sock.error(app.ShellErrNoTerminal)
		return
	}
	w.f.mu.Lock()
	done, gen := w.done, w.gen
	w.f.mu.Unlock()
	if done {
		return // the terminal ended: the client saw exit
	}
	// Right after another tab restarted the terminal, its worker may not
	// be known here yet: read it rather than drop the keystrokes.
	worker := h.workerOf(ctx, w.f, gen)
	if worker == "" {
		return // replaced again meanwhile: the socket follows the newer one
	}
	data, err := json.Marshal(v)
	if err != nil {
		return
	}
	if err := h.st.SendControl(ctx, worker, store.Control{Type: typ, Shell: w.f.key, Gen: gen, Data: data}); err != nil {
		h.fail(sock, "send to terminal", err)
	}
}

// detachSocket stops sock following its terminal.
func (h *shellHub) detachSocket(sock *shellSocket) {
	sock.mu.Lock()
	w := sock.w
	sock.w = nil
	sock.mu.Unlock()
	if w != nil {
		h.removeWatch(w, true)
	}
}

// removeWatch takes a watch out of its feed, drops the feed when it was the
// last, and records the detach in Redis. A watch is removed once: the exit
// path and a detach (a new init, a closed socket) may both come here, and a
// second unsubscribe would take another watcher's subscription.
func (h *shellHub) removeWatch(w *shellWatch, subscribed bool) {
	f := w.f
	h.mu.Lock()
	f.mu.Lock()
	if _, ok := f.watches[w]; !ok {
		f.mu.Unlock()
		h.mu.Unlock()
		return
	}
	w.done = true
	w.pos++
	delete(f.watches, w)
	if len(f.watches) == 0 && h.feeds[f.key] == f {
		delete(h.feeds, f.key)
		watchedTerminals.Dec()
	}
	gen := w.gen
	f.mu.Unlock()
	h.mu.Unlock()
	if !subscribed {
		return
	}
	h.sub.UnsubscribeShell(f.key)
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	if _, err := h.st.ShellTouch(ctx, f.key, gen, -1); err != nil && !errors.Is(err, store.ErrStaleShell) {
		h.log.Warn("shell detach", "err", err)
	}
}

func (h *shellHub) feed(key string) *shellFeed {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.feeds[key]
}

// message handles a terminal channel message. It runs on the subscriber's
// goroutine and never blocks on a socket.
func (h *shellHub) message(key, payload string) {
	m, ok := store.ParseShellLive(payload)
	if !ok {
		return
	}
	f := h.feed(key)
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if m.Gen < f.gen {
		return
	}
	if m.Gen > f.gen {
		f.switchGenLocked(h, m.Gen)
	}
	switch m.Kind {
	case 'o':
		f.maxSeen = max(f.maxSeen, m.Seq)
		var frame []byte
		for w := range f.watches {
			if w.catching || w.done || m.Seq < w.next {
				continue
			}
			if m.Seq == w.next {
				if frame == nil {
					frame = outputFrame(m.Seq, m.Data)
				}
				if w.sock.c.trySend(frame) {
					w.next++
					continue
				}
			}
			// Behind (queue full) or a chunk was missed: read the stream.
			h.startCatchUpLocked(w)
		}
	case 'e':
		f.exit = &m
		f.maxSeen = max(f.maxSeen, m.Seq)
		for w := range f.watches {
			if w.catching || w.done {
				continue
			}
			if w.next > m.Seq {
				h.sendExitLocked(w)
			} else {
				h.startCatchUpLocked(w)
			}
		}
	case 'u':
		frame, _ := json.Marshal(app.ShellAuthURL{Type: "auth_url", URL: m.Data, AutoOpen: m.AutoOpen})
		for w := range f.watches {
			if !w.done {
				w.sock.c.trySend(frame)
			}
		}
	}
}

// resync re-reads a terminal for every socket after the pub/sub
// connection came back: what was published meanwhile is only in the stream.
func (h *shellHub) resync(key string) {
	f := h.feed(key)
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for w := range f.watches {
		if !w.catching && !w.done {
			h.startCatchUpLocked(w)
		}
	}
}

// startCatchUpLocked repositions w to read the stream. f.mu must be held.
func (h *shellHub) startCatchUpLocked(w *shellWatch) {
	w.catching = true
	w.pos++
	go h.catchUp(w, w.pos)
}

// sendExitLocked sends the exit of the feed's terminal to w, once, and
// detaches it: the socket stays open and may init again. f.mu must be held.
func (h *shellHub) sendExitLocked(w *shellWatch) {
	if w.done {
		return
	}
	e := *w.f.exit
	w.done = true
	// The frames go out after every chunk already queued; sending may wait
	// for room, which must not happen under the feed's lock.
	go func() {
		if e.Reason == store.ShellExitLost {
			w.sock.notice("error", noticeLost)
		} else {
			text := "Process exited with code " + strconv.Itoa(e.ExitCode)
			if e.Signal != "" {
				text += " (" + e.Signal + ")"
			}
			w.sock.notice("warn", "\r\n"+text)
		}
		var sig *string
		if e.Signal != "" {
			sig = &e.Signal
		}
		w.sock.c.reply(app.ShellExit{Type: "exit", ExitCode: e.ExitCode, Signal: sig})
		w.sock.mu.Lock()
		if w.sock.w == w {
			w.sock.w = nil
		}
		w.sock.mu.Unlock()
		h.removeWatch(w, true)
	}()
}

// catchUp delivers stored chunks to w from its position at the socket's
// pace, until nothing newer than its position was published; then live
// delivery takes over. Runs in its own goroutine, one per watch at a time.
func (h *shellHub) catchUp(w *shellWatch, pos int) {
	f, c := w.f, w.sock.c
	empty := 0
	for {
		f.mu.Lock()
		if w.pos != pos || w.done {
			f.mu.Unlock()
			return
		}
		next, quiet := w.next, w.quietTrim
		w.quietTrim = false
		f.mu.Unlock()

		chunks, err := h.st.ShellOutput(c.ctx, f.key, next-1, shellReplayChunk)
		if store.Unavailable(err) {
			// Redis is down or loading: wait for it and read on from the
			// same position, as chat sockets do, rather than close.
			if h.st.WaitAvailable(c.ctx) != nil {
				return
			}
			continue
		}
		if err != nil {
			if c.ctx.Err() != nil {
				return
			}
			h.log.Warn("shell replay", "err", err)
			c.closeWith(closeSlow) // the client reconnects and resumes
			return
		}
		if len(chunks) == 0 {
			f.mu.Lock()
			if w.pos != pos || w.done {
				f.mu.Unlock()
				return
			}
			if f.maxSeen < w.next {
				w.catching = false
				if f.exit != nil && w.next > f.exit.Seq {
					h.sendExitLocked(w)
				}
				f.mu.Unlock()
				return
			}
			empty++
			var skipped int64
			if empty > shellEmptyRetries {
				// Published but never readable: trimmed while we read.
				skipped, w.next = f.maxSeen+1-w.next, f.maxSeen+1
			}
			f.mu.Unlock()
			if skipped > 0 && !quiet {
				c.reply(trimNotice(skipped))
			}
			time.Sleep(10 * time.Millisecond)
			continue
		}
		empty = 0
		if first := chunks[0].Seq; first > next && !quiet {
			c.reply(trimNotice(first - next))
		}
		for i := 0; i < len(chunks); {
			if !c.waitRoom() {
				return
			}
			f.mu.Lock()
			if w.pos != pos || w.done {
				f.mu.Unlock()
				return
			}
			for ; i < len(chunks); i++ {
				ch := chunks[i]
				if ch.Seq < w.next {
					continue
				}
				if !c.trySend(outputFrame(ch.Seq, ch.Data)) {
					break // full again: wait for room
				}
				w.next = ch.Seq + 1
			}
			f.mu.Unlock()
		}
	}
}

// trimNotice tells a socket that n chunks it should have had are no longer
// stored (PROTOCOL §4: a notice, then what remains).
func trimNotice(n int64) app.ShellOutput {
	return app.ShellOutput{Type: "output", Data: app.ShellNotice("warn",
		fmt.Sprintf("[Output trimmed: %d earlier chunks are no longer stored]", n))}
}

// noticeFrame encodes a gateway notice (an output frame without seq).
func noticeFrame(level, text string) []byte {
	b, _ := json.Marshal(app.ShellOutput{Type: "output", Data: app.ShellNotice(level, text)})
	return b
}

// written records that sock was written the chunk seq of its terminal,
// and tells the terminal's worker, one ack at a time per terminal: the
// worker reads its PTY only while the most advanced socket keeps up.
func (h *shellHub) written(sock *shellSocket, seq int64) {
	sock.mu.Lock()
	w := sock.w
	sock.mu.Unlock()
	if w == nil {
		return
	}
	f := w.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if w.gen != f.gen || seq <= f.written {
		return
	}
	f.written = seq
	if !f.acking {
		f.acking = true
		go h.sendAcks(f)
	}
}

// sendAcks tells f's worker the written seq until it has the newest.
// Runs in its own goroutine.
func (h *shellHub) sendAcks(f *shellFeed) {
	for {
		f.mu.Lock()
		seq, gen, worker := f.written, f.gen, f.worker
		if seq <= f.acked || worker == "" {
			f.acking = false
			f.mu.Unlock()
			return
		}
		f.acked = seq
		f.mu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
		err := h.st.SendControl(ctx, worker, store.Control{
			Type: store.ControlShellAck, Shell: f.key, Gen: gen, Data: strconv.AppendInt(nil, seq, 10),
		})
		cancel()
		if err != nil {
			// The worker reads on after its stall timeout; nothing is lost.
			h.log.Debug("ack terminal output", "shell", f.key, "err", err)
		}
		// One ack per ackInterval at most: each is a Redis round trip for
		// the gateway and the worker, and the window is far larger than
		// what a terminal prints in this time.
		time.Sleep(ackInterval)
	}
}

// ackInterval spaces a terminal's acks: at 20 MB/s, 5 ms is 100 KB, well
// within the worker's window (workers/shellflow.go).
const ackInterval = 5 * time.Millisecond

// frameSeq reads the seq of an output frame (outputFrame puts it last); a
// notice or another frame has none.
func frameSeq(frame []byte) (int64, bool) {
	i := bytes.LastIndex(frame, []byte(`"seq":`))
	if i < 0 || !bytes.HasSuffix(frame, []byte("}")) {
		return 0, false
	}
	n, err := strconv.ParseInt(string(frame[i+len(`"seq":`):len(frame)-1]), 10, 64)
	return n, err == nil
}

// outputFrame encodes an output frame with its seq, as
// json.Marshal(app.ShellOutput{…}) does but without its reflection and
// HTML escaping: terminal output is the gateway's largest per-byte cost.
func outputFrame(seq int64, data string) []byte {
	b := make([]byte, 0, len(data)+len(data)/16+48)
	b = append(b, `{"type":"output","data":`...)
	b = appendJSONString(b, data)
	b = append(b, `,"seq":`...)
	b = strconv.AppendInt(b, seq, 10)
	return append(b, '}')
}

// run refreshes the watch time of every terminal with a socket here, so
// that its worker does not take it for detached, and ends the terminals
// whose worker died. Runs in its own goroutine.
func (h *shellHub) run(ctx context.Context) {
	t := time.NewTicker(h.refresh)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		type target struct {
			key, worker string
			gen         int64
		}
		var list []target
		h.mu.Lock()
		for _, f := range h.feeds {
			f.mu.Lock()
			if f.exit == nil && f.gen > 0 {
				list = append(list, target{f.key, f.worker, f.gen})
			}
			f.mu.Unlock()
		}
		h.mu.Unlock()
		alive := map[string]bool{}
		for _, t := range list {
			if _, err := h.st.ShellTouch(ctx, t.key, t.gen, 0); err != nil && !errors.Is(err, store.ErrStaleShell) && ctx.Err() == nil {
				h.log.Warn("shell refresh", "err", err)
			}
			if t.worker == "" {
				continue
			}
			ok, seen := alive[t.worker]
			if !seen {
				var err error
				if ok, err = h.st.WorkerAlive(ctx, t.worker); err != nil {
					continue
				}
				alive[t.worker] = ok
			}
			if !ok {
				// Every gateway watching it hears this exit.
				if _, err := h.st.ShellExit(ctx, t.key, t.gen, 1, "", store.ShellExitLost); err != nil && ctx.Err() == nil {
					h.log.Warn("shell end lost terminal", "err", err)
				}
			}
		}
	}
}

// closeAll closes every /shell socket with 1001 (the gateway is draining).
func (h *shellHub) closeAll() {
	h.mu.Lock()
	socks := make([]*shellSocket, 0, len(h.socks))
	for s := range h.socks {
		socks = append(socks, s)
	}
	h.mu.Unlock()
	var wg sync.WaitGroup
	for _, s := range socks {
		wg.Add(1)
		go func() { defer wg.Done(); s.c.closeNow(closeShutdown) }()
	}
	wg.Wait()
}
