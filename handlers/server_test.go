package handlers

import (
	"bytes"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/labstack/echo/v4"
	"github.com/stretchr/testify/require"
)

// TestRecoverPanics: a handler's panic is answered with a 500 and logged
// with its stack; the server goes on.
func TestRecoverPanics(t *testing.T) {
	var logged bytes.Buffer
	s := &Server{log: slog.New(slog.NewTextHandler(&logged, nil))}
	e := echo.New()
	e.Use(s.recoverPanics)
	e.GET("/boom", func(echo.Context) error { panic("boom") })
	e.GET("/fine", func(c echo.Context) error { return c.String(http.StatusOK, "fine") })

	rec := httptest.NewRecorder()
	e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/boom", nil))
	require.Equal(t, http.StatusInternalServerError, rec.Code)
	require.Contains(t, logged.String(), "request handler panicked")
	require.Contains(t, logged.String(), "panic=boom")
	require.Contains(t, logged.String(), "server_test.go", "the stack")

	rec = httptest.NewRecorder()
	e.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/fine", nil))
	require.Equal(t, http.StatusOK, rec.Code)
}
