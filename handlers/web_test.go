package handlers

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store/storetest"
)

func webGet(t *testing.T, url string) (*http.Response, string) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	return resp, string(body)
}

// TestWebClient: the page, the client library and every file the page
// loads are served from the binary, scripts as JavaScript (module scripts
// need it), each with a CSP that allows only the gateway's own scripts.
// The Node tests and the vendored license files are not served.
func TestWebClient(t *testing.T) {
	g := startGateway(t, newStore(t, storetest.Mini))
	resp, page := webGet(t, g.ts.URL+"/")
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/html; charset=utf-8", resp.Header.Get("Content-Type"))
	csp := resp.Header.Get("Content-Security-Policy")
	require.Contains(t, csp, "script-src 'self'")
	require.NotContains(t, csp, "script-src 'unsafe-inline'")
	require.Contains(t, csp, "connect-src 'self' ws: wss:")
	require.NotContains(t, page, "<script>", "no inline script: the CSP would block it")
	require.Equal(t, "no-referrer", resp.Header.Get("Referrer-Policy"), "the token of /?token= stays out of Referers")
	require.Equal(t, "no-store", resp.Header.Get("Cache-Control"), "nor is it kept in a cache under that address")
	require.Contains(t, page, `<meta name="agentgate-max-message-size" content="1048576">`, "the page knows the frame limit")
	g2 := startGateway(t, newStore(t, storetest.Mini), func(c *Config) { c.MaxMessageSize = 4096 })
	_, page2 := webGet(t, g2.ts.URL+"/")
	require.Contains(t, page2, `<meta name="agentgate-max-message-size" content="4096">`, "the configured frame limit")

	// Everything the page links to, and what its modules import.
	files := []string{"/agentgate.js", "/ui/app.js", "/ui/terminal.js", "/ui/app.css",
		"/ui/vendor/xterm/xterm.mjs", "/ui/vendor/xterm/addon-fit.mjs", "/ui/vendor/xterm/xterm.css"}
	for _, m := range regexp.MustCompile(`(?:src|href)="(/[^"]+)"`).FindAllStringSubmatch(page, -1) {
		require.Contains(t, files, m[1], "the page loads %s: add it to this test", m[1])
	}
	for _, f := range files {
		resp, body := webGet(t, g.ts.URL+f)
		require.Equal(t, http.StatusOK, resp.StatusCode, f)
		require.NotEmpty(t, body, f)
		require.NotEmpty(t, resp.Header.Get("Content-Security-Policy"), f)
		switch {
		case regexp.MustCompile(`\.m?js$`).MatchString(f):
			require.Equal(t, "text/javascript; charset=utf-8", resp.Header.Get("Content-Type"), f)
		default:
			require.Equal(t, "text/css; charset=utf-8", resp.Header.Get("Content-Type"), f)
		}
	}
	_, lib := webGet(t, g.ts.URL+"/agentgate.js")
	for _, s := range []string{"export class AgentGate", "PENDING_SESSION_ID", "check-session-status", "lastSeq"} {
		require.Contains(t, lib, s)
	}
	for _, f := range []string{"/ui/test/agentgate.test.mjs", "/ui/vendor/xterm/LICENSE", "/ui/index.html", "/ui/../web.go", "/ui/nope.js"} {
		resp, _ := webGet(t, g.ts.URL+f)
		require.Equal(t, http.StatusNotFound, resp.StatusCode, f)
	}
}

// TestWebClientLibrary runs the client library's Node unit tests (state
// transitions with a fake socket). Node is needed; in CI its absence fails.
func TestWebClientLibrary(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("node is not installed: the web client's unit tests need Node.js 20 or newer")
		}
		t.Skip("SKIPPED: node is not installed; the web client's unit tests did not run")
	}
	cmd := exec.Command(node, "--test", "web/test/agentgate.test.mjs")
	out, err := cmd.CombinedOutput()
	t.Logf("node --test:\n%s", out)
	require.NoError(t, err, "node --test web/test failed")
}

// TestWebClientVendored: the xterm.js files embedded in the binary are the
// versions pinned in package.json (scripts/vendor-xterm.sh copies them).
func TestWebClientVendored(t *testing.T) {
	var pkg struct {
		DevDependencies map[string]string `json:"devDependencies"`
	}
	b, err := os.ReadFile("../package.json")
	require.NoError(t, err)
	require.NoError(t, json.Unmarshal(b, &pkg))
	vendored, err := os.ReadFile("web/vendor/xterm/VERSIONS")
	require.NoError(t, err)
	for _, name := range []string{"@xterm/xterm", "@xterm/addon-fit"} {
		pin := pkg.DevDependencies[name]
		require.NotEmpty(t, pin, "%s is pinned in package.json", name)
		require.Contains(t, string(vendored), name+" "+pin+"\n", "run scripts/vendor-xterm.sh after changing the pin of %s", name)
	}
}
