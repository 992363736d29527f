package mockanthropic

import (
	"os"
	"path/filepath"
	"testing"
)

// ClaudeBin finds the CLI: $AGENTGATE_CLAUDE_BIN, else node_modules/.bin/claude
// in a folder between the working directory and the module root. Without it
// the test is skipped, except under CI where a missing CLI must fail loudly.
func ClaudeBin(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("AGENTGATE_CLAUDE_BIN"); p != "" {
		checkBin(t, p)
		return p
	}
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		p := filepath.Join(dir, "node_modules", ".bin", "claude")
		if _, err := os.Stat(p); err == nil {
			checkBin(t, p)
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
	msg := "!!! Claude Code CLI not found: set AGENTGATE_CLAUDE_BIN or run `npm install` " +
		"(without --ignore-scripts) next to go.mod. The real-CLI tests are NOT running. !!!"
	if os.Getenv("CI") != "" {
		t.Fatal(msg)
	}
	t.Skip(msg)
	return ""
}

// checkBin rejects the placeholder that `npm install --ignore-scripts` leaves
// at bin/claude.exe: a tiny shell script that only prints an error.
func checkBin(t testing.TB, p string) {
	t.Helper()
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatalf("claude binary %s: %v", p, err)
	}
	if fi.Size() <= 4096 {
		t.Fatalf("%s is the npm placeholder stub; run `node node_modules/@anthropic-ai/claude-code/install.cjs`", p)
	}
}

// CLIEnv is Env plus a HOME and a scratch folder of the test's own, which
// the CLI needs writable (it writes ~/.claude and $CLAUDE_CODE_TMPDIR).
func (s *Server) CLIEnv(t testing.TB) []string {
	t.Helper()
	return append(s.Env(), "HOME="+t.TempDir(), "CLAUDE_CODE_TMPDIR="+t.TempDir())
}
