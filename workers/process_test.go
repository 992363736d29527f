package workers

import (
	"os"
	"os/exec"
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
		t.Skip("needs root to start a process of another uid")
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
