package deploy

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// nginxBin returns the nginx binary, or skips the test when there is none.
func nginxBin(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"nginx", "/usr/sbin/nginx"} {
		if bin, err := exec.LookPath(p); err == nil {
			return bin
		}
	}
	msg := "nginx is not installed (apt-get install nginx)"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip("SKIPPED: " + msg)
	return ""
}

// freePort returns a loopback port free when asked.
func freePort(t *testing.T) int {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port
}

// startNginx runs compose's nginx.conf in a nginx of its own on 127.0.0.1
// (the container's paths moved into a temporary folder, `gateway` replaced
// by upstream), after `nginx -t` accepted it, and returns its address. It
// is stopped, by its PID, when the test ends.
func startNginx(t *testing.T, upstream string) string {
	t.Helper()
	bin := nginxBin(t)
	src, err := os.ReadFile(filepath.Join("compose", "nginx.conf"))
	require.NoError(t, err)
	dir := t.TempDir()
	port := freePort(t)
	upHost, upPort, err := net.SplitHostPort(upstream)
	require.NoError(t, err)
	conf := string(src)
	for _, r := range [][2]string{
		{"listen 8080;", fmt.Sprintf("listen 127.0.0.1:%d;", port)},
		{"/var/log/nginx/", dir + "/"},
		{"set $gateways gateway;", "set $gateways " + upHost + ";"},
		{"http://$gateways:8080", "http://$gateways:" + upPort},
	} {
		require.Contains(t, conf, r[0], "nginx.conf changed: adjust the test")
		conf = strings.ReplaceAll(conf, r[0], r[1])
	}
	require.NoError(t, os.WriteFile(filepath.Join(dir, "default.conf"), []byte(conf), 0o644))
	// One process (no master and workers), so that stopping its PID stops
	// it all; its temporary files in dir.
	main := fmt.Sprintf(`daemon off;
master_process off;
pid %[1]s/nginx.pid;
error_log %[1]s/main-error.log;
events {}
http {
    client_body_temp_path %[1]s/body;
    proxy_temp_path %[1]s/proxy;
    fastcgi_temp_path %[1]s/fastcgi;
    uwsgi_temp_path %[1]s/uwsgi;
    scgi_temp_path %[1]s/scgi;
    include %[1]s/default.conf;
}
`, dir)
	mainPath := filepath.Join(dir, "nginx.conf")
	require.NoError(t, os.WriteFile(mainPath, []byte(main), 0o644))
	out, err := exec.Command(bin, "-t", "-p", dir, "-c", mainPath).CombinedOutput()
	require.NoError(t, err, "nginx -t: %s", out)

	cmd := exec.Command(bin, "-p", dir, "-c", mainPath)
	var stderr strings.Builder
	cmd.Stderr = &stderr
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		_ = cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(5 * time.Second):
			_ = cmd.Process.Kill()
			<-exited
		}
	})
	addr := fmt.Sprintf("127.0.0.1:%d", port)
	require.Eventually(t, func() bool {
		select {
		case <-exited:
			t.Fatalf("nginx exited: %s", stderr.String())
		default:
		}
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	}, 10*time.Second, 20*time.Millisecond, "nginx did not listen")
	return addr
}

// TestNginxForwardsTheBrowsersScheme: compose's nginx passes the
// X-Forwarded-Proto of a TLS-terminating proxy in front of it on to the
// gateways (whose origin check expects https:// origins then), and its own
// scheme without one; it never passes a client's X-Forwarded-User (platform
// auth trusts that header from nginx). Before, it always sent its own
// scheme, "http", and the gateways refused every WebSocket upgrade made
// through such a proxy with 403.
func TestNginxForwardsTheBrowsersScheme(t *testing.T) {
	gateway := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = json.NewEncoder(w).Encode(map[string]string{
			"proto": r.Header.Get("X-Forwarded-Proto"),
			"user":  r.Header.Get("X-Forwarded-User"),
			"host":  r.Host,
		})
	}))
	defer gateway.Close()
	addr := startNginx(t, strings.TrimPrefix(gateway.URL, "http://"))

	get := func(header map[string]string) map[string]string {
		t.Helper()
		req, err := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
		require.NoError(t, err)
		req.Host = "agentgate.example.com"
		for k, v := range header {
			req.Header.Set(k, v)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode)
		var got map[string]string
		require.NoError(t, json.NewDecoder(resp.Body).Decode(&got))
		return got
	}
	got := get(nil)
	require.Equal(t, "http", got["proto"], "no proxy in front: nginx's own scheme")
	require.Equal(t, "agentgate.example.com", got["host"])
	got = get(map[string]string{"X-Forwarded-Proto": "https"})
	require.Equal(t, "https", got["proto"], "TLS terminated in front of nginx")
	got = get(map[string]string{"X-Forwarded-User": "admin"})
	require.Empty(t, got["user"], "a client's X-Forwarded-User reached the gateway")

	resp, err := http.Get("http://" + addr + "/metrics")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode, "/metrics through nginx")
}
