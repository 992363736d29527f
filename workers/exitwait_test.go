package workers

import (
	"os"
	"os/exec"
	"runtime"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// threads is the number of OS threads this process has created; the
// runtime keeps them, so a wait that took one shows.
func threads() int {
	n, _ := runtime.ThreadCreateProfile(nil)
	return n
}

// TestWaitCmdHoldsNoThread: waiting for 200 running processes does not
// take a thread each, as os.Process.Wait does; each wait ends when its
// process is killed and reports how it ended. A process that exited
// before the wait began is found at once.
func TestWaitCmdHoldsNoThread(t *testing.T) {
	const n = 200
	before := threads()
	cmds := make([]*exec.Cmd, n)
	states := make([]*os.ProcessState, n)
	var wg sync.WaitGroup
	for i := range cmds {
		cmd := exec.Command("sleep", "60")
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		require.NoError(t, cmd.Start())
		cmds[i] = cmd
		wg.Add(1)
		go func() {
			defer wg.Done()
			_ = waitCmd(cmd)
			states[i] = cmd.ProcessState
		}()
	}
	t.Cleanup(func() {
		for _, cmd := range cmds {
			_ = cmd.Process.Kill()
		}
		wg.Wait()
	})
	// Every goroutine has had time to reach its wait: a wait that held a
	// thread would have taken it by now.
	time.Sleep(200 * time.Millisecond)
	require.Less(t, threads()-before, n/4, "threads held while %d processes run", n)

	for _, cmd := range cmds {
		require.NoError(t, cmd.Process.Kill())
	}
	wg.Wait()
	for i, st := range states {
		require.NotNil(t, st, "process %d", i)
		ws, ok := st.Sys().(syscall.WaitStatus)
		require.True(t, ok)
		require.True(t, ws.Signaled(), "process %d: %v", i, st)
		require.Equal(t, syscall.SIGKILL, ws.Signal())
	}

	done := exec.Command("sh", "-c", "exit 3")
	require.NoError(t, done.Start())
	time.Sleep(50 * time.Millisecond)
	require.Error(t, waitCmd(done))
	require.Equal(t, 3, done.ProcessState.ExitCode())
}
