package e2e

import (
	"bytes"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store/storetest"
)

// proc is one OS process started by a test: its output goes to t.Logf with
// a prefix, and it is stopped by its PID when the test ends.
type proc struct {
	t    *testing.T
	name string
	args []string
	env  []string
	// addr is the listen address of a gateway ("" for other processes).
	addr string
	// workerID is the id a worker registered in Redis.
	workerID string

	cmd  *exec.Cmd
	done chan struct{} // closed once Wait returned

	mu     sync.Mutex
	stdout []string
	notify chan struct{}
}

// startProc starts the agentgate binary with exactly env (nothing inherited).
func startProc(t *testing.T, name string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, name: name, args: args, env: env, done: make(chan struct{}), notify: make(chan struct{}, 1)}
	cmd := exec.Command(agentgateBin, args...)
	cmd.Env = env
	cmd.Dir = os.TempDir()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Stdout = &lineWriter{fn: func(line string) {
		t.Logf("[%s stdout] %s", name, line)
		p.mu.Lock()
		p.stdout = append(p.stdout, line)
		p.mu.Unlock()
		select {
		case p.notify <- struct{}{}:
		default:
		}
	}}
	cmd.Stderr = &lineWriter{fn: func(line string) { t.Logf("[%s] %s", name, line) }}
	// Output pipes held by a stray child must not block Wait forever.
	cmd.WaitDelay = 2 * time.Second
	require.NoError(t, cmd.Start(), "start %s", name)
	p.cmd = cmd
	t.Logf("started %s: pid %d, %s %s", name, cmd.Process.Pid, agentgateBin, strings.Join(args, " "))
	go func() {
		_ = cmd.Wait()
		t.Logf("%s (pid %d) exited: %v", name, cmd.Process.Pid, cmd.ProcessState)
		close(p.done)
	}()
	groupOf(t).add(p)
	return p
}

// dumpGoroutines makes p print every goroutine's stack into the test log
// and exit (SIGQUIT), for a test that found it stuck.
func (p *proc) dumpGoroutines() {
	p.t.Logf("%s seems stuck: its goroutines follow", p.name)
	p.signal(syscall.SIGQUIT)
	select {
	case <-p.done:
	case <-time.After(10 * time.Second):
	}
}

// procGroup stops every process of one test at its cleanup, concurrently,
// so that a slow shutdown does not add up process by process.
type procGroup struct {
	mu    sync.Mutex
	procs []*proc
}

var groups sync.Map // *testing.T -> *procGroup

func groupOf(t *testing.T) *procGroup {
	g := &procGroup{}
	if v, loaded := groups.LoadOrStore(t, g); loaded {
		return v.(*procGroup)
	}
	t.Cleanup(func() {
		groups.Delete(t)
		g.mu.Lock()
		procs := append([]*proc(nil), g.procs...)
		g.mu.Unlock()
		var wg sync.WaitGroup
		for _, p := range procs {
			wg.Add(1)
			go func() { defer wg.Done(); p.stop() }()
		}
		wg.Wait()
	})
	return g
}

func (g *procGroup) add(p *proc) {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.procs = append(g.procs, p)
}

func (p *proc) pid() int { return p.cmd.Process.Pid }

// exited reports whether the process is gone.
func (p *proc) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// stop sends SIGTERM, waits up to 5 s, then SIGKILL, by PID.
func (p *proc) stop() {
	if p.exited() {
		return
	}
	_ = syscall.Kill(p.pid(), syscall.SIGTERM)
	select {
	case <-p.done:
		return
	case <-time.After(5 * time.Second):
	}
	p.t.Logf("%s did not stop within 5s of SIGTERM: SIGKILL", p.name)
	_ = syscall.Kill(p.pid(), syscall.SIGKILL)
	<-p.done
}

// kill9 kills the process with SIGKILL and waits for it.
func (p *proc) kill9() {
	p.t.Helper()
	p.t.Logf("kill -9 %s (pid %d)", p.name, p.pid())
	require.NoError(p.t, syscall.Kill(p.pid(), syscall.SIGKILL))
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		p.t.Fatalf("%s survived SIGKILL", p.name)
	}
}

// signal sends sig to the process by its PID.
func (p *proc) signal(sig syscall.Signal) {
	p.t.Helper()
	p.t.Logf("signal %v to %s (pid %d)", sig, p.name, p.pid())
	require.NoError(p.t, syscall.Kill(p.pid(), sig))
}

// waitStdout waits for a stdout line matching re and returns its submatches.
func (p *proc) waitStdout(re *regexp.Regexp, timeout time.Duration) []string {
	p.t.Helper()
	deadline := time.After(timeout)
	for {
		p.mu.Lock()
		for _, l := range p.stdout {
			if m := re.FindStringSubmatch(l); m != nil {
				p.mu.Unlock()
				return m
			}
		}
		p.mu.Unlock()
		select {
		case <-p.notify:
		case <-p.done:
			// Output is complete once Wait returned: one last look.
			p.mu.Lock()
			for _, l := range p.stdout {
				if m := re.FindStringSubmatch(l); m != nil {
					p.mu.Unlock()
					return m
				}
			}
			p.mu.Unlock()
			p.t.Fatalf("%s exited without printing a line matching %s", p.name, re)
		case <-deadline:
			p.t.Fatalf("%s printed no line matching %s within %s", p.name, re, timeout)
		}
	}
}

// lineWriter calls fn for every complete line written to it.
type lineWriter struct {
	mu  sync.Mutex
	buf []byte
	fn  func(string)
}

func (w *lineWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf = append(w.buf, b...)
	for {
		i := bytes.IndexByte(w.buf, '\n')
		if i < 0 {
			break
		}
		w.fn(string(w.buf[:i]))
		w.buf = w.buf[i+1:]
	}
	return len(b), nil
}

// freeAddr returns a free 127.0.0.1 address, below the ephemeral port
// range and given to no other test (storetest.FreeAddr): a gateway stopped
// and started again on it finds it free.
func freeAddr(t *testing.T) string {
	t.Helper()
	return storetest.FreeAddr(t)
}

// procsWithArg returns the PIDs of live processes whose command line
// contains s (the worker starts the CLI with --session-id/--resume <id>).
func procsWithArg(s string) []int {
	var out []int
	entries, _ := os.ReadDir("/proc")
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == os.Getpid() {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/cmdline")
		if err != nil || len(b) == 0 {
			continue // gone, or a zombie
		}
		if bytes.Contains(b, []byte(s)) {
			out = append(out, pid)
		}
	}
	return out
}

// eventually polls cond every 20 ms until it holds or timeout passes.
func eventually(t *testing.T, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
