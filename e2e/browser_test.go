package e2e

import (
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/internal/mockanthropic"
)

// browserTests are the Node test files of the bundled page, in the order
// they run; the failover test kills a gateway, so it comes last.
var browserTests = []string{
	"e2e/browser/chat.test.mjs",
	"e2e/browser/races.test.mjs",
	"e2e/browser/permissions.test.mjs",
	"e2e/browser/terminal.test.mjs",
	"e2e/browser/account.test.mjs",
	"e2e/browser/resilience.test.mjs",
	"e2e/browser/failover.test.mjs",
}

// TestBrowser drives the bundled page in a real Chromium (Debian's package,
// launched headless by playwright-core from ./node_modules; no browser is
// downloaded) against gateway and worker processes on redis-server, with
// the real Claude CLI and the mock model API. The page is reached through a
// small TCP balancer in front of two gateways, so a test can kill the one
// in use. The Node tests script the mock's turns and kill gateways through
// a control endpoint of this test. Screenshots go to t.ArtifactDir()
// (kept with go test -artifacts).
func TestBrowser(t *testing.T) {
	node, chromium := requireBrowser(t)
	cl := newCluster(t, "")
	a, b := cl.startGateway("gwA"), cl.startGateway("gwB")
	cl.startWorker("worker1")
	lb := startBalancer(t, a.addr, b.addr)
	ctl := startControl(t, cl, map[string]*proc{"gwA": a, "gwB": b})
	out := t.ArtifactDir()

	files := browserTests
	if only := os.Getenv("AGENTGATE_BROWSER_TESTS"); only != "" {
		files = strings.Split(only, ",") // a developer's subset: e2e/browser/chat.test.mjs,…
	}
	args := append([]string{"--test", "--test-concurrency=1", "--test-reporter=spec"}, files...)
	cmd := exec.Command(node, args...)
	cmd.Dir = moduleRoot
	cmd.Env = append(os.Environ(),
		"AG_URL=http://"+lb,
		"AG_URL_B=http://"+b.addr,
		"AG_TOKEN="+cl.token("alice"),
		"AG_TOKEN_B="+cl.token("bob"),
		"AG_PROJECT="+cl.project,
		"AG_CONTROL=http://"+ctl,
		"AG_OUT="+out,
		"AG_CHROMIUM="+chromium,
	)
	cmd.Stdout = &lineWriter{fn: func(l string) { t.Logf("[node] %s", l) }}
	cmd.Stderr = &lineWriter{fn: func(l string) { t.Logf("[node stderr] %s", l) }}
	// Its own process group, so that Chromium goes with node on a timeout.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	require.NoError(t, cmd.Start())
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		require.NoError(t, err, "the browser tests failed (screenshots in %s)", out)
	case <-time.After(12 * time.Minute):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-done
		t.Fatalf("the browser tests did not finish within 12 minutes (screenshots in %s)", out)
	}
	t.Logf("screenshots: %s", out)
}

// requireBrowser returns node and Chromium, or skips loudly (fails in CI)
// when one of them or playwright-core is missing.
func requireBrowser(t *testing.T) (node, chromium string) {
	t.Helper()
	missing := func(what string) {
		msg := what + " (scripts/test-deps.sh installs it)"
		if os.Getenv("CI") != "" {
			t.Fatal(msg)
		}
		t.Skip("SKIPPED: " + msg)
	}
	node, err := exec.LookPath("node")
	if err != nil {
		missing("node is not installed")
	}
	chromium = os.Getenv("AGENTGATE_CHROMIUM")
	if chromium != "" {
		if _, err := os.Stat(chromium); err != nil {
			missing("AGENTGATE_CHROMIUM names no file: " + chromium)
		}
	} else {
		for _, name := range []string{"chromium", "chromium-browser"} {
			if p, err := exec.LookPath(name); err == nil {
				chromium = p
				break
			}
		}
	}
	if chromium == "" {
		missing("Chromium is not installed (Debian: apt-get install chromium)")
	}
	if _, err := os.Stat(filepath.Join(moduleRoot, "node_modules", "playwright-core", "package.json")); err != nil {
		missing("playwright-core is not in ./node_modules")
	}
	return node, chromium
}

// startBalancer listens on 127.0.0.1 and hands each connection to the first
// backend that accepts it, like a load balancer whose health check found
// the first gateway gone.
func startBalancer(t *testing.T, backends ...string) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	var wg sync.WaitGroup
	t.Cleanup(func() {
		ln.Close()
		wg.Wait()
	})
	var mu sync.Mutex
	conns := map[net.Conn]struct{}{}
	track := func(c net.Conn, add bool) {
		mu.Lock()
		defer mu.Unlock()
		if add {
			conns[c] = struct{}{}
		} else {
			delete(conns, c)
		}
	}
	t.Cleanup(func() {
		mu.Lock()
		defer mu.Unlock()
		for c := range conns {
			c.Close()
		}
	})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			in, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer in.Close()
				var up net.Conn
				for _, addr := range backends {
					if up, err = net.DialTimeout("tcp", addr, time.Second); err == nil {
						break
					}
				}
				if up == nil {
					return
				}
				defer up.Close()
				track(in, true)
				track(up, true)
				defer track(in, false)
				defer track(up, false)
				// When either side ends, both are closed: a dead gateway
				// drops the browser's connection as it would without us.
				copyDone := make(chan struct{}, 2)
				go func() { _, _ = io.Copy(up, in); copyDone <- struct{}{} }()
				go func() { _, _ = io.Copy(in, up); copyDone <- struct{}{} }()
				<-copyDone
				in.Close()
				up.Close()
				<-copyDone
			}()
		}
	}()
	return ln.Addr().String()
}

// startControl serves what the Node tests ask of the cluster on 127.0.0.1:
// POST /turns adds turns (JSON, mockanthropic.Turn) to the mock's script,
// POST /kill?name=gwA kills that gateway with SIGKILL.
func startControl(t *testing.T, cl *cluster, procs map[string]*proc) string {
	t.Helper()
	mux := http.NewServeMux()
	mux.HandleFunc("POST /turns", func(w http.ResponseWriter, r *http.Request) {
		var turns []mockanthropic.Turn
		if err := json.NewDecoder(r.Body).Decode(&turns); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		cl.mock.Add(turns...)
		w.WriteHeader(http.StatusNoContent)
	})
	mux.HandleFunc("POST /kill", func(w http.ResponseWriter, r *http.Request) {
		p := procs[r.URL.Query().Get("name")]
		if p == nil {
			http.Error(w, "no such process", http.StatusNotFound)
			return
		}
		p.kill9()
		w.WriteHeader(http.StatusNoContent)
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			t.Logf("control server: %v", err)
		}
	}()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}
