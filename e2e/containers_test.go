//go:build containers

package e2e

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/internal/mockanthropic"
)

// The compose stack of the container test: its project name, and the network
// the test makes for it (a fixed subnet, so that the Anthropic mock can be
// reached at the network's gateway address).
const (
	ctProject = "agentgate-ct"
	ctNetwork = ctProject + "_default"
	ctSubnet  = "10.89.77.0/24"
	ctHostIP  = "10.89.77.1"
)

// ctGateways are the gateway service's replicas, as podman-compose names
// their containers after the project.
var ctGateways = []string{"gateway_1", "gateway_2"}

// TestContainers runs deploy/compose (images built by `make container-test`)
// with the real Claude CLI in the worker containers against the mock model
// API: a run through nginx, a gateway container killed mid-run (the client
// resumes through nginx, no gap), Redis restarted (the client resumes), a
// terminal, then everything torn down.
func TestContainers(t *testing.T) {
	for _, bin := range []string{"podman", "podman-compose"} {
		if _, err := exec.LookPath(bin); err != nil {
			t.Fatalf("%s is not installed (make container-test installs it)", bin)
		}
	}
	mock := mockanthropic.New(t, append(longRun("ct", 4, 300*time.Millisecond), longRun("drain", 6, 300*time.Millisecond)...)...)
	// The network's bridge, and so its gateway address, exists once a
	// container is attached: the relay to the mock listens from then on, on
	// a port chosen now.
	relay := ctHostIP + ":" + strings.TrimPrefix(freeAddr(t), "127.0.0.1:")
	dir := composeDir(t, relay)
	port := strings.TrimPrefix(freeAddr(t), "127.0.0.1:")
	run := func(args ...string) (string, error) {
		cmd := exec.Command("podman-compose", append([]string{"-p", ctProject, "-f", filepath.Join(dir, "compose.yaml")}, args...)...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "AGENTGATE_PORT=127.0.0.1:"+port, "AGENTGATE_PUBLIC_HOSTS=127.0.0.1")
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	compose := func(args ...string) string {
		t.Helper()
		out, err := run(args...)
		require.NoError(t, err, "podman-compose %v: %s", args, out)
		return out
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, c := range []string{"gateway_1", "gateway_2", "worker_1", "worker_2", "nginx_1", "redis_1"} {
				out, _ := exec.Command("podman", "logs", "--tail", "40", ctProject+"_"+c).CombinedOutput()
				t.Logf("--- %s\n%s", c, out)
			}
		}
		// Each step whatever the one before did: a failed down must not
		// leave the network and its DNS server behind.
		if out, err := run("down", "-v"); err != nil {
			t.Logf("podman-compose down -v: %v: %s", err, out)
		}
		_ = exec.Command("podman", "network", "rm", ctNetwork).Run()
		waitNoAardvark(t)
	})
	start := time.Now()
	compose("up", "-d")
	relayTo(t, relay, strings.TrimPrefix(mock.URL, "http://"))
	base := "127.0.0.1:" + port
	waitHTTP(t, "http://"+base+"/readyz", 3*time.Minute)
	t.Logf("up to ready through nginx: %s", time.Since(start).Round(100*time.Millisecond))

	b, err := os.ReadFile(filepath.Join(dir, "gateway.env"))
	require.NoError(t, err)
	secret := envValue(strings.Split(string(b), "\n"), "AGENTGATE_JWT_SECRET")
	require.NotEmpty(t, secret)
	token := issueToken(t, "alice", secret)
	dialLB := func(name string) *wsClient {
		return dialWS(t, name, "ws://"+base+"/ws?token="+token)
	}
	// reconnectLB opens a socket after one was lost as Claude Code UI's
	// client does, trying again 3 s after a failure: for a moment after a
	// gateway dies, the network's name server may still give nginx its
	// address alone, and nginx answers 502.
	reconnectLB := func(name string) *wsClient {
		for attempt := 1; ; attempt++ {
			ws, resp, err := dialer.Dial("ws://"+base+"/ws?token="+token, nil)
			if err == nil {
				return adoptWS(t, name, ws)
			}
			status := 0
			if resp != nil {
				status = resp.StatusCode
				resp.Body.Close()
			}
			require.Less(t, attempt, 10, "reconnect %s: %v (HTTP %d)", name, err, status)
			t.Logf("reconnect %s, attempt %d: %v (HTTP %d); again in 3 s", name, attempt, err, status)
			time.Sleep(3 * time.Second)
		}
	}

	// Every gateway answers, and sees the workers, before the run: the
	// network's name server may lag behind a stack that was just brought up.
	for _, gw := range ctGateways {
		waitHTTP(t, "http://"+containerIP(t, gw)+":8080/readyz", time.Minute)
	}
	// startRun sends a command on c until a gateway accepts it (the
	// network's name server may lag behind a stack just brought up).
	startRun := func(c *wsClient, prompt string) string {
		for attempt := 0; ; attempt++ {
			mark := c.mark()
			req := fmt.Sprintf("req-%s-%d", strings.ReplaceAll(prompt, " ", "-"), attempt)
			c.send(map[string]any{
				"type": "claude-command", "command": prompt, "requestId": req,
				"options": map[string]any{
					"projectPath":   "/var/lib/agentgate/home/alice",
					"toolsSettings": map[string]any{"allowedTools": []string{"Bash"}},
				},
			})
			fs := c.waitFor(15*time.Second, "an answer to the command", func(fs []frame) bool {
				for _, f := range fs[mark:] {
					if f.str("requestId") == req {
						return true
					}
				}
				return false
			})
			for _, f := range fs[mark:] {
				if f.str("requestId") == req && f.str("type") == "session-accepted" {
					return f.str("sessionId")
				}
			}
			require.Less(t, attempt, 10, "the command is refused")
			time.Sleep(2 * time.Second)
		}
	}
	c1 := dialLB("c1")
	sid := startRun(c1, "run the steps ct")
	waitMidRun(t, c1, sid)

	// Kill the gateway that holds c1's socket; the client resumes through
	// nginx on the other one.
	victim := gatewayWithSocket(t)
	require.NoError(t, exec.Command("podman", "kill", ctProject+"_"+victim).Run())
	t.Logf("killed %s", victim)
	_ = c1.waitClosed(10 * time.Second)
	before := c1.events(sid)
	checkPrefix(t, before)
	c2 := reconnectLB("c2")
	st := status(t, c2, sid, ptr(lastSeq(before)))
	require.Equal(t, true, st.m["recovered"], st.raw)

	// Restart Redis; the client stays or resumes, and the run completes.
	require.NoError(t, exec.Command("podman", "restart", "-t", "0", ctProject+"_redis_1").Run())
	t.Logf("restarted redis")
	evs := c2.waitEnd(sid, 1, 3*time.Minute)
	all := append(append([]event(nil), before...), evs...)
	sum := checkRun(t, all, 1)
	requireComplete(t, sum.completes[0], 0, true, false)

	// A terminal through nginx.
	sh := dialWS(t, "shell", "ws://"+base+"/shell?token="+token)
	sh.send(map[string]any{"type": "init", "projectPath": "/var/lib/agentgate/home/alice", "shellId": "ct", "cols": 80, "rows": 24,
		"initialCommand": "echo container-$((6*7)); id -u; setsid -f sleep 4242; read line; echo typed-$line"})
	shellSays := func(s string) {
		sh.waitFor(60*time.Second, "the terminal's output "+s, func(fs []frame) bool {
			var out strings.Builder
			for _, f := range fs {
				out.WriteString(f.str("data"))
			}
			return strings.Contains(out.String(), s)
		})
	}
	shellSays("container-42")
	// escapedJob is the job the terminal started in a session of its own
	// (setsid), holding the terminal: found by the worker among the user's
	// processes through /proc/PID/fd, which needs CAP_SYS_PTRACE.
	escapedJob := func() (running bool) {
		for _, w := range []string{"worker_1", "worker_2"} {
			if exec.Command("podman", "exec", ctProject+"_"+w, "pgrep", "-f", "^sleep 4242$").Run() == nil {
				running = true
			}
		}
		return running
	}
	eventually(t, 20*time.Second, "the terminal's escaped job", escapedJob)
	// The keystrokes take the worker's link, at the address it advertised
	// on the stack's network.
	sh.send(map[string]any{"type": "input", "data": "over-the-link\r"})
	shellSays("typed-over-the-link")
	eventually(t, 20*time.Second, "the end of the escaped job with its terminal", func() bool { return !escapedJob() })
	t.Logf("the terminal's escaped job ended with it")
	linked := 0.0
	for _, gw := range ctGateways {
		if gw != victim { // killed above, not started again yet
			linked += scrape(t, "http://"+containerIP(t, gw)+":8080/metrics").value(`agentgate_terminal_controls_total{path="link"}`)
		}
	}
	require.Positive(t, linked, "keystrokes through the workers' links")
	sh.drop()
	c2.drop()

	// Drain: SIGTERM to the gateway that holds a streaming client's socket.
	// It stops taking sockets, closes this one with 1001 after its grace,
	// and the client resumes through nginx on the other gateway.
	for _, gw := range ctGateways {
		if out, err := exec.Command("podman", "start", ctProject+"_"+gw).CombinedOutput(); err != nil {
			t.Logf("start %s: %v %s", gw, err, out)
		}
		waitHTTP(t, "http://"+containerIP(t, gw)+":8080/readyz", time.Minute)
	}
	c3 := dialLB("c3")
	sid2 := startRun(c3, "run the steps drain")
	waitMidRun(t, c3, sid2)
	victim = gatewayWithSocket(t)
	stopped := make(chan error, 1)
	stopAt := time.Now()
	go func() { stopped <- exec.Command("podman", "stop", "-t", "15", ctProject+"_"+victim).Run() }()
	err = c3.waitClosed(30 * time.Second)
	closedAt := time.Now()
	require.Equal(t, websocket.CloseGoingAway, closeCode(err), "the drained socket's close: %v", err)
	before = c3.events(sid2)
	checkPrefix(t, before)
	c4 := reconnectLB("c4")
	st = status(t, c4, sid2, ptr(lastSeq(before)))
	require.Equal(t, true, st.m["recovered"], st.raw)
	t.Logf("drain of %s: socket closed with 1001 %s after SIGTERM; resumed through nginx %s after the close; %d events before",
		victim, closedAt.Sub(stopAt).Round(time.Millisecond), time.Since(closedAt).Round(time.Millisecond), len(before))
	evs = c4.waitEnd(sid2, 1, 3*time.Minute)
	sum = checkRun(t, append(append([]event(nil), before...), evs...), 1)
	requireComplete(t, sum.completes[0], 0, true, false)
	require.NoError(t, <-stopped, "podman stop")

	// The metrics stay off the public address; each process serves its own.
	resp, err := http.Get("http://" + base + "/metrics")
	require.NoError(t, err)
	resp.Body.Close()
	require.Equal(t, http.StatusNotFound, resp.StatusCode, "/metrics through nginx")
	other := ctGateways[0]
	if victim == other {
		other = ctGateways[1]
	}
	for _, target := range []string{containerIP(t, other) + ":8080", containerIP(t, "worker_1") + ":9090", containerIP(t, "worker_2") + ":9090"} {
		m := scrape(t, "http://"+target+"/metrics")
		t.Logf("metrics of %s: %d series; agentgate's that are not zero:\n%s", target, len(m), m.sample())
	}

	// No token in nginx's logs, though every socket's URL had one: the
	// access log has paths only, and the error log, which prints a failed
	// request's URL (the gateways killed and stopped above made nginx's
	// connections to them fail), is kept to crit.
	logs, err := exec.Command("podman", "logs", ctProject+"_nginx_1").CombinedOutput()
	require.NoError(t, err)
	require.Contains(t, string(logs), `"GET /ws HTTP/1.1" 101`, "the access log")
	require.NotContains(t, string(logs), token, "nginx logged a token")
	require.NotContains(t, string(logs), "token=", "nginx logged a token")
}

// composeDir makes the stack's network, copies deploy/compose into a
// temporary folder, makes its secrets, and points the workers' CLIs at
// relay, an address on the network's gateway.
func composeDir(t *testing.T, relay string) string {
	t.Helper()
	_ = exec.Command("podman", "network", "rm", ctNetwork).Run()
	out, err := exec.Command("podman", "network", "create", "--subnet", ctSubnet, ctNetwork).CombinedOutput()
	require.NoError(t, err, "network create: %s", out)

	dir := t.TempDir()
	src := filepath.Join(moduleRoot, "deploy", "compose")
	for _, f := range []string{"compose.yaml", "nginx.conf", "redis.conf", "init-secrets.sh"} {
		b, err := os.ReadFile(filepath.Join(src, f))
		require.NoError(t, err)
		require.NoError(t, os.WriteFile(filepath.Join(dir, f), b, 0o755))
	}
	cmd := exec.Command("./init-secrets.sh")
	cmd.Dir = dir
	out, err = cmd.CombinedOutput()
	require.NoError(t, err, "init-secrets: %s", out)
	env := fmt.Sprintf("ANTHROPIC_BASE_URL=http://%s\nANTHROPIC_API_KEY=test\nCLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC=1\nCLAUDE_CODE_MAX_RETRIES=0\n", relay)
	require.NoError(t, os.WriteFile(filepath.Join(dir, "providers.env"), []byte(env), 0o600))
	return dir
}

// relayTo forwards TCP connections from listen to target until the test ends.
func relayTo(t *testing.T, listen, target string) {
	t.Helper()
	// The address is the network bridge's, which may appear a moment
	// after the first container was attached.
	var ln net.Listener
	eventually(t, 30*time.Second, "the relay's listener on "+listen, func() bool {
		var err error
		ln, err = net.Listen("tcp", listen)
		return err == nil
	})
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				u, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer u.Close()
				go func() { _, _ = io.Copy(u, c) }()
				_, _ = io.Copy(c, u)
			}()
		}
	}()
}

// gatewayWithSocket names the gateway container that has a chat socket
// open, from each gateway's metrics.
func gatewayWithSocket(t *testing.T) string {
	t.Helper()
	for _, gw := range ctGateways {
		if scrape(t, "http://"+containerIP(t, gw)+":8080/metrics").value(`agentgate_sockets{endpoint="chat"}`) > 0 {
			return gw
		}
	}
	t.Fatal("no gateway holds the socket")
	return ""
}

func waitHTTP(t *testing.T, url string, timeout time.Duration) {
	t.Helper()
	client := &http.Client{Timeout: 2 * time.Second}
	eventually(t, timeout, url, func() bool {
		resp, err := client.Get(url)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}

// waitNoAardvark waits until the network's DNS server of this stack is gone:
// a stack brought up again while it lingers hangs its first lookups.
func waitNoAardvark(t *testing.T) {
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) && len(procsWithArg("aardvark-dns")) > 0 {
		time.Sleep(200 * time.Millisecond)
	}
}

// containerIP is the address of a container of the stack (gateway_1: the
// gateway service's first replica) on its network.
func containerIP(t *testing.T, container string) string {
	t.Helper()
	ip, err := exec.Command("podman", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", ctProject+"_"+container).Output()
	require.NoError(t, err)
	return strings.TrimSpace(string(ip))
}
