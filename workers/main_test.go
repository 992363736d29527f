package workers

import (
	"fmt"
	"os"
	"testing"
)

// TestMain runs the package's tests with a HOME of their own: terminals
// start an interactive bash, which reads ~/.bashrc, and a machine's (a
// pyenv hook run at every prompt) made each prompt take seconds under load
// and failed the tests that wait for one. Tests that need a HOME set their
// own.
func TestMain(m *testing.M) {
	home, err := os.MkdirTemp("", "workers-home-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "make a HOME for the tests:", err)
		os.Exit(1)
	}
	os.Setenv("HOME", home)
	code := m.Run()
	os.RemoveAll(home)
	os.Exit(code)
}
