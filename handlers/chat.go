package handlers

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/olahol/melody"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/internal/workspacefs"
	"github.com/agentgate/agentgate/store"
)

// requestTimeout bounds the Redis work of one client message.
const requestTimeout = 10 * time.Second

// outageWorkerWait bounds how long a command just after a Redis outage
// waits for a worker's heartbeat to come back (workers beat every 2 s by
// default), leaving the rest of requestTimeout to start the run.
const outageWorkerWait = 5 * time.Second

// onChatMessage handles one /ws frame. melody calls it on the socket's read
// goroutine, one frame at a time, so a socket's messages keep their order;
// anything slow (replays) runs on its own goroutine.
func (s *Server) onChatMessage(ms *melody.Session, data []byte) {
	c := connOf(ms)
	defer func() {
		// A bug must not take the gateway down with every other socket.
		if p := recover(); p != nil {
			s.log.Error("chat message handler panicked", "panic", p, "user", c.user.Name)
			c.reply(app.NewErrorReply("Internal error"))
		}
	}()
	if !c.admit(1) {
		return
	}
	msg, err := app.ParseClientMessage(data)
	if reqErr := (*app.RequestError)(nil); errors.As(err, &reqErr) {
		c.reply(&app.ErrorReply{Type: "error", Error: reqErr.Error(), RequestID: reqErr.RequestID, SessionID: reqErr.SessionID})
		if h := readCommandHead(data); h.isCommand() {
			s.endRefusedCommand(c, h.provider(), h.sessionID(), reqErr.Error())
		}
		return
	}
	if err != nil {
		c.reply(app.NewErrorReply(err.Error()))
		return
	}
	messagesIn.WithLabelValues(metricType(msg.Type)).Inc()
	ctx, cancel := context.WithTimeout(c.ctx, requestTimeout)
	defer cancel()
	switch msg.Type {
	case "claude-command", "cursor-command", "codex-command", "gemini-command":
		s.command(ctx, c, msg)
	case "abort-session", "cursor-abort":
		s.abort(ctx, c, msg)
	case "check-session-status":
		if msg.LastSeq != nil {
			c.deliverImmediately()
		}
		// Claude Code UI's frontend checks each session its user opens and
		// never unsubscribes: its socket follows only what it needs.
		viewing := c.isLatestOnly()
		if viewing {
			s.dropFinishedWatches(ctx, c, msg.SessionID)
		}
		s.checkStatus(ctx, c, msg.SessionID, statusProvider(msg.Provider), msg.LastSeq, viewing)
	case "subscribe":
		if len(msg.Sessions) > maxSubscribe {
			c.reply(app.NewErrorReply(fmt.Sprintf("Too many sessions: at most %d per subscribe", maxSubscribe)))
			return
		}
		// A subscribe costs a frame per session; the frame paid for one.
		if !c.admit(len(msg.Sessions) - 1) {
			return
		}
		for _, e := range msg.Sessions {
			if e.LastSeq != nil {
				c.deliverImmediately()
			}
			s.checkStatus(ctx, c, e.SessionID, "", e.LastSeq, false)
		}
	case "unsubscribe":
		s.hub.detach(c, msg.SessionID)
	case "get-pending-permissions":
		s.pendingPermissions(ctx, c, msg.SessionID)
	case "get-active-sessions":
		s.activeSessions(ctx, c)
	case "claude-permission-response":
		s.permissionResponse(ctx, c, msg)
	default:
		text := "Unknown message type: " + app.Clip(msg.Type, 100)
		c.reply(app.NewErrorReply(text))
		// Claude Code UI's frontend sends opencode-command, which agentgate
		// does not run, and then waits for its end.
		if h := readCommandHead(data); h.isCommand() {
			s.endRefusedCommand(c, h.provider(), h.sessionID(), text)
		}
	}
}

// commandHead is what a frame the gateway refused says of the command it
// may be: enough to end that command on a paced socket.
type commandHead struct {
	Type      string `json:"type"`
	SessionID string `json:"sessionId"`
	Options   struct {
		SessionID string `json:"sessionId"`
	} `json:"options"`
}

// readCommandHead reads a frame's commandHead as far as it can: a field of
// the wrong type is left empty, the others are read.
func readCommandHead(data []byte) commandHead {
	var h commandHead
	_ = json.Unmarshal(data, &h)
	return h
}

// isCommand reports whether the frame asked for a run: any *-command.
func (h commandHead) isCommand() bool { return strings.HasSuffix(h.Type, "-command") }

// provider is the provider the command names (claude-command: claude).
func (h commandHead) provider() app.Provider {
	return app.Provider(app.Clip(strings.TrimSuffix(h.Type, "-command"), 32))
}

// sessionID is the session the command was for, as the client sent it.
func (h commandHead) sessionID() string { return firstNonEmpty(h.SessionID, h.Options.SessionID) }

// endRefusedCommand follows the error reply to a command that started no
// run, on a paced socket (one whose client has not shown that it handles
// every frame: Claude Code UI's frontend), with the frames that frontend
// acts on. It drops kind-less frames but a few types
// (useChatRealtimeHandlers.ts at afc717e6), so the error reply is invisible
// to it, and its composer stays busy until a `complete`: the send marked
// the session it was for (or, for a new chat, its pending placeholder) as
// processing, and only a complete clears both. An `error` row shows the
// reason in that session's conversation, then `complete{success:false,
// exitCode:1}`, as the reference sends when a provider fails before its
// session is known. sessionID is the one the command carried, or none for
// a new chat: the frontend then takes the session it shows, and clears the
// pending placeholder. These frames are replies to this socket alone, not
// session events: nothing is stored, and they carry no seq.
//
// A command refused for a session of the user's that is running (a second
// prompt while the first runs, an option refused) gets the row and no
// complete: the frontend already shows that session busy, and its run's
// own complete will end it; another would end it early, and would be a
// second complete of one run in the frontend's eyes.
func (s *Server) endRefusedCommand(c *conn, provider app.Provider, sessionID, text string) {
	if !c.isLatestOnly() {
		return
	}
	s.endRefused(c, provider, sessionID, text, s.runningFor(c, app.Clip(sessionID, app.MaxSessionIDLen)))
}

// endRefused is endRefusedCommand for a session known to be running or
// not: a complete follows the row unless it is running.
func (s *Server) endRefused(c *conn, provider app.Provider, sessionID, text string, running bool) {
	if !c.isLatestOnly() {
		return
	}
	sessionID = app.Clip(sessionID, app.MaxSessionIDLen)
	events := []app.Event{app.ErrorRow(text)}
	if !running {
		events = append(events, app.CompleteEvent(sessionID, app.Outcome{ExitCode: 1}))
	}
	for _, e := range events {
		e.SessionID, e.Provider = sessionID, provider
		if b, err := e.Body(); err == nil {
			c.send(b)
		}
	}
}

// runningFor reports whether sessionID names a running session that c's
// user can see; false when it cannot be read (Redis away: a client left
// busy would wait for a complete that may never come).
func (s *Server) runningFor(c *conn, sessionID string) bool {
	if sessionID == "" {
		return false
	}
	ctx, cancel := context.WithTimeout(c.ctx, requestTimeout)
	defer cancel()
	sess, err := s.st.Session(ctx, sessionID)
	return err == nil && c.user.CanSee(sess.Owner) && sess.Running()
}

// endAbortWithoutRun follows the "No active run" reply to an abort, on a
// paced socket, with the complete{aborted:true, exitCode:1} the reference
// server sends to every abort (chat-websocket.service.ts at afc717e6): its
// frontend clears the session's Stop and busy state only on a complete. A
// reply to this socket alone, not a session event (PROTOCOL §3.4: no run,
// so the session emits no complete).
func (c *conn) endAbortWithoutRun(provider app.Provider, sessionID string) {
	if !c.isLatestOnly() {
		return
	}
	sessionID = app.Clip(sessionID, app.MaxSessionIDLen)
	e := app.CompleteEvent(sessionID, app.Outcome{ExitCode: 1, Aborted: true})
	e.SessionID, e.Provider = sessionID, provider
	if b, err := e.Body(); err == nil {
		c.send(b)
	}
}

// maxSubscribe bounds the sessions of one subscribe message.
const maxSubscribe = 100

// followError is what a client is told when its gateway could not
// subscribe to a session: the store's outage when that is why (the
// session's node of a cluster failing over, Redis restarting).
func followError(err error) string {
	return storeErrorText(err, "Gateway could not follow the session; try again")
}

// storeErrorText is what a client is told of a request that failed with
// err: why Redis did not take it (down or restarting, full, or unable to
// save its data), or otherwise when err is another error.
func storeErrorText(err error, otherwise string) string {
	switch {
	case store.Unavailable(err):
		return app.StoreUnavailableError
	case store.Full(err):
		return app.StoreFullError
	case store.Refused(err):
		return app.StoreRefusedError
	}
	return otherwise
}

// busyText is what a command for a session that is running is told.
const busyText = "This session is already processing a command; wait for it to complete or abort it."

// command starts a run (PROTOCOL §3.3).
func (s *Server) command(ctx context.Context, c *conn, msg *app.ClientMessage) {
	provider, _ := app.ProviderForCommand(msg.Type)
	fail := func(text string) {
		c.reply(&app.ErrorReply{Type: "error", Error: text, RequestID: msg.RequestID})
		s.endRefusedCommand(c, provider, firstNonEmpty(msg.SessionID, msg.Options.SessionID), text)
	}
	if !s.providers[provider] {
		fail(fmt.Sprintf("Provider %s is not available on this gateway", provider))
		return
	}
	opts := &msg.Options
	if strings.TrimSpace(msg.Command) == "" {
		fail("A command (the prompt) is required")
		return
	}
	if err := validateOptions(opts); err != nil {
		fail(err.Error())
		return
	}
	if err := app.CheckPrompt(provider, msg.Command); err != nil {
		fail(err.Error())
		return
	}
	began := time.Now()
	ok, err := s.workerAvailable(ctx)
	if store.Unavailable(err) || time.Since(began) > store.SlowCall {
		// A read that waited out a failover may have found the heartbeats
		// that expired meanwhile (TestCommandsThroughJobsFailover).
		s.outages.saw()
	}
	// Just after an outage the workers' heartbeats may have expired and
	// not yet been written again: a worker is waited for, a few seconds
	// at most, rather than taken for absent.
	for wait := time.Now().Add(outageWorkerWait); !ok && err == nil && s.outages.recent() && time.Now().Before(wait); {
		select {
		case <-ctx.Done():
			fail(app.StoreUnavailableError)
			return
		case <-time.After(100 * time.Millisecond):
			ok, err = s.workerAvailable(ctx)
		}
	}
	if !ok {
		// While Redis is away no worker is known, and while it refuses
		// writes none can beat: say so, not that there is none.
		if err == nil {
			if err = s.st.CheckWritable(ctx); store.Refused(err) {
				s.outages.saw()
			}
		}
		fail(storeErrorText(err, "No worker available: start `agentgate worker`"))
		return
	}
	// A command that names an outside conversation another command made a
	// session of meanwhile is planned again, on that session (busy or not,
	// or another user's: then as for any id of another user's).
	var (
		plan    runPlan
		w       *watch
		existed bool
		res     store.AcceptResult
	)
	for attempt := 0; ; attempt++ {
		plan, err = s.planRun(ctx, c.user, provider, firstNonEmpty(msg.SessionID, opts.SessionID))
		if err != nil {
			fail(err.Error())
			return
		}
		// A session keeps the project it started in: the CLIs keep their
		// conversations per working directory, so another one could not resume.
		requested := firstNonEmpty(plan.session.ProjectPath, opts.ProjectPath, opts.Cwd)
		var projectPath string
		projectPath, err = userProjectDir(s.cfg.Workspaces, plan.session.Owner, requested)
		if err != nil {
			fail("Invalid project path: " + strings.TrimPrefix(err.Error(), app.ErrInvalidPath.Error()+": "))
			return
		}
		plan.session.ProjectPath = projectPath
		job := app.Job{
			SessionID: plan.session.ID, Owner: plan.session.Owner, Provider: provider,
			Command: msg.Command, ProjectPath: projectPath, ProviderSessionID: plan.resume,
			NewSession: plan.isNew, ResumeDenied: plan.resumeDenied, ResumeUnrecorded: plan.resumeUnrecorded,
			Options: app.RunOptions{
				Model: opts.Model, PermissionMode: opts.PermissionMode, Tools: opts.ToolsSettings,
				Images: opts.Images,
			},
		}

		w, existed, err = s.hub.attach(c, plan.session.ID)
		if err != nil {
			s.log.Warn("subscribe", "session", plan.session.ID, "err", err)
			fail(followError(err))
			return
		}
		res, err = s.st.Accept(ctx, &store.AcceptRequest{Session: plan.session, New: plan.isNew, Job: job, MaxRunning: s.cfg.MaxRunsPerUser, KeepSessions: s.cfg.MaxSessionsPerUser})
		if !errors.Is(err, store.ErrSessionExists) || attempt > 0 {
			break
		}
		s.hub.abandon(c, w, existed)
	}
	var busy *store.BusyError
	var limit *app.LimitError
	switch {
	case errors.As(err, &limit):
		fail(limit.Error())
		if plan.isNew {
			s.hub.abandon(c, w, existed)
		} else {
			s.followLive(ctx, w, plan.session.ID)
		}
		return
	case errors.As(err, &busy):
		now := time.Now().UnixMilli()
		c.reply(&app.SessionBusy{
			Type: "session-busy", Provider: provider, SessionID: plan.session.ID, RequestID: msg.RequestID,
			RequestType: msg.Type, ProjectPath: busy.ProjectPath, IsProcessing: true,
			Reason:     "session-already-active",
			Message:    busyText,
			ReportedAt: now, StartedAt: busy.StartedAt,
		})
		running, read := s.followLive(ctx, w, plan.session.ID)
		// Claude Code UI's frontend drops session-busy: on a paced socket
		// the prompt it marked sent would vanish without a word. Decided
		// by the read that placed the watch: a run that ends after it
		// reaches the socket with its own complete, and one ended before
		// it gets one here (a second read could find the run ended and
		// add a complete to the one the watch delivers).
		if !read {
			running = s.runningFor(c, plan.session.ID)
		}
		s.endRefused(c, provider, plan.session.ID, busyText, running)
		return
	case err != nil:
		s.hub.abandon(c, w, existed)
		s.log.Warn("accept run", "session", plan.session.ID, "err", err)
		// Most such errors mean no run (Redis refused or was away before
		// the script); one whose reply was lost has its events in the
		// session, which a reload shows, where a client left busy would
		// wait for a complete that never reaches this socket.
		fail(storeErrorText(err, "Could not start the run; try again"))
		return
	}
	runsAccepted.WithLabelValues(string(provider)).Inc()
	c.reply(&app.SessionAccepted{
		Type: "session-accepted", Provider: provider, SessionID: plan.session.ID, RequestID: msg.RequestID,
		RequestType: msg.Type, AcceptedAt: time.Now().UnixMilli(), StartedAt: res.StartedAt,
		IsNewSession: plan.isNew,
	})
	s.hub.release(w, res.PrevSeq+1, true)
}

// followLive places a watch after the session's current last event,
// waiting out an outage within ctx. When the session cannot be read, no
// position is guessed: seq 1 sent the whole history to a socket that
// asked for live events only. A watch the socket had keeps its place; a
// new one is dropped and the socket told, retryable, that it does not
// follow the session, so that it asks again (check-session-status).
func (s *Server) followLive(ctx context.Context, w *watch, sessionID string) (running, read bool) {
	var sess app.Session
	err := s.awaitStore(ctx, func() (err error) { sess, err = s.st.Session(ctx, sessionID); return err })
	if err == nil {
		s.hub.release(w, sess.LastSeq+1, true)
		return sess.Running(), true
	}
	s.log.Warn("follow session", "session", sessionID, "err", err)
	if s.hub.placed(w) {
		s.hub.release(w, math.MaxInt64, true)
		return false, false
	}
	s.hub.detach(w.c, sessionID)
	w.c.reply(&app.ErrorReply{Type: "error", Error: followError(err), SessionID: sessionID, Retryable: true})
	return false, false
}

// runPlan is which session a command runs on.
type runPlan struct {
	session      app.Session
	isNew        bool
	resume       string // provider session id to resume
	resumeDenied bool
	// resumeUnrecorded: the id is no conversation agentgate knows; the
	// worker decides (app.Job.ResumeUnrecorded).
	resumeUnrecorded bool
}

// planRun decides, for a command's session id, whether it runs on one of the
// caller's sessions, starts a new one, or resumes a conversation started
// outside the gateway (PROTOCOL §3.3). Another user's session id behaves
// like an unknown id whose conversation does not exist, on a session of a
// new id (a Claude or Gemini one of the id itself is taken).
func (s *Server) planRun(ctx context.Context, user app.User, provider app.Provider, sid string) (runPlan, error) {
	if sid == "" {
		id := app.NewID()
		return runPlan{session: app.Session{ID: id, Owner: user.Name, Provider: provider}, isNew: true}, nil
	}
	if !app.ValidSessionID(sid) {
		return runPlan{}, app.WireError("Invalid session ID")
	}
	sess, err := s.st.Session(ctx, sid)
	if err == nil && user.CanSee(sess.Owner) {
		return s.existing(sess, provider)
	}
	if err != nil && !errors.Is(err, app.ErrNotFound) {
		return runPlan{}, app.WireError("Could not read the session; try again")
	}
	foreign := err == nil
	if !foreign {
		if known, ok := s.byProviderID(ctx, provider, sid); ok {
			if user.CanSee(known.Owner) {
				return s.existing(known, provider)
			}
			foreign = true
		}
	}
	if !foreign && keepsConversationID(provider) {
		// A conversation started outside the gateway, of a CLI that keeps
		// its id on resume: the session takes that id, so that its events
		// name the conversation the client has open (Claude Code UI's
		// frontend files events under their sessionId, and waits for a
		// complete of the session it marked busy). Its runs resume the id
		// as unrecorded until a CLI prints it (existing).
		return runPlan{
			session: app.Session{ID: sid, Owner: user.Name, Provider: provider, Unrecorded: true},
			isNew:   true, resume: sid, resumeUnrecorded: true,
		}, nil
	}
	// The id goes to this first run only, with its flag; the new session
	// does not keep it. Kept, it would be resumed by the session's next run
	// with no flag (existing), and index the id as this user's.
	plan := runPlan{
		session: app.Session{ID: app.NewID(), Owner: user.Name, Provider: provider},
		isNew:   true, resume: sid, resumeDenied: foreign, resumeUnrecorded: !foreign,
	}
	return plan, nil
}

// byProviderID returns the session of agentgate's whose provider CLI
// named its conversation id (Codex and Cursor name theirs; a client that
// lists conversations by the CLIs' own ids names that one).
func (s *Server) byProviderID(ctx context.Context, provider app.Provider, id string) (app.Session, bool) {
	sid, err := s.st.SessionByProviderID(ctx, provider, id)
	if err != nil {
		return app.Session{}, false
	}
	sess, err := s.st.Session(ctx, sid)
	return sess, err == nil
}

// keepsConversationID reports whether provider's CLI keeps a conversation's
// id when it resumes it, and takes a new one's id from the gateway
// (--session-id): Claude and Gemini. Codex and Cursor name their
// conversations themselves.
func keepsConversationID(provider app.Provider) bool {
	return provider == app.Claude || provider == app.Gemini
}

func (s *Server) existing(sess app.Session, provider app.Provider) (runPlan, error) {
	if sess.Provider != provider {
		return runPlan{}, app.WireError(fmt.Sprintf("Session %s belongs to provider %s", sess.ID, sess.Provider))
	}
	resume := sess.ProviderSessionID
	// A session that took an outside conversation's id resumes it as
	// unrecorded until a CLI of the session printed an id: its first run
	// may have been refused (a shared account) or have died before the CLI
	// ran, and resumed without the flag, the id would reach a conversation
	// no CLI of this user's ran.
	unrecorded := resume == "" && sess.Unrecorded
	if resume == "" && (provider == app.Claude || unrecorded) {
		// Claude runs of a gateway session use the gateway's id.
		resume = sess.ID
	}
	// Accept checks the owner the caller read, so keep it as stored (an
	// admin acting on another user's session).
	return runPlan{session: app.Session{
		ID: sess.ID, Owner: sess.Owner, Provider: sess.Provider, ProviderSessionID: sess.ProviderSessionID,
		ProjectPath: sess.ProjectPath, Unrecorded: sess.Unrecorded,
	}, resume: resume, resumeUnrecorded: unrecorded}, nil
}

// projectDir resolves a project path of a chat or terminal under ws (empty
// means the first workspace) to an existing directory. Its errors wrap
// app.ErrInvalidPath.
func projectDir(ws app.Workspaces, p string) (string, error) {
	if p == "" {
		if len(ws.Roots) == 0 {
			return "", fmt.Errorf("%w: none given and no workspace", app.ErrInvalidPath)
		}
		p = ws.Roots[0]
	}
	return workspacefs.Dir(ws, p)
}

// userProjectDir is projectDir with the roots as they apply to user
// (app.Workspaces.For). A per-user root that does not exist yet passes when
// the path names exactly it: the worker makes a user's home the first time
// it runs something for them.
func userProjectDir(ws app.Workspaces, user, p string) (string, error) {
	mine := ws.For(user)
	dir, err := projectDir(mine, p)
	if err == nil || !ws.PerUser() {
		return dir, err
	}
	if p == "" && len(mine.Roots) > 0 {
		p = mine.Roots[0]
	}
	for _, root := range ws.Roots {
		if !strings.Contains(root, app.UserPlaceholder) {
			continue
		}
		own := app.Workspaces{Roots: []string{root}}.For(user)
		if len(own.Roots) == 1 && filepath.Clean(p) == own.Roots[0] {
			if _, statErr := os.Lstat(p); errors.Is(statErr, os.ErrNotExist) {
				return own.Roots[0], nil
			}
		}
	}
	return dir, err
}

// validateOptions checks the options that reach a command line: a value a
// CLI would take for a flag, or one that could smuggle an argument, is
// refused with a clear error (app.RunOptions.Check, which the worker runs
// again on the job it takes). A project path is bounded as /shell bounds
// it, before anything reads it.
func validateOptions(o *app.CommandOptions) error {
	if len(o.ProjectPath) > app.MaxShellPath || len(o.Cwd) > app.MaxShellPath {
		return app.WireError(fmt.Sprintf("Invalid project path: longer than %d bytes", app.MaxShellPath))
	}
	if o.SessionID != "" && !app.ValidSessionID(o.SessionID) {
		// Checked even when the message's own sessionId wins over it.
		return app.WireError("Invalid session ID")
	}
	return app.RunOptions{Model: o.Model, PermissionMode: o.PermissionMode, Tools: o.ToolsSettings, Images: o.Images}.Check()
}

// abort handles abort-session (PROTOCOL §3.4).
func (s *Server) abort(ctx context.Context, c *conn, msg *app.ClientMessage) {
	noRun := func() {
		c.reply(app.ErrorReply{Type: "error", Error: app.ErrTextNoActiveRun, SessionID: app.Clip(msg.SessionID, app.MaxSessionIDLen)})
		c.endAbortWithoutRun(abortProvider(msg), msg.SessionID)
	}
	if !app.ValidSessionID(msg.SessionID) {
		noRun()
		return
	}
	// Redis did not answer: the run may well go on, and a client told it
	// ended (noRun) would no longer let its user stop it.
	failed := func(err error) {
		s.log.Warn("abort", "session", msg.SessionID, "err", err)
		c.reply(&app.ErrorReply{Type: "error", Error: storeErrorText(err, "Could not abort the run; try again"), SessionID: msg.SessionID, Retryable: true})
	}
	sess, err := s.st.Session(ctx, msg.SessionID)
	alias := false
	if errors.Is(err, app.ErrNotFound) {
		// The conversation's id as its CLI named it: Stop in a view of
		// it stops the run of agentgate's session that resumes it.
		if known, ok := s.byProviderID(ctx, abortProvider(msg), msg.SessionID); ok {
			sess, err, alias = known, nil, true
		}
	}
	if err != nil && !errors.Is(err, app.ErrNotFound) {
		failed(err)
		return
	}
	if err != nil || !c.user.CanSee(sess.Owner) {
		noRun()
		return
	}
	res, err := s.st.AbortRun(ctx, store.RunRef{SessionID: sess.ID, RunID: sess.RunID, Provider: sess.Provider})
	if errors.Is(err, app.ErrNoActiveRun) {
		noRun()
		return
	}
	if err != nil {
		failed(err)
		return
	}
	if alias {
		// The view the client stopped is of the id it named, and waits
		// for that id's complete; the run's carries agentgate's.
		c.endAbortWithoutRun(abortProvider(msg), msg.SessionID)
	}
	if !c.watching(sess.ID) {
		// A socket that does not follow the session still sees its complete.
		if evs, err := s.st.Events(ctx, sess.ID, res.Seq-1, 1); err == nil && len(evs) == 1 {
			c.send(evs[0].Data)
		}
	}
}

// abortProvider is the provider an abort names, as the reference reads it:
// cursor-abort is Cursor's, abort-session's provider defaults to Claude.
func abortProvider(msg *app.ClientMessage) app.Provider {
	switch {
	case msg.Type == "cursor-abort":
		return app.Cursor
	case msg.Provider == "":
		return app.Claude
	}
	return app.Provider(app.Clip(msg.Provider, 32))
}

// statusProvider is the provider a check-session-status names, as the
// reference reads it: a known one (a chat provider, or OpenCode, whose
// sessions Claude Code UI's frontend also asks about), else none, which
// the reply gives as Claude.
func statusProvider(p string) app.Provider {
	for _, known := range append(app.Providers[:len(app.Providers):len(app.Providers)], app.OpenCode) {
		if app.Provider(p) == known {
			return known
		}
	}
	return ""
}

// checkStatus answers check-session-status and subscribe entries (PROTOCOL
// §3.5): session-status first, then the replay after lastSeq, then live.
// With runningOnly (a status check from Claude Code UI's frontend) a
// session that is not running is not followed, unless the socket follows
// it already: that frontend acts on every session event it gets, whatever
// session it shows (a complete clears its pending new chat and permission
// prompts and plays its done sound; a permission_request shows in the
// current view), and the reference rebinds only a running session's
// output to the socket that checks it.
func (s *Server) checkStatus(ctx context.Context, c *conn, sessionID string, provider app.Provider, lastSeq *int64, runningOnly bool) {
	if !app.ValidSessionID(sessionID) {
		c.reply(app.UnknownStatus(app.Clip(sessionID, app.MaxSessionIDLen), provider))
		return
	}
	if lastSeq != nil && *lastSeq < 0 {
		c.reply(&app.ErrorReply{Type: "error", Error: "Invalid lastSeq: must be 0 or more", SessionID: sessionID})
		return
	}
	// Only "no such session" is answered as unknown: while Redis is down or
	// loading the answer waits (within the request's time), then says so.
	unavailable := func(err error) {
		s.log.Warn("check session status", "session", sessionID, "err", err)
		c.reply(&app.ErrorReply{Type: "error", Error: app.StoreUnavailableError, SessionID: sessionID, Retryable: true})
	}
	// Peek first so that a session the caller may not see costs no subscription.
	var sess app.Session
	err := s.awaitStore(ctx, func() (err error) { sess, err = s.st.Session(ctx, sessionID); return err })
	if errors.Is(err, app.ErrNotFound) || (err == nil && !c.user.CanSee(sess.Owner)) {
		c.reply(app.UnknownStatus(sessionID, provider))
		return
	}
	if err != nil {
		unavailable(err)
		return
	}
	if runningOnly && !sess.Running() && lastSeq == nil && !c.watching(sessionID) {
		// A run started after this read goes to the socket that started
		// it, as in the reference; this one follows it once it checks the
		// session again.
		status := app.StatusOf(sess)
		c.reply(&status)
		if c.isLatestOnly() {
			// A run that ended between a history read and this check.
			if from, ok := s.missedFrom(ctx, c, sessionID, sess.LastSeq); ok {
				go s.sendMissed(c, sessionID, from, sess.LastSeq)
			}
		}
		return
	}
	w, existed, err := s.hub.attach(c, sessionID)
	if err != nil {
		s.log.Warn("subscribe", "session", sessionID, "err", err)
		c.reply(&app.ErrorReply{Type: "error", Error: followError(err), SessionID: sessionID, Retryable: true})
		return
	}
	var first int64
	err = s.awaitStore(ctx, func() (err error) { sess, first, err = s.st.SessionForReplay(ctx, sessionID); return err })
	if err != nil {
		s.hub.abandon(c, w, existed)
		if errors.Is(err, app.ErrNotFound) {
			c.reply(app.UnknownStatus(sessionID, provider))
		} else {
			unavailable(err)
		}
		return
	}
	status := app.StatusOf(sess)
	if sess.Running() {
		if perms, err := s.st.PendingPermissions(ctx, sessionID); err == nil && len(perms) > 0 {
			status.PendingPermissions = perms
		}
	}
	next := sess.LastSeq + 1
	if lastSeq != nil {
		recovered := true
		switch l := *lastSeq; {
		case l > sess.LastSeq:
			// A position this session never reached (another store's).
			recovered = false
		case l < sess.LastSeq:
			if first == 0 || first > l+1 {
				recovered = false
			} else {
				next = l + 1
			}
		}
		status.Recovered = &recovered
		resumes.WithLabelValues(strconv.FormatBool(recovered)).Inc()
	}
	c.reply(&status)
	if len(status.PendingPermissions) > 0 && c.isLatestOnly() {
		// Claude Code UI's frontend reads no pendingPermissions in a
		// status reply: it asks get-pending-permissions as its socket
		// opens, and checks the session after a REST round trip. A request
		// made between the two was in neither answer, and its prompt never
		// showed (a tool denied after the timeout, a question waiting
		// forever).
		c.reply(app.PendingPermissions{Type: "pending-permissions-response", SessionID: sessionID, Data: status.PendingPermissions})
	}
	if runningOnly && lastSeq == nil && !existed && c.isLatestOnly() {
		if from, ok := s.missedFrom(ctx, c, sessionID, sess.LastSeq); ok {
			// The watch starts once they are sent; it stays parked
			// meanwhile, through another check of the session too, which
			// would otherwise start it past them and then see it moved
			// back (events out of order, then twice).
			s.hub.deferRelease(w)
			go func() {
				s.sendMissed(c, sessionID, from, sess.LastSeq)
				if testHookMissedSent != nil {
					testHookMissedSent()
				}
				s.hub.placeDeferred(w, next)
			}()
			return
		}
	}
	// Without a lastSeq, a watch the socket had keeps its place: events
	// published and not yet sent to it are not skipped.
	s.hub.release(w, next, lastSeq == nil && existed)
}

// testHookMissedSent, when set by a test, is called after a check sent what
// a history read missed, before its watch starts.
var testHookMissedSent func()

// dropFinishedWatches stops c following the sessions other than keep whose
// runs it has seen to their end: those not running, whose stored events up
// to the last (the run's complete) were all sent to c. A session that runs,
// or whose complete c still has to get, stays followed, so that a socket
// gets the complete of every run it started or checked while it ran. It is
// for sockets of Claude Code UI's frontend, which check the sessions their
// user opens and never unsubscribe: without it every session a tab ever
// opened would go on sending it events. A session that cannot be read
// stays followed.
func (s *Server) dropFinishedWatches(ctx context.Context, c *conn, keep string) {
	c.mu.Lock()
	watches := make(map[string]*watch, len(c.watches))
	for id, w := range c.watches {
		if id != keep {
			watches[id] = w
		}
	}
	c.mu.Unlock()
	if len(watches) == 0 {
		return
	}
	ids := make([]string, 0, len(watches))
	for id := range watches {
		ids = append(ids, id)
	}
	sessions, err := s.st.SessionsByID(ctx, ids)
	if err != nil {
		s.log.Warn("read followed sessions", "err", err)
		return
	}
	for id, w := range watches {
		sess, ok := sessions[id]
		if ok && (sess.Running() || !w.sentUpTo(sess.LastSeq)) {
			continue
		}
		s.hub.detachWatch(c, id, w)
	}
}

// awaitStore runs read and, while it fails because Redis is down or loading,
// waits for Redis and runs it again, until ctx ends. It returns read's last
// error.
func (s *Server) awaitStore(ctx context.Context, read func() error) error {
	return awaitStore(ctx, s.st, read)
}

// awaitStore is Server.awaitStore on st.
func awaitStore(ctx context.Context, st *store.Store, read func() error) error {
	for counted := false; ; counted = true {
		err := read()
		if !store.Unavailable(err) || ctx.Err() != nil {
			return err
		}
		if !counted {
			storeWaits.Inc()
		}
		if st.WaitAvailable(ctx) != nil {
			return err
		}
	}
}

// pendingPermissions answers get-pending-permissions from Redis. A session
// the caller may not see has none; a read Redis did not answer is a
// retryable error, not an empty list (the page would drop the prompts it
// shows).
func (s *Server) pendingPermissions(ctx context.Context, c *conn, sessionID string) {
	out := app.PendingPermissions{Type: "pending-permissions-response", SessionID: app.Clip(sessionID, app.MaxSessionIDLen), Data: []json.RawMessage{}}
	failed := func(err error) {
		s.log.Warn("read pending permissions", "session", sessionID, "err", err)
		c.reply(&app.ErrorReply{Type: "error", Error: storeErrorText(err, "Could not read the pending permissions; try again"), SessionID: sessionID, Retryable: true})
	}
	if app.ValidSessionID(sessionID) {
		sess, err := s.st.Session(ctx, sessionID)
		if err != nil && !errors.Is(err, app.ErrNotFound) {
			failed(err)
			return
		}
		if err == nil && c.user.CanSee(sess.Owner) {
			perms, err := s.st.PendingPermissions(ctx, sessionID)
			if err != nil {
				failed(err)
				return
			}
			out.Data = perms
		}
	}
	c.reply(out)
}

// permissionResponse forwards a user's answer to the worker running the
// request's session, through its inbox: the answer may come from any socket
// of the owner on any gateway. Like the reference it sends no reply, and an
// unknown request (or another user's) is ignored; a malformed frame, and an
// answer Redis could not route (retryable), are answered with an error.
func (s *Server) permissionResponse(ctx context.Context, c *conn, msg *app.ClientMessage) {
	ans, err := app.AnswerOf(msg)
	if err != nil {
		c.reply(app.NewErrorReply(err.Error()))
		return
	}
	sessionID, err := s.st.PermissionSession(ctx, ans.RequestID)
	if err == nil {
		var sess app.Session
		sess, err = s.st.Session(ctx, sessionID)
		if err == nil && (!c.user.CanSee(sess.Owner) || !sess.Running() || sess.Worker == "") {
			return
		}
		if err == nil {
			s.forwardAnswer(ctx, c, sess, ans)
			return
		}
	}
	if !errors.Is(err, app.ErrNotFound) {
		// Redis did not answer: said, so that the page asks again rather
		// than drop a prompt whose answer went nowhere.
		s.log.Warn("find permission request", "err", err)
		c.reply(&app.ErrorReply{Type: "error", Error: storeErrorText(err, "Gateway could not deliver the answer; try again"), Retryable: true})
	}
}

// forwardAnswer sends a user's answer to the worker running sess.
func (s *Server) forwardAnswer(ctx context.Context, c *conn, sess app.Session, ans app.PermissionAnswer) {
	sessionID := sess.ID
	data, err := json.Marshal(ans)
	if err != nil {
		return
	}
	err = s.st.SendControl(ctx, sess.Worker, store.Control{
		Type: store.ControlPermission, SessionID: sessionID, RunID: sess.RunID, Data: data,
	})
	if err != nil {
		s.log.Warn("forward permission answer", "session", sessionID, "err", err)
		c.reply(&app.ErrorReply{Type: "error", Error: storeErrorText(err, "Gateway could not deliver the answer; try again"), SessionID: sessionID, Retryable: true})
	}
}

// activeSessions answers get-active-sessions with the caller's running
// sessions across every gateway and worker.
func (s *Server) activeSessions(ctx context.Context, c *conn) {
	out := app.ActiveSessions{Type: "active-sessions", Sessions: map[app.Provider][]string{}}
	for _, p := range app.Providers {
		out.Sessions[p] = []string{}
	}
	sessions, err := s.st.ListSessions(ctx, store.SessionFilter{Owner: c.user.Name, RunningOnly: true, Limit: 1000})
	if err != nil {
		// Empty lists would tell the page that nothing runs.
		s.log.Warn("list active sessions", "err", err)
		c.reply(&app.ErrorReply{Type: "error", Error: storeErrorText(err, "Could not list the active sessions; try again"), Retryable: true})
		return
	}
	for _, sess := range sessions {
		out.Sessions[sess.Provider] = append(out.Sessions[sess.Provider], sess.ID)
	}
	c.reply(out)
}

func firstNonEmpty(vals ...string) string {
	for _, v := range vals {
		if v != "" {
			return v
		}
	}
	return ""
}
