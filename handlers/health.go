package handlers

import (
	"context"
	"net/http"
	"time"

	"github.com/labstack/echo/v4"

	"github.com/agentgate/agentgate/store"
)

// healthz answers while the process is up.
func (s *Server) healthz(c echo.Context) error {
	return c.JSON(http.StatusOK, map[string]string{"status": "ok"})
}

// readyz answers 200 when the gateway hears what is published (Listening),
// Redis is reachable, the key schema is current and the gateway is not
// draining; a load balancer stops routing otherwise.
func (s *Server) readyz(c echo.Context) error {
	if s.draining.Load() {
		return c.JSON(http.StatusServiceUnavailable, map[string]string{"status": "draining"})
	}
	select {
	case <-s.Listening():
	default:
		return c.JSON(http.StatusServiceUnavailable, map[string]string{"status": "subscribing"})
	}
	ctx, cancel := context.WithTimeout(c.Request().Context(), 2*time.Second)
	defer cancel()
	if err := s.st.Ping(ctx); err != nil {
		return c.JSON(http.StatusServiceUnavailable, map[string]string{"status": "redis unreachable"})
	}
	v, err := s.st.SchemaVersion(ctx)
	if err == nil && v < s.cfg.SchemaVersion && s.cfg.Migrate != nil {
		// The schema key is gone (or behind) while Redis answers: Redis
		// restarted empty. Nothing else would migrate again, and this
		// gateway would stay out of the load balancer for good.
		select {
		case <-s.remigrate(v):
			v, err = s.st.SchemaVersion(ctx)
		case <-ctx.Done():
		}
	}
	if err != nil || v < s.cfg.SchemaVersion {
		return c.JSON(http.StatusServiceUnavailable, map[string]string{"status": "key schema not current"})
	}
	return c.JSON(http.StatusOK, map[string]string{"status": "ready"})
}

// remigrateTimeout bounds a migration /readyz starts: as long as one at
// start may take (cmd/agentgate), waiting for another gateway's lease.
const remigrateTimeout = 30 * time.Second

// remigrate applies the migrations again (Config.Migrate) unless this
// gateway already is, and returns a channel closed once that is done. One
// at a time per gateway, on a context of its own: probes that come while
// it runs, or give up on it, wait for the same one rather than start more.
// Across gateways the migrations' lease lets one migrate while the others
// wait for it and then find nothing left to do.
func (s *Server) remigrate(found int) <-chan struct{} {
	s.remigrateMu.Lock()
	defer s.remigrateMu.Unlock()
	if s.remigration != nil {
		return s.remigration
	}
	done := make(chan struct{})
	s.remigration = done
	go func() {
		defer func() {
			s.remigrateMu.Lock()
			s.remigration = nil
			s.remigrateMu.Unlock()
			close(done)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), remigrateTimeout)
		defer cancel()
		// A probe that read the old version just before this gateway's
		// last migration ended starts no second one.
		if v, err := s.st.SchemaVersion(ctx); err == nil && v >= s.cfg.SchemaVersion {
			return
		}
		s.log.Warn("key schema behind (did Redis restart empty?): applying the migrations again",
			"found", found, "want", s.cfg.SchemaVersion)
		v, err := s.cfg.Migrate(ctx)
		if err != nil {
			schemaRemigrations.WithLabelValues("failed").Inc()
			s.log.Error("key schema: applying the migrations again", "err", err)
			return
		}
		schemaRemigrations.WithLabelValues("ok").Inc()
		s.log.Info("key schema current again", "version", v)
	}()
	return done
}

// httpError answers every error as {"error": "..."}.
func (s *Server) httpError(err error, c echo.Context) {
	if c.Response().Committed {
		return
	}
	code, msg := http.StatusInternalServerError, "internal error"
	if text := storeErrorText(err, ""); text != "" {
		// Retryable, and said so: the same answer as on the sockets
		// (Redis down, full, or unable to save).
		if store.Unavailable(err) {
			storeWaits.Inc()
		}
		c.Response().Header().Set("Retry-After", "1")
		_ = c.JSON(http.StatusServiceUnavailable, map[string]string{"error": text})
		return
	}
	if he, ok := err.(*echo.HTTPError); ok {
		code = he.Code
		if m, ok := he.Message.(string); ok {
			msg = m
		} else {
			msg = http.StatusText(code)
		}
	}
	switch code {
	case http.StatusInternalServerError:
		s.log.Error("http", "path", c.Path(), "err", err)
	case http.StatusTooManyRequests:
		// As for a 401 (authFailure): a client refused again and again
		// must not keep one of the --max-connections places while it
		// waits for its next try.
		c.Response().Header().Set("Connection", "close")
	}
	_ = c.JSON(code, map[string]string{"error": msg})
}

// Listening is closed once Run has subscribed to what gateways publish to
// each other (broadcasts to a user's sockets): before it, /readyz answers
// 503 and `serve` prints no URL.
func (s *Server) Listening() <-chan struct{} { return s.hub.sub.Listening() }
