package workers

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// TestKillHoldersLooksOnlyAtItsUID: killHolders kills a holder of the run's
// files only among the processes of the run's uid: a scan of every
// process's descriptors cost the worker seconds when another user's
// processes held a million.
func TestKillHoldersLooksOnlyAtItsUID(t *testing.T) {
	if os.Geteuid() != 0 {
		skipOutsideCI(t, "needs root to start a process of another uid")
	}
	if !canReadOthersFiles() {
		// CI runs as root on a machine of its own, not in a container.
		skipOutsideCI(t, "needs CAP_SYS_PTRACE to read another uid's descriptors (a container's root lacks it by default)")
	}
	const uid = 20779
	r, w, err := os.Pipe()
	require.NoError(t, err)
	defer r.Close()
	defer w.Close()
	held := openFiles(r, w)
	cmd := exec.Command("sleep", "60")
	cmd.Stdout = w // the holder
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
	require.NoError(t, cmd.Start())
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = cmd.Process.Kill(); <-exited })

	killHolders(held, os.Getuid())
	select {
	case <-exited:
		t.Fatal("a holder of another uid was killed")
	case <-time.After(200 * time.Millisecond):
	}
	killHolders(held, uid)
	select {
	case <-exited:
	case <-time.After(5 * time.Second):
		t.Fatal("the holder of the run's uid was not killed")
	}
}

// TestNoSignalAfterReap: once a run's process or a terminal's shell was
// reaped, killing it signals no group or session by its old id: the pid
// is made the next one allocated (ns_last_pid) and given to a new group
// and session leader, another user's process as far as the worker knows,
// which must survive the kill of the reaped one.
func TestNoSignalAfterReap(t *testing.T) {
	if os.Geteuid() != 0 {
		skipOutsideCI(t, "needs root to choose the next pid (/proc/sys/kernel/ns_last_pid)")
	}
	t.Run("run", func(t *testing.T) {
		cmd := exec.Command("true")
		prepareGroup(cmd)
		require.NoError(t, cmd.Start())
		p := &process{newLeader(cmd)}
		go p.wait()
		<-p.exited
		other := leaderWithPid(t, cmd.Process.Pid)
		p.kill(20 * time.Millisecond)
		requireAlive(t, other)
	})
	t.Run("terminal", func(t *testing.T) {
		p, err := startPTY(ptyConfig{Args: []string{"true"}, Dir: t.TempDir(), Env: []string{"PATH=" + os.Getenv("PATH")}, Cols: 80, Rows: 24})
		require.NoError(t, err)
		defer p.close()
		<-p.exited
		other := leaderWithPid(t, p.cmd.Process.Pid)
		p.kill(20 * time.Millisecond)
		requireAlive(t, other)
	})
}

// leaderWithPid starts a process that leads a session (and so a group) of
// its own with the given pid, and has a child, which must be free; it skips
// the test (fails it in CI) when other processes of the host keep taking
// the pid first.
func leaderWithPid(t *testing.T, pid int) *exec.Cmd {
	t.Helper()
	for range 100 {
		require.NoError(t, os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0o644))
		// With a child: a kill of the reaped process must not find it
		// among "its" descendants either (sh exits when it dies).
		cmd := exec.Command("sh", "-c", "sleep 60 & wait")
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
		require.NoError(t, cmd.Start())
		if cmd.Process.Pid == pid {
			t.Cleanup(func() {
				if cmd.ProcessState == nil { // not reaped (requireAlive reaps it): pid still names its group
					_ = syscall.Kill(-pid, syscall.SIGKILL)
					_ = cmd.Wait()
				}
			})
			require.Eventually(t, func() bool { return len(descendants(pid)) > 0 }, 5*time.Second, time.Millisecond, "the child")
			return cmd
		}
		// Its group, not sh alone: sh's `sleep 60` would outlive it.
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		_ = cmd.Wait()
	}
	skipOutsideCI(t, fmt.Sprintf("pid %d was taken by other processes a hundred times", pid))
	return nil
}

// skipOutsideCI skips the test for want of what msg says, or fails it in
// CI (CI is set), which runs the tests as root on a quiet machine of its
// own: there, what a test lacks is a fault.
func skipOutsideCI(t *testing.T, msg string) {
	t.Helper()
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip("SKIPPED: " + msg)
}

// requireAlive fails the test if cmd has exited (by a signal meant for
// another process) within a moment.
func requireAlive(t *testing.T, cmd *exec.Cmd) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		t.Fatalf("the new process with the reaped pid was killed: %v", err)
	case <-time.After(200 * time.Millisecond):
	}
	// Its group (sh leads it), before sh is reaped: sh's child too.
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
	<-done
}

// TestEffectiveCaps reads CAP_SYS_PTRACE from /proc/PID/status: the
// effective set of a container's default root lacks it, the same with
// --cap-add SYS_PTRACE has it.
func TestEffectiveCaps(t *testing.T) {
	status := "Name:\tbash\nCapInh:\t0000000000000000\nCapPrm:\t00000000a80425fb\nCapEff:\t%s\nCapBnd:\t00000000a80c25fb\n"
	for eff, ptrace := range map[string]bool{"00000000a80425fb": false, "00000000a80c25fb": true, "000001ffffffffff": true, "0000000000000000": false} {
		caps, ok := effectiveCaps(fmt.Sprintf(status, eff))
		require.True(t, ok, eff)
		require.Equal(t, ptrace, caps&(1<<capSysPtrace) != 0, eff)
	}
	_, ok := effectiveCaps("Name:\tbash\n")
	require.False(t, ok)
	if os.Geteuid() == 0 {
		t.Logf("this process can read other uids' descriptors: %v", canReadOthersFiles())
	}
}
