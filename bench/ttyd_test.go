package bench

import (
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// ttyd's WebSocket protocol (src/protocol.c): every frame starts with a
// command byte; the client's first frame is JSON (its '{' the command).
const (
	ttydInput  = '0' // client: keystrokes
	ttydOutput = '0' // server: terminal output
)

// BenchmarkShellTTYD runs BenchmarkShell's workloads against ttyd serving
// the same shell on this machine, with the same client, for a comparison
// in one run ("CPU" is ttyd's process alone, as it is the gateway's and the
// worker's for agentgate). It is skipped when ttyd is not on PATH.
func BenchmarkShellTTYD(b *testing.B) {
	bin, err := exec.LookPath("ttyd")
	if err != nil {
		b.Skip("ttyd is not installed")
	}
	shellBenchmarks(b, newTTYDRig(b, bin))
}

// newTTYDRig starts ttyd on a loopback port, serving
// `bash --norc --noprofile -i` to each connection, writable.
func newTTYDRig(b *testing.B, bin string) *shellRig {
	b.Helper()
	root := b.TempDir()
	r := &shellRig{addr: freeLoopback(b), project: filepath.Join(root, "p")}
	if err := os.MkdirAll(r.project, 0o755); err != nil {
		b.Fatal(err)
	}
	_, port, _ := net.SplitHostPort(r.addr)
	cmd := exec.Command(bin, "--port", port, "--interface", "lo", "--writable", "--cwd", r.project,
		"bash", "--norc", "--noprofile", "-i")
	// No history file: a bash that ttyd hangs up on writes it at exit,
	// which raced the removal of root and failed the benchmark.
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOME=" + root, "TERM=xterm-256color", "HISTFILE=/dev/null"}
	startStopped(b, cmd)
	r.ttyd = cmd
	waitFor(b, 10*time.Second, "ttyd listening", func() bool {
		resp, err := http.Get("http://" + r.addr + "/")
		if err == nil {
			resp.Body.Close()
		}
		return err == nil
	})
	return r
}

// openTTYD opens a terminal on ttyd: a new bash for each socket.
func (r *shellRig) openTTYD(b *testing.B) *termClient {
	b.Helper()
	d := websocket.Dialer{Subprotocols: []string{"tty"}}
	ws, _, err := d.Dial("ws://"+r.addr+"/ws", nil)
	if err != nil {
		b.Fatal(err)
	}
	hello := `{"AuthToken":"","columns":200,"rows":50}`
	if err := ws.WriteMessage(websocket.BinaryMessage, []byte(hello)); err != nil {
		b.Fatal(err)
	}
	return &termClient{ws: ws, ttyd: true}
}
