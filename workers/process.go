package workers

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// killGrace is how long a provider gets between the first signal and
// SIGKILL.
const killGrace = 2 * time.Second

// process is a provider CLI started in its own process group.
type process struct {
	leader
}

// wait waits for the leader to exit and kills what it left in its group
// (see leader.reap), then closes exited.
func (p *process) wait() { p.reap(killGroup) }

// killGroup sends SIGKILL to the process group pgid.
func killGroup(pgid int) { _ = syscall.Kill(-pgid, syscall.SIGKILL) }

// signalGroup sends sig to the process group, unless its leader was
// reaped.
func (p *process) signalGroup(sig syscall.Signal) {
	p.whileLive(func(pgid int) { _ = syscall.Kill(-pgid, sig) })
}

// prepareGroup makes cmd start as the leader of a new process group and die
// with the worker: on Linux, Pdeathsig delivers SIGKILL when the worker
// exits, even by kill -9 (a CLI otherwise keeps retrying its API for minutes).
func prepareGroup(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
}

// kill stops the provider and everything it started. Signalling the group
// is not enough: the Claude CLI runs each tool in a session of its own, and
// SIGTERM leaves those running, while SIGINT makes the CLI stop its tools.
// So kill snapshots the whole tree under the leader first, then sends
// SIGINT, SIGTERM and finally SIGKILL to the group, and SIGKILL to every
// process of the snapshot that still runs (same start time, so a reused pid
// is never hit). It is safe to call more than once.
func (p *process) kill(grace time.Duration) {
	p.killKnown(grace, nil)
}

// killKnown is kill with processes seen earlier added to the snapshot: once
// the leader has exited, the tree under it can no longer be found.
func (p *process) killKnown(grace time.Duration, known []proc) {
	if p.cmd.Process == nil {
		return
	}
	tree := append(known, p.tree()...)
	for _, sig := range []syscall.Signal{syscall.SIGINT, syscall.SIGTERM} {
		p.signalGroup(sig)
		select {
		case <-p.exited:
		case <-time.After(grace / 2):
		}
		tree = append(tree, p.tree()...)
	}
	// ESRCH here means the group is already gone, which is the goal; a
	// reaped leader's group had its SIGKILL in wait.
	p.signalGroup(syscall.SIGKILL)
	for _, d := range tree {
		if d.running() {
			_ = syscall.Kill(-d.pid, syscall.SIGKILL) // a session leader's own group
			_ = syscall.Kill(d.pid, syscall.SIGKILL)
		}
	}
}

// heldFiles names open files for killHolders: by the text of their
// /proc/PID/fd links ("pipe:[ino]", "/dev/pts/N"), and by identity, since
// a devpts of another container shows the same names for other terminals.
type heldFiles map[string]fileID

// fileID is a file's identity: its filesystem and inode.
type fileID struct{ dev, ino uint64 }

// openFiles names the files for killHolders. Stat rather than Fd: Fd
// would switch a file to blocking mode under a concurrent Read.
func openFiles(files ...*os.File) heldFiles {
	held := heldFiles{}
	for _, f := range files {
		fi, err := f.Stat()
		if err != nil {
			continue
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			continue
		}
		link := f.Name()
		if fi.Mode()&os.ModeNamedPipe != 0 {
			link = "pipe:[" + strconv.FormatUint(st.Ino, 10) + "]"
		}
		held[link] = fileID{dev: uint64(st.Dev), ino: st.Ino}
	}
	return held
}

// killHolders kills every other process of uid that holds one of the files
// open: after a leader has exited, a child still holding its stdout,
// stderr or terminal is one that left its group or session (setsid), and no
// process may outlive its run or terminal. The caller must still hold the
// files open: a closed file's name may already be another's. Only uid's
// processes are looked at (the run's or terminal's: a process of another
// uid cannot hold what only its own were given), and for at most
// holdersBudget: reading every descriptor of the host cost 6 µs each, and
// a user's processes may hold millions.
func killHolders(held heldFiles, uid int) {
	if len(held) == 0 {
		return
	}
	deadline := time.Now().Add(holdersBudget)
	for _, pid := range processes() {
		if time.Now().After(deadline) {
			return
		}
		var owner syscall.Stat_t
		if syscall.Stat(filepath.Join("/proc", strconv.Itoa(pid)), &owner) != nil || int(owner.Uid) != uid {
			continue
		}
		dir := filepath.Join("/proc", strconv.Itoa(pid), "fd")
		fds, err := os.ReadDir(dir)
		if err != nil {
			continue
		}
		for _, fd := range fds {
			path := filepath.Join(dir, fd.Name())
			link, err := os.Readlink(path)
			if err != nil {
				continue
			}
			id, ok := held[link]
			if !ok {
				continue
			}
			// The name matched; the identity decides (the link's target).
			var st syscall.Stat_t
			if syscall.Stat(path, &st) == nil && uint64(st.Dev) == id.dev && st.Ino == id.ino {
				_ = syscall.Kill(pid, syscall.SIGKILL)
				break
			}
		}
	}
}

// holdersBudget bounds one killHolders scan.
const holdersBudget = time.Second

// capSysPtrace is CAP_SYS_PTRACE's bit in the capability sets.
const capSysPtrace = 19

// canReadOthersFiles reports whether this process can read which files
// processes of other uids hold: the links of /proc/PID/fd need ptrace
// access, which root has only with CAP_SYS_PTRACE. Container engines do
// not grant it by default; without it a worker with user accounts lists a
// user's descriptors but cannot read them, and killHolders passes over a
// job that left its run's or terminal's session (setsid, nohup).
func canReadOthersFiles() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	eff, ok := effectiveCaps(string(b))
	return ok && eff&(1<<capSysPtrace) != 0
}

// effectiveCaps reads the effective capability set from the text of
// /proc/PID/status.
func effectiveCaps(status string) (uint64, bool) {
	for line := range strings.Lines(status) {
		if v, ok := strings.CutPrefix(line, "CapEff:"); ok {
			eff, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			return eff, err == nil
		}
	}
	return 0, false
}

// uidOf is the uid a command runs as: its credential's, or the worker's.
func uidOf(cred *syscall.Credential) int {
	if cred == nil {
		return os.Getuid()
	}
	return int(cred.Uid)
}

// proc identifies a process across pid reuse.
type proc struct {
	pid   int
	start uint64 // start time in clock ticks since boot
}

func (d proc) running() bool {
	_, start, ok := readStat(d.pid)
	return ok && start == d.start
}

// descendants lists every process under root, whatever its group or
// session, by walking parent links in /proc.
func descendants(root int) []proc {
	children := processTree()
	var out []proc
	queue := []int{root}
	for len(queue) > 0 {
		next := queue[0]
		queue = queue[1:]
		for _, c := range children[next] {
			out = append(out, c)
			queue = append(queue, c.pid)
		}
	}
	return out
}

// treeFresh is how long one walk of /proc serves every kill that asks for
// the process tree. Aborts come in bursts (a user's many runs, a worker's
// shutdown), each kill walks the tree three or four times, and a walk reads
// the stat of every process on the host: 200 aborts at once took 9 s of
// walking to clear their CLIs without it. A kill walks again after each
// grace period, so a child started within this window is still found.
const treeFresh = 50 * time.Millisecond

// procTree is the last walk of /proc: children by parent pid. The map is
// never modified once published.
var procTree struct {
	mu       sync.Mutex
	at       time.Time
	children map[int][]proc
}

// processTree returns the processes by parent pid, from a walk of /proc at
// most treeFresh old. Concurrent callers share one walk.
func processTree() map[int][]proc {
	procTree.mu.Lock()
	defer procTree.mu.Unlock()
	if procTree.children != nil && time.Since(procTree.at) < treeFresh {
		return procTree.children
	}
	children := map[int][]proc{}
	for _, pid := range processes() {
		if ppid, start, ok := readStat(pid); ok {
			children[ppid] = append(children[ppid], proc{pid, start})
		}
	}
	procTree.children, procTree.at = children, time.Now()
	return children
}

// processes lists the pids in /proc, except this process.
func processes() []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	self := os.Getpid()
	pids := make([]int, 0, len(entries))
	for _, e := range entries {
		if pid, err := strconv.Atoi(e.Name()); err == nil && pid != self {
			pids = append(pids, pid)
		}
	}
	return pids
}

// statFields returns the fields of /proc/PID/stat that follow the command
// name, so f[0] is field 3 (state); nil for a process that is gone or a
// zombie, which counts as not running.
func statFields(pid int) [][]byte {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "stat"))
	if err != nil {
		return nil
	}
	// The command name may hold spaces and parentheses; fields follow the
	// last ')'.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return nil
	}
	f := bytes.Fields(b[i+1:])
	if len(f) == 0 || string(f[0]) == "Z" {
		return nil
	}
	return f
}

// readStat reads a process' parent pid and start time from /proc/PID/stat.
func readStat(pid int) (ppid int, start uint64, ok bool) {
	f := statFields(pid)
	// f[1] is field 4 (ppid), f[19] field 22 (starttime).
	if len(f) < 20 {
		return 0, 0, false
	}
	ppid, err1 := strconv.Atoi(string(f[1]))
	start, err2 := strconv.ParseUint(string(f[19]), 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, false
	}
	return ppid, start, true
}

// exitCode reads the exit code of a finished command: a signal or a missing
// status counts as 1, as PROTOCOL §3.3 asks.
func exitCode(state *os.ProcessState) int {
	if state == nil {
		return 1
	}
	if code := state.ExitCode(); code >= 0 {
		return code
	}
	return 1
}

// isNotFound reports whether starting a command failed because the binary
// does not exist.
func isNotFound(err error) bool {
	return errors.Is(err, exec.ErrNotFound) || errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOENT)
}
