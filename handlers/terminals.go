package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/link"
	"github.com/agentgate/agentgate/store"
)

// Gateway notices (output frames without seq), in the reference's words.
const (
	noticeReconnected = "[Reconnected to existing session]"
	noticeLost        = "[Terminal lost: its worker stopped]"
	noticeGone        = "[Terminal lost: Redis no longer has it]"
	noticeNotStarted  = "[Terminal lost: no worker started it; try again]"
	noticeRestarted   = "[Terminal restarted]"
	noticeEvicted     = "[Terminal closed: it was your least recently watched terminal, and a new one needed its place]"
	noticeTaken       = "[This terminal is open in another window: reload this one to use it here]"
)

// terminals connects /shell sockets to terminals: it opens, reattaches,
// controls and ends them; the hub delivers their output, a feed per
// terminal followed by this gateway.
type terminals struct {
	hub     *hub
	kind    *streamKind
	st      *store.Store
	log     *slog.Logger
	refresh time.Duration
	ws      app.Workspaces
	// maxOpen bounds the terminals one user has open (0: no limit).
	maxOpen int
	// outages is the gateway's outage clock (outage.go): just after an
	// outage, a worker's missing heartbeat may only be on its way.
	outages *outageClock

	mu    sync.Mutex
	socks map[*shellSocket]struct{}
	// holdMax is signalHoldMax (a test on a loaded machine lengthens it).
	holdMax time.Duration

	acks acker
	// links carries input, resizes and acks to workers that have a link.
	links *link.Client
}

// termFeed is what a feed knows of its terminal, guarded by the feed's
// mutex.
type termFeed struct {
	worker string // the worker running the feed's gen
	exit   *store.ShellLive
	// written is the highest seq of gen written to a socket here, and
	// acked the one last told to the worker (its flow control).
	written, acked int64
	// announced holds the login URLs last sent to the sockets for gen,
	// each with its autoOpen flag. The worker announces each once per
	// generation, but go-redis writes a PUBLISH again when a stalled
	// Redis does not answer within its read timeout, and Redis then runs
	// both: a browser would open the page twice.
	announced []string
}

// claimPending is a watch's claim while it has no number from Redis (see
// watch.claim): the claims heard meanwhile may be earlier ones, and are
// weighed once it has its number (beaten).
const claimPending = math.MaxInt64

// claimRetry is how often a claim Redis did not answer is made again.
const claimRetry = 500 * time.Millisecond

// replayFrames makes the frames of stored output chunks, up to maxBytes of
// frames (one at least); the chunks after them are read again by the next
// catch-up read.
func replayFrames(chunks []store.ShellChunk, maxBytes int) []storedFrame {
	frames := make([]storedFrame, 0, len(chunks))
	size := 0
	for _, ch := range chunks {
		if size >= maxBytes {
			break
		}
		fr := outputFrame(ch.Seq, ch.Data)
		frames = append(frames, storedFrame{ch.Seq, fr})
		size += len(fr)
	}
	return frames
}

// urlsRecalled is how many announced URLs a terminal's feed remembers: a
// repeated PUBLISH arrives right after the first.
const urlsRecalled = 8

func newTerminals(h *hub, st *store.Store, log *slog.Logger, ws app.Workspaces, detach time.Duration) *terminals {
	if detach <= 0 {
		detach = DefaultShellDetachTimeout
	}
	tm := &terminals{
		hub: h, st: st, log: log, ws: ws, socks: map[*shellSocket]struct{}{},
		refresh: min(max(detach/4, 50*time.Millisecond), 5*time.Second), holdMax: signalHoldMax,
		links: link.NewClient(st.WorkerLink, log),
	}
	// A terminal's stream: a chunk trimmed away is reported by a notice
	// (PROTOCOL §4) and the socket goes on with what remains.
	tm.kind = &streamKind{
		chunk: shellReplayChunk,
		read: func(ctx context.Context, key string, after int64, n int) ([]storedFrame, error) {
			chunks, err := st.ShellOutput(ctx, key, after, n)
			return replayFrames(chunks, shellReplayBytes), err
		},
		subscribe:   h.sub.SubscribeShell,
		unsubscribe: h.sub.UnsubscribeShell,
		trimmed: func(w *watch, n int64, quiet bool) bool {
			if !quiet {
				w.c.reply(trimNotice(n))
			}
			return true
		},
		caughtUp: tm.caughtUpLocked,
		watched:  watchedTerminals,
	}
	h.terminal = tm.kind
	h.sub.HandleShell(store.ShellHandlers{Message: tm.message, Resync: func(key string) { h.resync(tm.kind, key) }})
	return tm
}

// init opens or reattaches the terminal of an init frame (PROTOCOL §4).
func (tm *terminals) init(ctx context.Context, sock *shellSocket, msg app.ShellMessage, pick func(context.Context) (string, error)) {
	tm.detachSocket(sock)
	user := sock.c.user.Name
	dir, err := userProjectDir(tm.ws, user, msg.ProjectPath)
	if err != nil {
		sock.refuse(app.ShellErrInvalidPath)
		return
	}
	key := app.ShellKey(user, dir, msg)
	spec := msg.Spec(user, dir)
	if err := awaitStore(ctx, tm.st, func() (err error) { spec, err = tm.conversationOf(ctx, spec); return err }); err != nil {
		tm.fail(sock, "read session", err)
		return
	}
	paidRestart := false
	waited := false // for Redis, in this request
	toldEvicted := false
	for attempt := 0; attempt < 3; attempt++ {
		// While Redis is down or loading the init waits for it (within
		// the request's time), as a status request does.
		var info store.ShellInfo
		var ok bool
		err := awaitStore(ctx, tm.st, func() (err error) {
			info, ok, err = tm.st.Shell(ctx, key)
			waited = waited || store.Unavailable(err)
			return err
		})
		if err != nil {
			tm.fail(sock, "read terminal", err)
			return
		}
		live := ok && info.State != store.ShellExited
		if ok && !live && info.ExitReason == store.ShellExitEvicted && !toldEvicted {
			// Its socket comes back (a chat session's Shell tab opened
			// again): it is told why a fresh terminal replaces it.
			toldEvicted = true
			sock.notice("warn", noticeEvicted)
		}
		if live {
			alive, err := tm.st.WorkerAlive(ctx, info.Worker)
			switch {
			case err != nil:
				tm.fail(sock, "check worker", err)
				return
			case !alive && tm.outages.recent():
				// Just after an outage: its heartbeat may be on its way.
				// If it does not come, run ends the terminal as lost.
			case !alive:
				sock.notice("error", noticeLost)
				live = false
			case msg.LoginReset():
				// A login must not land in an old prompt: the old
				// terminal goes, a fresh one starts.
				if !paidRestart && !sock.c.allowRestart() {
					sock.refuse(restartsLimitText)
					return
				}
				paidRestart = true
				_ = tm.st.SendControl(ctx, info.Worker, store.Control{Type: store.ControlShellKill, Shell: key, Gen: info.Gen})
				live = false
			}
		}
		if live {
			from, quiet := int64(1), true
			if msg.LastSeq != nil && msg.LastGen != nil && *msg.LastGen != info.Gen {
				// Its lastSeq is of a generation restarted since (from
				// another tab): this one from its start, said so.
				sock.genNotice("warn", noticeRestarted, info.Gen)
			} else {
				sock.genNotice("info", noticeReconnected, info.Gen)
				if msg.LastSeq != nil && *msg.LastSeq <= info.Seq {
					from, quiet = *msg.LastSeq+1, false
				}
			}
			attached := tm.attach(ctx, sock, key, info.Gen, info.Worker, from, quiet, msg.ShellID == "")
			if attached && msg.SizeGiven && (msg.Cols != info.Cols || msg.Rows != info.Rows) {
				// The init's size is the one its client has now: Claude
				// Code UI's frontend sends its resizes before its init
				// (dropped: no terminal yet) and none after, so a
				// terminal reattached from a window of another size kept
				// the old one, and a full-screen program drew for it.
				tm.control(ctx, sock, store.ControlShellResize, store.ShellSize{Cols: msg.Cols, Rows: msg.Rows})
			}
			return
		}
		worker, err := pick(ctx)
		// Just after an outage the workers' heartbeats may have expired
		// and not yet been written again: a worker is waited for (within
		// the request's time) rather than taken for absent.
		for errors.Is(err, app.ErrNoWorker) && (waited || tm.outages.recent()) && ctx.Err() == nil {
			select {
			case <-ctx.Done():
			case <-time.After(100 * time.Millisecond):
				worker, err = pick(ctx)
			}
		}
		if errors.Is(err, app.ErrNoWorker) {
			tm.refused(sock, app.ShellErrNoWorker)
			return
		}
		if err != nil {
			tm.fail(sock, "list workers", err)
			return
		}
		bound := store.ShellLimit{Max: tm.maxOpen}
		if tm.outages.recent() {
			// No gateway could refresh its terminals' watch times during
			// the outage: only their socket counts say which are watched.
			bound.Stale = -1
		}
		gen, opened, err := tm.st.ShellOpen(ctx, key, info.Gen, worker, spec.Command(nil), spec, bound)
		var limit *app.LimitError
		if errors.As(err, &limit) {
			tm.refused(sock, limit.Error())
			return
		}
		if err != nil {
			tm.fail(sock, "open terminal", err)
			return
		}
		if !opened {
			continue // another gateway opened it first: reattach to it
		}
		sock.genNotice("info", spec.Welcome(), gen)
		tm.attach(ctx, sock, key, gen, worker, 1, true, msg.ShellID == "")
		return
	}
	tm.refused(sock, "Terminal is being restarted elsewhere: try again")
}

// conversationOf gives a terminal that resumes a Codex or Cursor session
// of agentgate's the id its CLI named the conversation by: those CLIs name
// their conversations themselves, and Claude Code UI's Shell tab sends the
// id of the session it shows, agentgate's (session_created). A session
// whose CLI printed no id yet has nothing to resume: its terminal starts
// the CLI afresh. An id agentgate does not hold as one of the user's
// sessions is the CLI's own, and is resumed as it is.
func (tm *terminals) conversationOf(ctx context.Context, spec app.ShellSpec) (app.ShellSpec, error) {
	if (spec.Provider != app.Codex && spec.Provider != app.Cursor) || !spec.HasSession || spec.SessionID == "" {
		return spec, nil
	}
	sess, err := tm.st.Session(ctx, spec.SessionID)
	switch {
	case errors.Is(err, app.ErrNotFound):
		return spec, nil
	case err != nil:
		return spec, err
	case sess.Owner != spec.Owner || sess.Provider != spec.Provider:
		return spec, nil
	case !app.ValidSessionID(sess.ProviderSessionID):
		// None printed yet (or one no command line may carry).
		spec.SessionID, spec.HasSession = "", false
	default:
		spec.SessionID = sess.ProviderSessionID
	}
	return spec, nil
}

// refused answers an init that opens no terminal for a reason of the
// service's (no worker, a limit, a race), and logs it: the client shows the
// refusal, and the operator sees why.
func (tm *terminals) refused(sock *shellSocket, text string) {
	tm.log.Info("terminal refused", "user", sock.c.user.Name, "reason", text)
	sock.refuse(text)
}

// fail tells sock that what failed, and the operator why; a Redis outage,
// or a Redis that refuses writes, is said as such, so that the user knows
// to try again.
func (tm *terminals) fail(sock *shellSocket, what string, err error) {
	tm.log.Warn("shell "+what, "user", sock.c.user.Name, "err", err)
	sock.notice("error", "Error: "+storeErrorText(err, what+" failed"))
}

// attach makes sock follow terminal key from seq from, and reports
// whether it does. It subscribes before it reads the stream, so no chunk
// falls between the two.
//
// A socket that claims the terminal (an init without shellId: Claude Code
// UI's frontend) takes it from the sockets that claimed it before, on
// every gateway, as the reference server gives a terminal's output to the
// socket of its last init only. That frontend leaves a socket open when
// it switches sessions quickly (its old socket's close handler lets it
// open a second new one, and it forgets the first), and both wrote every
// chunk into one screen. Sockets that name a shellId (two tabs of
// agentgate's page, or other clients) share the terminal.
func (tm *terminals) attach(ctx context.Context, sock *shellSocket, key string, gen int64, worker string, from int64, quiet, claim bool) bool {
	w, err := tm.hub.join(ctx, tm.kind, key, sock.c, func(w *watch) {
		if claim {
			w.claim = claimPending
		}
		f := w.f
		if f.term == nil {
			f.term = &termFeed{}
		}
		w.sock, w.next, w.quietTrim = sock, from, quiet
		if gen > f.gen {
			tm.switchGenLocked(f, gen)
		}
		if gen == f.gen {
			f.term.worker = worker
		}
		w.gen = f.gen
		if w.gen != gen {
			w.next = 1
		}
	})
	if err != nil {
		tm.fail(sock, "subscribe", err)
		return false
	}
	sock.mu.Lock()
	sock.w, sock.taken = w, false
	sock.mu.Unlock()
	f := w.f
	// A generation that started since join was counted by
	// switchGenLocked, which set touched.
	f.mu.Lock()
	touch, count := w.gen, w.touched != w.gen
	w.touched = w.gen
	f.mu.Unlock()
	if count {
		if _, err := tm.st.ShellTouch(ctx, key, touch, +1); err != nil && !errors.Is(err, store.ErrStaleShell) {
			tm.log.Warn("shell attach", "err", err)
		}
	}
	// An exit published before the subscription is only in the hash.
	if info, ok, err := tm.st.Shell(ctx, key); err == nil && ok && info.State == store.ShellExited {
		f.mu.Lock()
		if f.term.exit == nil && f.gen == info.Gen {
			f.term.exit = &store.ShellLive{Kind: 'e', Gen: info.Gen, Seq: info.Seq, ExitCode: info.ExitCode, Signal: info.Signal, Reason: info.ExitReason}
			f.maxSeen = max(f.maxSeen, info.Seq)
		}
		f.mu.Unlock()
	}
	f.mu.Lock()
	tm.hub.startLocked(w)
	f.mu.Unlock()
	if claim {
		tm.claim(ctx, w, key, touch)
	}
	return true
}

// claim has Redis number w's claim of terminal key, heard by every gateway
// following it: the highest number wins everywhere. A claim Redis did not
// answer (it may yet run it: a stalled Redis runs what it was sent) is made
// again every claimRetry while the watch lasts, and the watch keeps the
// number of the one answered, a later one.
func (tm *terminals) claim(ctx context.Context, w *watch, key string, gen int64) {
	numbered := func(n int64, err error) bool {
		if err != nil && !errors.Is(err, store.ErrShellGone) {
			return false
		}
		if n > 0 { // none for a terminal Redis lost: it ends anyway
			w.f.mu.Lock()
			tm.numberedLocked(w, n)
			w.f.mu.Unlock()
		}
		return true
	}
	n, err := tm.st.ShellTaken(ctx, key, gen)
	if numbered(n, err) {
		return
	}
	tm.log.Warn("shell claim: trying again", "shell", key, "err", err)
	go func() {
		for {
			time.Sleep(claimRetry)
			w.f.mu.Lock()
			done := w.done
			w.f.mu.Unlock()
			if done {
				return
			}
			ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
			n, err := tm.st.ShellTaken(ctx, key, gen)
			cancel()
			if numbered(n, err) {
				return
			}
		}
	}()
}

// numberedLocked gives w its claim's number n from Redis. A claim heard
// meanwhile with a higher number is a later one, and has taken the
// terminal. f.mu must be held.
func (tm *terminals) numberedLocked(w *watch, n int64) {
	switch {
	case w.done:
	case n < w.beaten:
		tm.displaceLocked(w)
	default:
		w.claim = n
	}
}

// claimedLocked hears that claim n of f's terminal was made (on its
// channel, or read by a refresh): it ends the claimed watches whose
// numbers are lower. f.mu must be held.
func (tm *terminals) claimedLocked(f *feed, n int64) {
	for w := range f.watches {
		switch {
		case w.claim == 0 || w.done:
		case w.claim == claimPending:
			w.beaten = max(w.beaten, n)
		case w.claim < n:
			tm.displaceLocked(w)
		}
	}
}

// displaceLocked ends a watch whose socket's claim of its terminal a
// later claim took: the socket stays open and gets nothing more of it,
// not even a notice, since the client writes whatever it gets into the
// screen of the socket that took it; its terminal no longer counts it as
// a watcher. f.mu must be held.
func (tm *terminals) displaceLocked(w *watch) {
	if w.held > 0 {
		tm.endHoldLocked(w) // its socket's paused queue goes out
	}
	w.done = true
	go func() {
		w.sock.mu.Lock()
		if w.sock.w == w {
			w.sock.w, w.sock.taken = nil, true
		}
		w.sock.mu.Unlock()
		tm.removeWatch(w)
	}()
}

// caughtUpLocked sends the exit of a terminal that ended to a watch that
// has every chunk before it. f.mu must be held.
func (tm *terminals) caughtUpLocked(w *watch) {
	if e := w.f.term.exit; e != nil && w.next > e.Seq {
		tm.sendExitLocked(w)
	}
}

// switchGenLocked moves the feed to a newer generation of its terminal (a
// login reset or forceRestart elsewhere): every socket follows the new
// terminal from its first chunk. f.mu must be held.
func (tm *terminals) switchGenLocked(f *feed, gen int64) {
	f.gen, f.maxSeen = gen, 0
	*f.term = termFeed{}
	for w := range f.watches {
		if w.done {
			continue
		}
		w.gen, w.next, w.quietTrim, w.flushedTo = gen, 1, true, 0
		if w.held > 0 {
			w.held = 0
			w.c.resume(nil)
		}
		w.c.trySend(genNoticeFrame("warn", noticeRestarted, gen))
		w.touched = gen
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
			defer cancel()
			_, _ = tm.st.ShellTouch(ctx, f.key, gen, +1)
		}()
		if w.parked {
			// Still joining (attach): it starts once its socket holds
			// it; an exit sent before that would not detach the socket.
			continue
		}
		tm.hub.startLocked(w)
	}
	if gen > 0 {
		go tm.learnWorker(f, gen)
	}
}

// learnWorker reads the worker of a generation first seen on pub/sub.
func (tm *terminals) learnWorker(f *feed, gen int64) {
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	tm.workerOf(ctx, f, gen)
}

// workerOf returns the worker of generation gen of f's terminal, reading it
// from the hash (and keeping it) while it is not known yet; "" if gen is no
// longer the terminal's.
func (tm *terminals) workerOf(ctx context.Context, f *feed, gen int64) string {
	f.mu.Lock()
	worker := f.term.worker
	f.mu.Unlock()
	if worker != "" {
		return worker
	}
	info, ok, err := tm.st.Shell(ctx, f.key)
	if err != nil || !ok || info.Gen != gen {
		return ""
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.gen == gen && f.term.worker == "" {
		f.term.worker = info.Worker
	}
	return info.Worker
}

// input sends what sock's client typed or pasted to its terminal's worker:
// in pieces of at most app.MaxShellInput bytes, cut between characters
// (JSON would turn a cut one into U+FFFD), one after another through the
// path of a keystroke, so that they arrive in order. A piece that cannot be
// sent ends the input: the rest would arrive with a hole.
func (tm *terminals) input(ctx context.Context, sock *shellSocket, data string) {
	for {
		n := len(data)
		if n > app.MaxShellInput {
			n = app.MaxShellInput
			for k := n; k > n-utf8.UTFMax && k > 0; k-- {
				if utf8.RuneStart(data[k]) {
					n = k
					break
				}
			}
		}
		if !tm.control(ctx, sock, store.ControlShellInput, data[:n]) || n == len(data) {
			return
		}
		data = data[n:]
	}
}

// control sends input or a resize of sock's terminal to its worker (send),
// and reports whether it was sent.
func (tm *terminals) control(ctx context.Context, sock *shellSocket, typ string, v any) bool {
	sock.mu.Lock()
	w := sock.w
	sock.mu.Unlock()
	if w == nil {
		if !sock.tellTaken() {
			sock.error(app.ShellErrNoTerminal)
		}
		return false
	}
	w.f.mu.Lock()
	done, gen, exited := w.done, w.gen, w.exited
	w.f.mu.Unlock()
	if exited != nil {
		// The terminal ended: the client is sent its exit first.
		select {
		case <-exited:
			sock.error(app.ShellErrNoTerminal)
		case <-ctx.Done():
		}
		return false
	}
	if done {
		return false // another socket took the terminal (displaceLocked)
	}
	// Right after another tab restarted the terminal, its worker may not
	// be known here yet: read it rather than drop the keystrokes.
	worker := tm.workerOf(ctx, w.f, gen)
	if worker == "" {
		return false // replaced again meanwhile: the socket follows the newer one
	}
	data, err := json.Marshal(v)
	if err != nil {
		return false
	}
	if in, ok := v.(string); ok && typ == store.ControlShellInput && app.HasSignalKey(in) {
		tm.holdForSignal(w)
	}
	if _, err := tm.send(ctx, worker, store.Control{Type: typ, Shell: w.f.key, Gen: gen, Data: data}); err != nil {
		tm.fail(sock, "send to terminal", err)
		return false
	}
	return true
}

// send sends c to worker over its link, or through its inbox when it has
// no link or its link failed.
func (tm *terminals) send(ctx context.Context, worker string, c store.Control) (linked bool, err error) {
	if tm.links.Send(ctx, worker, c) == nil {
		linkedControls.Inc()
		return true, nil
	}
	inboxControls.Inc()
	return false, tm.st.SendControl(ctx, worker, c)
}

// detachSocket stops sock following its terminal.
func (tm *terminals) detachSocket(sock *shellSocket) {
	sock.mu.Lock()
	w := sock.w
	sock.w, sock.taken = nil, false
	sock.mu.Unlock()
	if w == nil {
		return
	}
	w.f.mu.Lock()
	exited := w.exited
	w.f.mu.Unlock()
	if exited != nil {
		// The old terminal's exit goes out before anything of a new one
		// (its sending is bounded by replyWait, then the socket closes).
		<-exited
	}
	tm.removeWatch(w)
}

// removeWatch takes a watch out of its feed and records the detach in
// Redis, once: the exit path and a detach (a new init, a closed socket)
// may both come here.
func (tm *terminals) removeWatch(w *watch) {
	w.f.mu.Lock()
	gen := w.gen
	if w.held > 0 {
		// The socket's queue is paused for this terminal's signal key:
		// it goes on now, not when the hold's timer ends it, which would
		// find a new terminal's chunks there and drop those numbered as
		// this one's flushed output.
		tm.endHoldLocked(w)
	}
	w.f.mu.Unlock()
	if !tm.hub.leave(w) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), requestTimeout)
	defer cancel()
	if _, err := tm.st.ShellTouch(ctx, w.f.key, gen, -1); err != nil && !errors.Is(err, store.ErrStaleShell) {
		tm.log.Warn("shell detach", "err", err)
	}
}

// message handles a terminal channel message. It runs on the subscriber's
// goroutine and never blocks on a socket.
func (tm *terminals) message(key string, m store.ShellLive) {
	f := tm.hub.feed(tm.kind, key)
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if m.Kind == 't' {
		// Of the terminal, whatever its generation: a claim published
		// just before a restart (another tab's) must still be heard.
		tm.claimedLocked(f, m.Seq)
		return
	}
	if m.Gen < f.gen {
		return
	}
	if m.Gen > f.gen {
		tm.switchGenLocked(f, m.Gen)
	}
	switch m.Kind {
	case 'o':
		tm.hub.publishLocked(f, m.Seq, func() []byte { return outputFrame(m.Seq, m.Data) })
	case 's':
		tm.signalAnsweredLocked(f, m)
	case 'e':
		f.term.exit = &m
		f.maxSeen = max(f.maxSeen, m.Seq)
		for w := range f.watches {
			if w.held > 0 && !w.done {
				// No answer comes after the exit: the catch-up ends
				// with it.
				tm.releaseLocked(w, false)
				continue
			}
			if w.catching || w.done {
				continue
			}
			if w.next > m.Seq {
				tm.sendExitLocked(w)
			} else {
				tm.hub.startLocked(w)
			}
		}
	case 'u':
		id := "0 " + m.Data
		if m.AutoOpen {
			id = "1 " + m.Data
		}
		if slices.Contains(f.term.announced, id) {
			return
		}
		if len(f.term.announced) == urlsRecalled {
			f.term.announced = slices.Delete(f.term.announced, 0, 1)
		}
		f.term.announced = append(f.term.announced, id)
		frame, _ := json.Marshal(app.ShellAuthURL{Type: "auth_url", URL: m.Data, AutoOpen: m.AutoOpen})
		for w := range f.watches {
			if !w.done {
				w.c.trySend(frame)
			}
		}
	}
}

// signalHoldMax bounds how long a socket's output is held after it typed
// a signal key, should its answer not come (a worker of an earlier version,
// a message lost in a Redis outage).
const signalHoldMax = 50 * time.Millisecond

// holdForSignal holds the output of w's socket before a signal key it
// typed is sent (app.HasSignalKey), until the terminal's worker answers
// (signalAnsweredLocked): no live frame is queued, and the queued frames
// melody does not have yet wait. When the key raises a signal, the
// terminal's line discipline throws away the output it has queued
// (termios(3), ISIG); the output stored before the key reached the worker
// is that queue's continuation, and the socket that typed the key skips
// what it has not been sent of it, so its prompt comes back as soon as on
// a terminal of its own. Other sockets, and a later reattach, still get
// every chunk.
func (tm *terminals) holdForSignal(w *watch) {
	tm.mu.Lock()
	holdMax := tm.holdMax
	tm.mu.Unlock()
	f := w.f
	f.mu.Lock()
	defer f.mu.Unlock()
	if w.done || w.parked || w.gen != f.gen {
		return
	}
	w.held++
	w.holdID++
	id := w.holdID
	w.catching = true
	w.pos++ // a catch-up under way stops; the release starts another
	w.c.pause()
	time.AfterFunc(holdMax, func() {
		f.mu.Lock()
		defer f.mu.Unlock()
		if w.held > 0 && w.holdID == id {
			tm.releaseLocked(w, false)
		}
	})
}

// signalAnsweredLocked answers a hold of each watch that typed a signal
// key: when the key flushed, the watch moves past the output stored before
// it, which counts as written for the worker's flow control. The last
// answer ends the hold. f.mu must be held.
func (tm *terminals) signalAnsweredLocked(f *feed, m store.ShellLive) {
	for w := range f.watches {
		if w.held == 0 {
			continue
		}
		if m.Flushed {
			// The flushed output is this generation's, published or not.
			f.maxSeen = max(f.maxSeen, m.Seq)
			w.flushedTo = max(w.flushedTo, m.Seq)
			if m.Seq >= w.next {
				w.next = m.Seq + 1
			}
			tm.writtenLocked(f, m.Seq)
		}
		if w.held--; w.held == 0 {
			tm.releaseLocked(w, true)
		}
	}
}

// endHoldLocked resumes the queue of w's socket, dropping the frames of
// output its signal key threw away. f.mu must be held.
func (tm *terminals) endHoldLocked(w *watch) {
	w.held = 0
	through := w.flushedTo
	w.c.resume(func(frame []byte) bool {
		seq, ok := frameSeq(frame)
		return ok && seq <= through
	})
}

// releaseLocked ends w's hold: its queued frames of output thrown away
// are dropped and the others go out. Then it reads the stream from its
// position at the socket's pace, as after any catch-up, unless answered
// and nothing from its position on was published: the worker announces a
// key before any output read after it, so the watch is live at once.
// f.mu must be held.
func (tm *terminals) releaseLocked(w *watch, answered bool) {
	tm.endHoldLocked(w)
	switch {
	case w.done:
	case answered && w.f.maxSeen < w.next && !w.resynced:
		w.catching = false
		tm.caughtUpLocked(w)
	default:
		tm.hub.startLocked(w)
	}
}

// sendExitLocked sends the exit of the feed's terminal to w, once, and
// detaches it: the socket stays open and may init again. f.mu must be held.
func (tm *terminals) sendExitLocked(w *watch) {
	if w.done {
		return
	}
	e := *w.f.term.exit
	w.done = true
	exited := make(chan struct{})
	w.exited = exited
	// The frames go out after every chunk already queued; sending may wait
	// for room, which must not happen under the feed's lock. Until they
	// are queued, input and a new init of the socket wait for them
	// (control, detachSocket): input sent once the client saw exit is
	// answered ShellErrNoTerminal after it, not dropped, and a new
	// terminal's frames never come before the old one's exit.
	go func() {
		if testHookExitSend != nil {
			testHookExitSend()
		}
		switch e.Reason {
		case store.ShellExitLost:
			w.sock.notice("error", noticeLost)
		case store.ShellExitGone:
			w.sock.notice("error", noticeGone)
		case store.ShellExitNotStarted:
			w.sock.notice("error", noticeNotStarted)
		case store.ShellExitEvicted:
			w.sock.notice("warn", noticeEvicted)
		default:
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
		w.c.reply(&app.ShellExit{Type: "exit", ExitCode: e.ExitCode, Signal: sig})
		w.sock.mu.Lock()
		if w.sock.w == w {
			w.sock.w = nil
		}
		w.sock.mu.Unlock()
		// Before removeWatch, whose Redis write may wait out an outage:
		// what waits for the frames waits for nothing else.
		close(exited)
		tm.removeWatch(w)
	}()
}

// testHookExitSend, when set by a test, is called before a terminal's exit
// frames are sent to a socket.
var testHookExitSend func()

// run refreshes the watch time of every terminal with a socket here, so
// that its worker does not take it for detached, and ends the terminals
// whose worker died. Runs in its own goroutine.
func (tm *terminals) run(ctx context.Context) {
	t := time.NewTicker(tm.refresh)
	defer t.Stop()
	// After a Redis outage (a pass that could not reach it: down,
	// restarting, loading its data), no terminal is taken for lost until
	// its worker had time to send a heartbeat again: a restart that took
	// longer than the heartbeats' TTL has expired every one of them, as
	// the reaper knows too (workers/reaper.go).
	outage := false
	// A failing refresh is said once when it begins (the first terminal
	// of the pass) and once when a pass refreshes without one.
	failing, failed := false, false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if outage {
			outage = false
			tm.outages.saw()
		}
		if failing && !failed {
			tm.log.Info("shell refresh works again")
		}
		failing, failed = failed, false
		type target struct {
			key, worker string
			gen         int64
		}
		var list []target
		for _, f := range tm.hub.feedsOf(tm.kind) {
			f.mu.Lock()
			if f.term.exit == nil && f.gen > 0 {
				list = append(list, target{f.key, f.term.worker, f.gen})
			}
			f.mu.Unlock()
		}
		if len(list) == 0 {
			// Nothing to refresh: still notice an outage, or a Redis
			// that refuses writes (no heartbeat is written meanwhile),
			// for the reattaches and commands that follow it.
			if err := tm.st.CheckWritable(ctx); store.Retryable(err) {
				outage = true
				tm.outages.saw()
			}
		}
		alive := map[string]bool{}
		for _, t := range list {
			began := time.Now()
			lastClaim, err := tm.st.ShellRefresh(ctx, t.key, t.gen)
			outage = outage || time.Since(began) > store.SlowCall
			switch {
			case err == nil && lastClaim > 0:
				// A claim published while the subscription was away
				// was not heard.
				tm.claimRead(t.key, lastClaim)
			case errors.Is(err, store.ErrShellGone):
				// Redis lost it with its data, and no exit can be recorded.
				// Its worker is told to end it now rather than at its next
				// append or check (up to 30 s later). The sockets here are
				// told, and may open a new one.
				tm.log.Warn("terminal gone from Redis: ending it", "shell", t.key, "gen", t.gen, "worker", t.worker)
				if t.worker != "" {
					if _, err := tm.send(ctx, t.worker, store.Control{Type: store.ControlShellKill, Shell: t.key, Gen: t.gen}); err != nil {
						tm.log.Warn("kill a terminal gone from Redis", "shell", t.key, "err", err)
					}
				}
				tm.message(t.key, store.ShellLive{Kind: 'e', Gen: t.gen, ExitCode: 1, Reason: store.ShellExitGone})
				continue
			case errors.Is(err, store.ErrShellExited):
				// Its exit was published while this gateway's subscription
				// was down (a Redis restart or failover): it is read back.
				tm.missedExit(ctx, t.key, t.gen)
				continue
			case err != nil && !errors.Is(err, store.ErrStaleShell) && ctx.Err() == nil:
				// A Redis that refuses writes takes no heartbeat either:
				// an expired one then says nothing of its worker.
				outage = outage || store.Retryable(err)
				if !failing && !failed {
					tm.log.Warn("shell refresh", "err", err)
				}
				failed = true
			}
			if t.worker == "" {
				continue
			}
			ok, seen := alive[t.worker]
			if !seen {
				var err error
				began := time.Now()
				if ok, err = tm.st.WorkerAlive(ctx, t.worker); err != nil {
					outage = outage || store.Unavailable(err)
					continue
				}
				outage = outage || time.Since(began) > store.SlowCall
				alive[t.worker] = ok
			}
			if !ok && !outage && !tm.outages.recent() {
				// Every gateway watching it hears this exit.
				ended, err := tm.st.ShellExit(ctx, t.key, t.gen, 1, "", store.ShellExitLost)
				switch {
				case err != nil && ctx.Err() == nil:
					tm.log.Warn("shell end lost terminal", "err", err)
				case ended:
					// A worker that is alive but missed its heartbeats (a
					// loaded machine, a stalled Redis) ends its terminals
					// at their next append: the operator sees why here.
					tm.log.Warn("terminal's worker has no heartbeat: ended it as lost", "shell", t.key, "gen", t.gen, "worker", t.worker)
				}
			}
		}
		if outage {
			tm.outages.saw()
		}
	}
}

// claimRead hears the last claim of a terminal that a refresh read.
func (tm *terminals) claimRead(key string, n int64) {
	f := tm.hub.feed(tm.kind, key)
	if f == nil {
		return
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	tm.claimedLocked(f, n)
}

// missedExit tells the sockets of a terminal generation the exit that its
// hash records and that this gateway did not hear.
func (tm *terminals) missedExit(ctx context.Context, key string, gen int64) {
	info, ok, err := tm.st.Shell(ctx, key)
	if err != nil || !ok || info.Gen != gen || info.State != store.ShellExited {
		return
	}
	tm.log.Info("terminal exit read back: its message was missed", "shell", key, "gen", gen)
	tm.message(key, store.ShellLive{Kind: 'e', Gen: gen, Seq: info.Seq, ExitCode: info.ExitCode, Signal: info.Signal, Reason: info.ExitReason})
}

// closeAll closes every /shell socket with 1001 (the gateway is draining).
func (tm *terminals) closeAll() {
	tm.mu.Lock()
	conns := make([]*conn, 0, len(tm.socks))
	for s := range tm.socks {
		conns = append(conns, s.c)
	}
	tm.mu.Unlock()
	closeShutdownAll(conns)
}
