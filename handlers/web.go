package handlers

import (
	"bytes"
	"embed"
	"io/fs"
	"net/http"
	"path"
	"strconv"
	"strings"

	"github.com/labstack/echo/v4"
)

// webFiles is the bundled web client: the page, its scripts and styles, the
// client library (served at /agentgate.js) and the vendored xterm.js. The
// Node tests under web/test are not served.
//
//go:embed web/index.html web/*.js web/*.css web/vendor
var webFiles embed.FS

// webCSP lets the page load only its own scripts and reach only its own
// gateway; inline styles are allowed for xterm.js, which sets them.
const webCSP = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; connect-src 'self' ws: wss:; frame-ancestors 'none'"

// webTypes are the content types of the embedded files, by extension:
// module scripts must be served as JavaScript whatever the OS's MIME table.
var webTypes = map[string]string{
	".html": "text/html; charset=utf-8",
	".js":   "text/javascript; charset=utf-8",
	".mjs":  "text/javascript; charset=utf-8",
	".css":  "text/css; charset=utf-8",
}

// webRoutes serves the bundled web client: the page at /, the client
// library at /agentgate.js (for any page that wants to speak /ws), and the
// page's files under /ui/.
func (s *Server) webRoutes(e *echo.Echo) {
	e.GET("/", func(c echo.Context) error { return serveWebPage(c, s.cfg.MaxMessageSize) })
	e.GET("/agentgate.js", func(c echo.Context) error { return serveWebFile(c, "agentgate.js") })
	e.GET("/ui/*", func(c echo.Context) error {
		name := path.Clean(c.Param("*"))
		if name == "index.html" || strings.HasPrefix(name, "..") || strings.HasPrefix(name, "/") {
			return echo.ErrNotFound
		}
		return serveWebFile(c, name)
	})
}

// webMaxMessageMeta is the page's meta element that tells its scripts the
// gateway's largest client frame (--max-message-size), with the default
// value the file holds: a prompt or paste larger would close the socket
// with 1009, so the page refuses or splits it first.
const webMaxMessageMeta = `<meta name="agentgate-max-message-size" content="1048576">`

// serveWebPage serves index.html with this gateway's frame limit.
func serveWebPage(c echo.Context, maxMessageSize int64) error {
	b, err := fs.ReadFile(webFiles, "web/index.html")
	if err != nil {
		return echo.ErrNotFound
	}
	if maxMessageSize > 0 {
		b = bytes.Replace(b, []byte(webMaxMessageMeta),
			[]byte(`<meta name="agentgate-max-message-size" content="`+strconv.FormatInt(maxMessageSize, 10)+`">`), 1)
	}
	return writeWebFile(c, "index.html", b)
}

func serveWebFile(c echo.Context, name string) error {
	if _, ok := webTypes[path.Ext(name)]; !ok {
		return echo.ErrNotFound // LICENSE and VERSIONS are for the repository
	}
	b, err := fs.ReadFile(webFiles, "web/"+name)
	if err != nil {
		return echo.ErrNotFound
	}
	return writeWebFile(c, name, b)
}

func writeWebFile(c echo.Context, name string, b []byte) error {
	ctype := webTypes[path.Ext(name)]
	h := c.Response().Header()
	h.Set("Content-Security-Policy", webCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	// The page is first opened at /?token=JWT: without this, its scripts'
	// and styles' requests would carry that address (and the token) in
	// their Referer, into a proxy's logs.
	h.Set("Referrer-Policy", "no-referrer")
	// The files change with the binary: revalidate rather than cache blindly.
	// The page itself is not stored at all: it is opened at /?token=JWT,
	// and a cached copy would keep the token on disk under that address.
	if name == "index.html" {
		h.Set("Cache-Control", "no-store")
	} else {
		h.Set("Cache-Control", "no-cache")
	}
	return c.Blob(http.StatusOK, ctype, b)
}
