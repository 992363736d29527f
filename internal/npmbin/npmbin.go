// Package npmbin finds the provider CLIs that scripts/test-deps.sh installs
// into node_modules, for tests that run them for real.
package npmbin

import (
	"os"
	"path/filepath"
	"testing"
)

// Find returns the CLI named name: $envVar when set, else
// node_modules/.bin/<name> in a folder between the working directory and
// the module root. Without it the test is skipped, except under CI where a
// missing CLI must fail loudly.
func Find(t testing.TB, name, envVar string) string {
	t.Helper()
	if p := os.Getenv(envVar); p != "" {
		if _, err := os.Stat(p); err != nil {
			t.Fatalf("%s=%s: %v", envVar, p, err)
		}
		return p
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		p := filepath.Join(dir, "node_modules", ".bin", name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			break
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			break
		}
		dir = parent
	}
	msg := "!!! " + name + " CLI not found: set " + envVar + " or run scripts/test-deps.sh next to go.mod. " +
		"The real-CLI tests are NOT running. !!!"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}
