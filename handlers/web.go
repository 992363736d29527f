package handlers

import (
	_ "embed"
	"net/http"

	"github.com/labstack/echo/v4"
)

//go:embed web/index.html
var webClientHTML []byte

// webClient serves the bundled web client: a small page that speaks the
// /ws protocol, for trying a gateway without building a client.
func (s *Server) webClient(c echo.Context) error {
	c.Response().Header().Set("Content-Security-Policy", "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self' ws: wss:")
	return c.Blob(http.StatusOK, "text/html; charset=utf-8", webClientHTML)
}
