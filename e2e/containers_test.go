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
	"regexp"
	"strings"
	"testing"
	"time"

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
	mock := mockanthropic.New(t, longRun("ct", 4, 300*time.Millisecond)...)
	// The network's bridge, and so its gateway address, exists once a
	// container is attached: the relay to the mock listens from then on, on
	// a port chosen now.
	relay := ctHostIP + ":" + strings.TrimPrefix(freeAddr(t), "127.0.0.1:")
	dir := composeDir(t, relay)
	port := strings.TrimPrefix(freeAddr(t), "127.0.0.1:")
	compose := func(args ...string) string {
		t.Helper()
		cmd := exec.Command("podman-compose", append([]string{"-p", ctProject, "-f", filepath.Join(dir, "compose.yaml")}, args...)...)
		cmd.Dir = dir
		cmd.Env = append(os.Environ(), "AGENTGATE_PORT=127.0.0.1:"+port, "AGENTGATE_PUBLIC_HOSTS=127.0.0.1")
		out, err := cmd.CombinedOutput()
		require.NoError(t, err, "podman-compose %v: %s", args, out)
		return string(out)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, c := range []string{"gateway-1", "gateway-2", "worker-1", "worker-2", "nginx", "redis"} {
				out, _ := exec.Command("podman", "logs", "--tail", "40", ctProject+"_"+c+"_1").CombinedOutput()
				t.Logf("--- %s\n%s", c, out)
			}
		}
		compose("down", "-v")
		_ = exec.Command("podman", "network", "rm", ctNetwork).Run()
		waitNoAardvark(t)
	})
	start := time.Now()
	compose("up", "-d")
	relayTo(t, relay, strings.TrimPrefix(mock.URL, "http://"))
	base := "127.0.0.1:" + port
	waitHTTP(t, "http://"+base+"/readyz", 3*time.Minute)
	t.Logf("up to ready through nginx: %s", time.Since(start).Round(100*time.Millisecond))

	b, err := os.ReadFile(filepath.Join(dir, "agentgate.env"))
	require.NoError(t, err)
	secret := envValue(strings.Split(string(b), "\n"), "AGENTGATE_JWT_SECRET")
	require.NotEmpty(t, secret)
	token := issueToken(t, "alice", secret)
	dialLB := func(name string) *wsClient {
		return dialWS(t, name, "ws://"+base+"/ws?token="+token)
	}

	// Every gateway answers, and sees the workers, before the run: the
	// network's name server may lag behind a stack that was just brought up.
	for _, gw := range []string{"gateway-1", "gateway-2"} {
		waitHTTP(t, "http://"+containerIP(t, gw)+":8080/readyz", time.Minute)
	}
	c1 := dialLB("c1")
	var sid string
	for attempt := 0; sid == ""; attempt++ {
		mark := c1.mark()
		req := fmt.Sprintf("req-ct-%d", attempt)
		c1.send(map[string]any{
			"type": "claude-command", "command": "run the steps ct", "requestId": req,
			"options": map[string]any{
				"projectPath":   "/var/lib/agentgate/home/alice",
				"toolsSettings": map[string]any{"allowedTools": []string{"Bash"}},
			},
		})
		fs := c1.waitFor(15*time.Second, "an answer to the command", func(fs []frame) bool {
			for _, f := range fs[mark:] {
				if f.str("requestId") == req {
					return true
				}
			}
			return false
		})
		for _, f := range fs[mark:] {
			if f.str("requestId") == req && f.str("type") == "session-accepted" {
				sid = f.str("sessionId")
			}
		}
		if sid == "" {
			require.Less(t, attempt, 10, "the command is refused")
			time.Sleep(2 * time.Second)
		}
	}
	waitMidRun(t, c1, sid)

	// Kill the gateway that holds c1's socket; the client resumes through
	// nginx on the other one.
	victim := gatewayWithSocket(t)
	require.NoError(t, exec.Command("podman", "kill", ctProject+"_"+victim+"_1").Run())
	t.Logf("killed %s", victim)
	_ = c1.waitClosed(10 * time.Second)
	before := c1.events(sid)
	checkPrefix(t, before)
	c2 := dialLB("c2")
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
		"initialCommand": "echo container-$((6*7)); id -u"})
	sh.waitFor(60*time.Second, "the terminal's output", func(fs []frame) bool {
		var out strings.Builder
		for _, f := range fs {
			out.WriteString(f.str("data"))
		}
		return strings.Contains(out.String(), "container-42")
	})
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
	ln, err := net.Listen("tcp", listen)
	require.NoError(t, err)
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
	re := regexp.MustCompile(`(?m)^agentgate_chat_sockets ([0-9.]+)$`)
	for _, gw := range []string{"gateway-1", "gateway-2"} {
		resp, err := http.Get("http://" + containerIP(t, gw) + ":8080/metrics")
		require.NoError(t, err)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if m := re.FindSubmatch(b); m != nil && string(m[1]) != "0" {
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

// containerIP is the address of a container of the stack on its network.
func containerIP(t *testing.T, service string) string {
	t.Helper()
	ip, err := exec.Command("podman", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}", ctProject+"_"+service+"_1").Output()
	require.NoError(t, err)
	return strings.TrimSpace(string(ip))
}
