package workers

import (
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

func TestUserEnv(t *testing.T) {
	environ := []string{
		"PATH=/usr/bin", "LANG=C.UTF-8", "LC_ALL=C", "TZ=UTC", "HOME=/root",
		"AGENTGATE_JWT_SECRET=s3cret", "AGENTGATE_REDIS_URL=redis://:pw@r:6379/0",
		"ANTHROPIC_API_KEY=k", "ANTHROPIC_BASE_URL=http://m", "OPENAI_API_KEY=o",
		"REDIS_PASSWORD=pw", "AWS_SECRET_ACCESS_KEY=a", "MY_TOOL=1", "NOEQUALS",
	}
	cases := []struct {
		name  string
		pass  []string
		extra []string
		want  []string
	}{
		{name: "base only", pass: nil, want: []string{"PATH=/usr/bin", "LANG=C.UTF-8", "LC_ALL=C", "TZ=UTC"}},
		{name: "pattern and name", pass: []string{"ANTHROPIC_*", "MY_TOOL"},
			want: []string{"PATH=/usr/bin", "LANG=C.UTF-8", "LC_ALL=C", "TZ=UTC", "ANTHROPIC_API_KEY=k", "ANTHROPIC_BASE_URL=http://m", "MY_TOOL=1"}},
		{name: "the service's own never pass", pass: []string{"AGENTGATE_*", "AGENTGATE_JWT_SECRET", "*"},
			extra: []string{"AGENTGATE_REDIS_URL=redis://x", "X=1"},
			want: []string{"PATH=/usr/bin", "LANG=C.UTF-8", "LC_ALL=C", "TZ=UTC", "HOME=/root",
				"ANTHROPIC_API_KEY=k", "ANTHROPIC_BASE_URL=http://m", "OPENAI_API_KEY=o",
				"REDIS_PASSWORD=pw", "AWS_SECRET_ACCESS_KEY=a", "MY_TOOL=1", "X=1"}},
		{name: "the default list", pass: DefaultPassEnv,
			want: []string{"PATH=/usr/bin", "LANG=C.UTF-8", "LC_ALL=C", "TZ=UTC", "ANTHROPIC_API_KEY=k", "ANTHROPIC_BASE_URL=http://m", "OPENAI_API_KEY=o"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			require.Equal(t, c.want, userEnv(environ, c.pass, c.extra))
		})
	}
}

// TestProcessesGetNoServiceSecrets: a provider process sees the variables of
// the allow-list and nothing of the service's, whatever the worker has.
func TestProcessesGetNoServiceSecrets(t *testing.T) {
	t.Setenv("AGENTGATE_JWT_SECRET", "s3cret-of-the-service")
	t.Setenv("AGENTGATE_REDIS_URL", "redis://:pw-of-the-service@127.0.0.1:1/0")
	t.Setenv("ANTHROPIC_BASE_URL", "http://127.0.0.1:9")
	t.Setenv("UNLISTED_TOKEN", "not-for-users")
	st := storetest.New(t, storetest.Miniredis(t))
	h := startWorker(t, st, "/bin/sh")
	sess, _ := h.submit("env")
	out := strings.Join(texts(h.waitDone(sess.ID)), "\n")
	require.NotContains(t, out, "service")
	require.NotContains(t, out, "AGENTGATE_")
	require.NotContains(t, out, "UNLISTED_TOKEN")
	require.Contains(t, out, "ANTHROPIC_BASE_URL=http://127.0.0.1:9")
	require.Contains(t, out, "PATH=")
}

// TestResumeUnrecorded: a conversation id agentgate never recorded is
// resumed only where no user can reach another's conversations.
func TestResumeUnrecorded(t *testing.T) {
	for _, single := range []bool{false, true} {
		t.Run("singleUser="+strconv.FormatBool(single), func(t *testing.T) {
			st := storetest.New(t, storetest.Miniredis(t))
			h := runWorker(t, st, Config{
				Providers: map[app.Provider]Provider{app.Claude: scriptProvider{}},
				Bins:      map[app.Provider]string{app.Claude: "/bin/sh"}, SingleUser: single,
			})
			sess := app.Session{ID: app.NewID(), Owner: "alice", Provider: app.Claude, ProjectPath: h.dir, ProviderSessionID: "conv-1"}
			_, err := st.Accept(context.Background(), &store.AcceptRequest{Session: sess, New: true, Job: app.Job{
				SessionID: sess.ID, Owner: "alice", Provider: app.Claude, Command: "echo resumed", ProjectPath: h.dir,
				NewSession: true, ProviderSessionID: "conv-1", ResumeUnrecorded: true,
			}})
			require.NoError(t, err)
			evs := h.waitDone(sess.ID)
			if single {
				require.Equal(t, []string{"resumed"}, texts(evs))
				return
			}
			require.Empty(t, texts(evs), "the CLI was not started")
			require.Equal(t, []string{"No conversation found with session ID: conv-1"}, errorRows(evs))
		})
	}
}

// TestMaxRuns: a worker runs at most MaxRuns at once; the other jobs wait
// in the stream and all complete.
func TestMaxRuns(t *testing.T) {
	st := storetest.New(t, storetest.Miniredis(t))
	h := runWorker(t, st, Config{
		Providers: map[app.Provider]Provider{app.Claude: scriptProvider{}},
		Bins:      map[app.Provider]string{app.Claude: "/bin/sh"}, MaxRuns: 2,
	})
	var ids []string
	for i := 0; i < 5; i++ {
		sess, _ := h.submit("sleep 0.3; echo done")
		ids = append(ids, sess.ID)
	}
	most := 0
	deadline := time.Now().Add(15 * time.Second)
	for time.Now().Before(deadline) {
		h.w.mu.Lock()
		n := len(h.w.runs)
		h.w.mu.Unlock()
		most = max(most, n)
		done := 0
		for _, id := range ids {
			if s, err := st.Session(context.Background(), id); err == nil && !s.Running() {
				done++
			}
		}
		if done == len(ids) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	require.Equal(t, 2, most, "runs at once")
	for _, id := range ids {
		require.Equal(t, []string{"done"}, texts(h.waitDone(id)))
	}
}

// TestRunsUnderAccount: with Accounts, a user's run has their uid, their
// own home (made 0700 for them) and their workspace, no way to gain
// privileges by exec, and two users never share a uid. Needs root, as a worker with accounts does.
func TestRunsUnderAccount(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("!!! skipped: per-user accounts need root")
	}
	tmp := t.TempDir()
	homes := filepath.Join(tmp, "homes")
	// A test's temporary folders are root's alone: open the way to homes.
	for dir := tmp; dir != os.TempDir() && dir != "/"; dir = filepath.Dir(dir) {
		require.NoError(t, os.Chmod(dir, 0o711))
	}
	st := storetest.New(t, storetest.Miniredis(t))
	h := runWorker(t, st, Config{
		Providers:  map[app.Provider]Provider{app.Claude: scriptProvider{}},
		Bins:       map[app.Provider]string{app.Claude: "/bin/sh"},
		Accounts:   &Accounts{FirstUID: 47200, LastUID: 47209, Homes: homes},
		Workspaces: app.Workspaces{Roots: []string{filepath.Join(homes, app.UserPlaceholder)}},
	})
	run := func(owner string) []string {
		sess := app.Session{ID: app.NewID(), Owner: owner, Provider: app.Claude, ProjectPath: filepath.Join(homes, owner)}
		_, err := st.Accept(context.Background(), &store.AcceptRequest{Session: sess, New: true, Job: app.Job{
			SessionID: sess.ID, Owner: owner, Provider: app.Claude, ProjectPath: sess.ProjectPath, NewSession: true,
			Command: `echo "$(id -u) $(id -g) $(id -G) $HOME $USER $PWD"; ls /proc/1/root 2>&1 | head -c 200; echo; grep NoNewPrivs /proc/self/status`,
		}})
		require.NoError(t, err)
		evs := h.waitDone(sess.ID)
		t.Logf("%s: texts %q, errors %q", owner, texts(evs), errorRows(evs))
		return texts(evs)
	}
	alice := run("alice")
	require.Equal(t, "47200 47200 47200 "+filepath.Join(homes, "alice")+" alice "+filepath.Join(homes, "alice"), alice[0])
	require.Contains(t, alice[1], "Permission denied")
	// No set-user-ID program gives it more (su, passwd, a host's sudo).
	require.Regexp(t, `NoNewPrivs:\s+1`, alice[2])
	bob := run("bob")
	require.True(t, strings.HasPrefix(bob[0], "47201 47201 47201 "), bob[0])
	fi, err := os.Stat(filepath.Join(homes, "alice"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), fi.Mode().Perm())
	require.EqualValues(t, 47200, fi.Sys().(*syscall.Stat_t).Uid)

	// A uid that already owns another user's home is refused: the map in
	// Redis was lost and handed out again.
	require.NoError(t, os.Mkdir(filepath.Join(homes, "old-user"), 0o700))
	require.NoError(t, os.Chown(filepath.Join(homes, "old-user"), 47202, 47202))
	evs := run("carol")
	require.Empty(t, evs)
}

// TestAccountEnvHasNoSharedFolders: with --user-uids, variables passed
// from the worker that point a CLI at a state folder (CODEX_HOME matches
// the default --provider-env's CODEX_*) are not given to a user's process:
// every user's logins and conversations would be in that one folder, where
// each could read the others'. Keys, base URLs and certificates pass.
func TestAccountEnvHasNoSharedFolders(t *testing.T) {
	worker := []string{
		"PATH=/usr/bin", "HOME=/root", "TMPDIR=/tmp/w", "CODEX_HOME=/data/codex", "CLAUDE_CONFIG_DIR=/data/claude",
		"GEMINI_CLI_HOME=/data/gemini", "CLAUDE_CODE_TMPDIR=/tmp/c", "XDG_CONFIG_HOME=/data/xdg",
		"ANTHROPIC_API_KEY=k", "OPENAI_BASE_URL=http://m", "SSL_CERT_DIR=/etc/ssl/certs", "CODEX_MODEL=x",
	}
	env := userEnv(worker, DefaultPassEnv, nil)
	got := (&account{name: "u", uid: 1234, home: "/home/u"}).env(env)
	require.ElementsMatch(t, []string{
		"PATH=/usr/bin", "ANTHROPIC_API_KEY=k", "OPENAI_BASE_URL=http://m", "SSL_CERT_DIR=/etc/ssl/certs", "CODEX_MODEL=x",
		"HOME=/home/u", "USER=u", "LOGNAME=u", "SHELL=/bin/bash",
	}, got)
	// Under the worker's own account they pass, as listed.
	require.Contains(t, (*account)(nil).env(env), "CODEX_HOME=/data/codex")
}
