package handlers

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"github.com/labstack/echo/v4"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
)

// sessionJSON is a session as the REST API shows it.
type sessionJSON struct {
	ID                string    `json:"id"`
	Owner             string    `json:"owner"`
	Provider          string    `json:"provider"`
	ProjectPath       string    `json:"projectPath"`
	ProviderSessionID string    `json:"providerSessionId"`
	State             app.State `json:"state"`
	RunID             string    `json:"runId"`
	StartedAt         int64     `json:"startedAt"`
	StatusText        string    `json:"statusText"`
	CanInterrupt      bool      `json:"canInterrupt"`
	Worker            string    `json:"worker"`
	LastSeq           int64     `json:"lastSeq"`
	ExitCode          *int      `json:"exitCode"`
	CreatedAt         int64     `json:"createdAt"`
	UpdatedAt         int64     `json:"updatedAt"`
	IsProcessing      bool      `json:"isProcessing"`
}

func toJSON(s app.Session) sessionJSON {
	return sessionJSON{
		ID: s.ID, Owner: s.Owner, Provider: string(s.Provider), ProjectPath: s.ProjectPath,
		ProviderSessionID: s.ProviderSessionID, State: s.State, RunID: s.RunID, StartedAt: s.StartedAt,
		StatusText: s.StatusText, CanInterrupt: s.Running() && s.CanInterrupt, Worker: s.Worker,
		LastSeq: s.LastSeq, ExitCode: s.ExitCode, CreatedAt: s.CreatedAt, UpdatedAt: s.UpdatedAt,
		IsProcessing: s.Running(),
	}
}

const userKey = "agentgate.user"

// requireUser authenticates REST calls like socket upgrades.
func (s *Server) requireUser(next echo.HandlerFunc) echo.HandlerFunc {
	return func(c echo.Context) error {
		if m := c.Request().Method; m != http.MethodGet && m != http.MethodHead && !s.origins.allows(c.Request()) {
			// A form another site posts carries the user's cookies in
			// platform mode: a change is taken only from the gateway's
			// own pages or the allowed origins (none sent: not a browser).
			return echo.NewHTTPError(http.StatusForbidden, "cross-origin request refused")
		}
		user, err := s.cfg.Auth.Authenticate(c.Request())
		if err != nil {
			return authFailure(c, err)
		}
		if !s.quotas.admitRequest(user.Name) {
			c.Response().Header().Set("Retry-After", "1")
			return echo.NewHTTPError(http.StatusTooManyRequests, s.quotas.rateLimitText())
		}
		c.Set(userKey, user)
		return next(c)
	}
}

func userOf(c echo.Context) app.User { return c.Get(userKey).(app.User) }

// authUser answers GET /api/auth/user.
func (s *Server) authUser(c echo.Context) error {
	u := userOf(c)
	return c.JSON(http.StatusOK, map[string]any{"user": map[string]any{"username": u.Name, "admin": u.Admin}})
}

// listSessions answers GET /api/sessions[?state=running]: the caller's
// sessions, or every user's for an admin.
func (s *Server) listSessions(c echo.Context) error {
	u := userOf(c)
	state := c.QueryParam("state")
	if state != "" && state != string(app.StateRunning) {
		return echo.NewHTTPError(http.StatusBadRequest, "state must be running or absent")
	}
	running := state == string(app.StateRunning)
	limit, err := queryInt(c, "limit", 200, 1, 1000)
	if err != nil {
		return err
	}
	if err := s.startRead(c); err != nil {
		return err
	}
	defer s.quotas.endRead(u.Name)
	var sessions []app.Session
	if u.Admin {
		sessions, err = s.st.AllSessions(c.Request().Context(), running, limit)
	} else {
		sessions, err = s.st.ListSessions(c.Request().Context(), store.SessionFilter{Owner: u.Name, RunningOnly: running, Limit: limit})
	}
	if err != nil {
		return err
	}
	out := make([]sessionJSON, 0, len(sessions))
	for _, sess := range sessions {
		out = append(out, toJSON(sess))
	}
	return c.JSON(http.StatusOK, map[string]any{"sessions": out})
}

// visibleSession reads the session of the :id parameter, answering 404 for
// one the caller may not see, exactly as for one that does not exist.
func (s *Server) visibleSession(c echo.Context) (app.Session, error) {
	id := c.Param("id")
	if !app.ValidSessionID(id) {
		return app.Session{}, echo.NewHTTPError(http.StatusBadRequest, "invalid session id")
	}
	sess, err := s.st.Session(c.Request().Context(), id)
	if errors.Is(err, app.ErrNotFound) || (err == nil && !userOf(c).CanSee(sess.Owner)) {
		return app.Session{}, echo.NewHTTPError(http.StatusNotFound, "session not found")
	}
	return sess, err
}

// getSession answers GET /api/sessions/:id.
func (s *Server) getSession(c echo.Context) error {
	sess, err := s.visibleSession(c)
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, toJSON(sess))
}

// restEventsBytes bounds the event data of one events response (one event
// at least): a client reads on from the last seq it got.
const restEventsBytes = 4 << 20

// sessionEvents answers GET /api/sessions/:id/events?after=SEQ&limit=N: the
// stored events with seq > after (up to restEventsBytes of them), and
// whether the range was complete.
func (s *Server) sessionEvents(c echo.Context) error {
	sess, err := s.visibleSession(c)
	if err != nil {
		return err
	}
	after, err := queryInt(c, "after", 0, 0, 1<<62)
	if err != nil {
		return err
	}
	limit, err := queryInt(c, "limit", 100, 1, 1000)
	if err != nil {
		return err
	}
	if err := s.startRead(c); err != nil {
		return err
	}
	defer s.quotas.endRead(userOf(c).Name)
	evs, err := s.st.EventsWithin(c.Request().Context(), sess.ID, int64(after), limit, restEventsBytes)
	if err != nil {
		return err
	}
	out := make([]json.RawMessage, len(evs))
	for i, e := range evs {
		out[i] = e.Data
	}
	// Seqs only grow: a page that starts right after the caller's position
	// and ends as many seqs later skips none (a hole left by trimming, or
	// by a Redis that lost writes, is not recovered). A position past
	// lastSeq is one this session never reached (another store's): not up
	// to date, as check-session-status answers it.
	complete := int64(after) == sess.LastSeq ||
		(len(evs) > 0 && evs[0].Seq == int64(after)+1 && evs[len(evs)-1].Seq == int64(after+len(evs)))
	return c.JSON(http.StatusOK, map[string]any{
		"sessionId": sess.ID, "lastSeq": sess.LastSeq, "events": out, "recovered": complete,
	})
}

// startRead takes one of the caller's REST reads (event pages and session
// lists), which the caller gives back with s.quotas.endRead, or answers 429
// when maxReadsPerUser are under way.
func (s *Server) startRead(c echo.Context) error {
	if s.quotas.startRead(userOf(c).Name) {
		return nil
	}
	c.Response().Header().Set("Retry-After", "1")
	return echo.NewHTTPError(http.StatusTooManyRequests,
		fmt.Sprintf("too many reads under way for this user: at most %d event reads and session lists at once per gateway", maxReadsPerUser))
}

// abortSession answers POST /api/sessions/:id/abort.
func (s *Server) abortSession(c echo.Context) error {
	sess, err := s.visibleSession(c)
	if err != nil {
		return err
	}
	ctx := c.Request().Context()
	res, err := s.st.AbortRun(ctx, store.RunRef{SessionID: sess.ID, RunID: sess.RunID, Provider: sess.Provider})
	if errors.Is(err, app.ErrNoActiveRun) {
		return echo.NewHTTPError(http.StatusConflict, app.ErrTextNoActiveRun)
	}
	if err != nil {
		return err
	}
	return c.JSON(http.StatusOK, map[string]any{"sessionId": sess.ID, "runId": res.RunID, "aborted": true})
}

func queryInt(c echo.Context, name string, def, lo, hi int) (int, error) {
	raw := c.QueryParam(name)
	if raw == "" {
		return def, nil
	}
	n, err := strconv.Atoi(raw)
	if err != nil || n < lo || n > hi {
		return 0, echo.NewHTTPError(http.StatusBadRequest, name+" must be an integer from "+strconv.Itoa(lo)+" to "+strconv.Itoa(hi))
	}
	return n, nil
}

// broadcastRequest is the body of POST /api/broadcast.
type broadcastRequest struct {
	User  string          `json:"user"`
	Frame json.RawMessage `json:"frame"`
}

// publishBroadcast answers POST /api/broadcast (admins only): a service
// beside agentgate, such as Claude Code UI's own projects service, hands a
// projects_updated, loading_progress or taskmaster-… frame to every chat
// socket of one user on every gateway (app.CheckBroadcast says which).
func (s *Server) publishBroadcast(c echo.Context) error {
	if !userOf(c).Admin {
		return echo.NewHTTPError(http.StatusForbidden, "admin token required")
	}
	body, err := io.ReadAll(io.LimitReader(c.Request().Body, app.MaxBroadcastSize+4096))
	if err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, "could not read the body")
	}
	var req broadcastRequest
	if err := json.Unmarshal(body, &req); err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, "the body must be {\"user\": NAME, \"frame\": {...}}")
	}
	if err := app.CheckBroadcast(req.User, req.Frame); err != nil {
		return echo.NewHTTPError(http.StatusBadRequest, err.Error())
	}
	if err := s.st.Broadcast(c.Request().Context(), req.User, req.Frame); err != nil {
		return err
	}
	return c.NoContent(http.StatusAccepted)
}

// plainJSON is Echo's JSON serializer without HTML escaping: Echo's own
// writes each <, > and & of a response as six bytes, the stored events of
// GET …/events included (which the store keeps unescaped).
type plainJSON struct{ echo.DefaultJSONSerializer }

// Serialize writes i as JSON, indented when indent is not empty.
func (plainJSON) Serialize(c echo.Context, i any, indent string) error {
	enc := json.NewEncoder(c.Response())
	enc.SetEscapeHTML(false)
	if indent != "" {
		enc.SetIndent("", indent)
	}
	return enc.Encode(i)
}
