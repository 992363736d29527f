package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/internal/mockanthropic"
	"github.com/agentgate/agentgate/store/storetest"
)

// accountUIDs is the uid range of the account tests: high and unusual, so
// that no account of the host owns files there.
const accountFirstUID, accountLastUID = 47100, 47199

// tenantCluster is a gateway and a worker that runs each user's processes
// under an account of their own (--user-uids), on a Redis with a password
// given only through the environment.
type tenantCluster struct {
	*cluster
	gw, worker *proc
	homes      string
}

// probeTurn is a Bash tool use that shows what a user's process can see:
// its ids and home, the service's variables, the worker's environment (the
// first root process up its tree), another user's home and Redis.
func probeTurns(marker, homes, redisPort string) []mockanthropic.Turn {
	probe := strings.Join([]string{
		`echo "UID=$(id -u) GID=$(id -g) HOME=$HOME"`,
		`echo "SERVICE=[$(env | grep -c AGENTGATE)]"`,
		`p=$$; while [ "$p" -gt 1 ]; do p=$(awk '{print $4}' /proc/$p/stat); [ "$(awk '/^Uid:/{print $2}' /proc/$p/status)" = 0 ] && break; done`,
		`echo "WORKER=$p"; cat /proc/$p/environ >/dev/null 2>&1 && echo "ENVIRON=readable" || echo "ENVIRON=denied"`,
		`ls ` + filepath.Join(homes, "bob") + ` >/dev/null 2>&1 && echo "BOBHOME=readable" || echo "BOBHOME=denied"`,
		`echo "REDIS=$(redis-cli -p ` + redisPort + ` ping 2>&1 | head -c 20)"`,
	}, "; ")
	return []mockanthropic.Turn{
		{When: marker, Text: "Probing.", ToolUses: []mockanthropic.ToolUse{{
			ID: "toolu_" + marker, Name: "Bash", Input: map[string]any{"command": probe, "description": "Probe"},
		}}},
		{When: marker, Text: "Probed " + marker + "."},
	}
}

// newTenantCluster starts it; workerEnv adds to (and overrides) the
// worker's environment.
func newTenantCluster(t *testing.T, workerEnv ...string) *tenantCluster {
	t.Helper()
	if os.Geteuid() != 0 {
		if os.Getenv("CI") != "" {
			t.Fatal("the account tests need root, and CI runs as root")
		}
		t.Skip("!!! skipped: per-user accounts need root (run the tests as root to cover them)")
	}
	password := app.NewID()
	srv := storetest.StartServerWithPassword(t, password)
	_, port, _ := strings.Cut(srv.Addr, ":")
	homes := filepath.Join(reachableDir(t), "homes")
	// As an image's `mkdir -p` makes it: the worker sets it to 0711.
	require.NoError(t, os.Mkdir(homes, 0o755))
	cl := newCluster(t, reachableBin(t, mockanthropic.ClaudeBin(t)), probeTurns("probe-alice", homes, port)...)
	cl.redis, cl.redisURL = srv, srv.URL
	cl.rdb = redis.NewClient(&redis.Options{Addr: srv.Addr, Password: password})
	t.Cleanup(func() { _ = cl.rdb.Close() })

	tc := &tenantCluster{cluster: cl, homes: homes}
	workspaces := "AGENTGATE_WORKSPACES=" + filepath.Join(homes, app.UserPlaceholder)
	tc.gw = startProc(t, "gw", append(cl.baseEnv(), "AGENTGATE_LISTEN="+freeAddr(t), workspaces), "gateway")
	tc.gw.addr = envValue(tc.gw.env, "AGENTGATE_LISTEN")
	waitReady(t, tc.gw)
	tc.worker = startProc(t, "worker", append(append(cl.workerEnv(), workspaces,
		fmt.Sprintf("AGENTGATE_USER_UIDS=%d-%d", accountFirstUID, accountLastUID),
		"AGENTGATE_USER_HOMES="+homes,
		// The operator's choice: the model API and two CLI settings, not
		// the test's temporary folder, which only root may write.
		"AGENTGATE_PROVIDER_ENV=ANTHROPIC_*,CLAUDE_CODE_MAX_RETRIES,CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC",
	), workerEnv...), "worker")
	cl.waitWorker(tc.worker)
	return tc
}

// TestUserAccounts: with --user-uids each user's terminal and CLI run under
// an account of their own. alice's processes cannot read the service's
// secrets (not in their environment, the worker's /proc environ closed to
// them), bob's home, or write to Redis; bob's terminal keeps working
// meanwhile; the CLI keeps its state in alice's own home.
func TestUserAccounts(t *testing.T) {
	t.Parallel()
	tc := newTenantCluster(t)
	sc := &shellCluster{cluster: tc.cluster, gw1: tc.gw, gw2: tc.gw, worker: tc.worker}
	_, port, _ := strings.Cut(tc.redis.Addr, ":")

	init := func(shellID string) map[string]any {
		m := sc.plainInit(shellID)
		delete(m, "projectPath") // the user's own workspace: their home
		return m
	}
	bob := sc.dialShell(tc.gw, "bob")
	bob.send(init("bob-1"))
	bob.waitText(0, "$ ", 20*time.Second)
	mark := bob.mark()
	bob.typeLine(`echo secret-of-bob > ~/notes; echo "BOB=$(id -u) $PWD"`)
	bob.waitText(mark, "BOB=471", 10*time.Second)

	alice := sc.dialShell(tc.gw, "alice")
	alice.send(init("alice-1"))
	alice.waitText(0, "$ ", 20*time.Second)
	mark = alice.mark()
	workerPID := tc.worker.pid()
	alice.typeLine(strings.Join([]string{
		`echo "UID=$(id -u) HOME=$HOME PWD=$PWD"`,
		`echo "SECRET=[$AGENTGATE_JWT_SECRET][$AGENTGATE_REDIS_URL]" "N=$(env | grep -c AGENTGATE)"`,
		// Each answer is built at run time, so that the echo of the typed
		// line never matches it.
		fmt.Sprintf(`echo "WORKER=$(cat /proc/%d/environ >/dev/null 2>&1 && echo open || echo shut)"`, workerPID),
		fmt.Sprintf(`echo "GATEWAY=$(cat /proc/%d/environ >/dev/null 2>&1 && echo open || echo shut)"`, tc.gw.pid()),
		`cat ` + filepath.Join(tc.homes, "bob", "notes") + ` 2>&1 | head -c 200; echo`,
		`echo "HOMES=$(ls ` + tc.homes + ` >/dev/null 2>&1 && echo listed || echo unlisted)"`,
		`echo "REDIS=$(redis-cli -p ` + port + ` set ag:owned alice 2>&1 | head -c 30)"`,
		`echo "NNP=$(awk '/^NoNewPrivs:/{print $2}' /proc/self/status)"`,
		`echo "DO""NE"`,
	}, "; "))
	alice.waitText(mark, "DONE", 20*time.Second)
	out := alice.text(mark)
	t.Logf("alice's terminal:\n%s", out)
	aliceHome := filepath.Join(tc.homes, "alice")
	require.Regexp(t, `UID=471\d\d HOME=`+aliceHome+` PWD=`+aliceHome, out)
	require.Contains(t, out, "SECRET=[][] N=0")
	require.Contains(t, out, "WORKER=shut")
	require.Contains(t, out, "GATEWAY=shut")
	require.Contains(t, out, "Permission denied")
	require.NotContains(t, out, "secret-of-bob")
	require.Contains(t, out, "HOMES=unlisted", "alice lists the users' names")
	require.Regexp(t, `REDIS=NOAUTH`, out)
	require.Contains(t, out, "NNP=1", "a set-user-ID program would give alice more")
	require.EqualValues(t, 0, tc.rdb.Exists(t.Context(), "ag:owned").Val(), "alice wrote to Redis")

	// The two homes: each 0700 and its own account's.
	var uids []uint32
	for _, user := range []string{"alice", "bob"} {
		fi, err := os.Stat(filepath.Join(tc.homes, user))
		require.NoError(t, err)
		st := fi.Sys().(*syscall.Stat_t)
		require.Equal(t, os.FileMode(0o700), fi.Mode().Perm(), user)
		require.GreaterOrEqual(t, int(st.Uid), accountFirstUID, user)
		uids = append(uids, st.Uid)
	}
	require.NotEqual(t, uids[0], uids[1], "alice and bob share an account")
	// bob's terminal went on.
	mark = bob.mark()
	bob.typeLine(`cat ~/notes`)
	bob.waitText(mark, "secret-of-bob", 10*time.Second)

	// A chat run: the CLI runs as alice, in her home, and the same probe
	// from its Bash tool sees nothing of the service.
	ws := tc.dial(tc.gw, "alice")
	ws.send(map[string]any{
		"type": "claude-command", "command": "probe-alice", "requestId": "r1",
		"options": map[string]any{"toolsSettings": map[string]any{"allowedTools": []string{"Bash"}}},
	})
	acc := ws.waitReply("session-accepted", nil)
	sid := acc.str("sessionId")
	evs := ws.waitEnd(sid, 1, 90*time.Second)
	sum := checkRun(t, evs, 1)
	requireComplete(t, sum.completes[0], 0, true, false)
	result := evs[indexOf(evs, "tool_result")].Raw
	t.Logf("the CLI's probe: %s", result)
	require.Regexp(t, `UID=`+strconv.Itoa(int(uids[0]))+` GID=`+strconv.Itoa(int(uids[0]))+` HOME=`+aliceHome, result)
	require.Contains(t, result, "SERVICE=[0]")
	require.Contains(t, result, "ENVIRON=denied")
	require.Contains(t, result, "BOBHOME=denied")
	require.Contains(t, result, "REDIS=NOAUTH")
	fi, err := os.Stat(filepath.Join(aliceHome, ".claude"))
	require.NoError(t, err, "the CLI keeps its state in alice's home")
	require.Equal(t, uids[0], fi.Sys().(*syscall.Stat_t).Uid)
}

// TestUserProcessBound: with --user-max-procs a fork bomb in a user's
// terminal stops at the bound (the kernel refuses the account's forks past
// it), and another user's terminal goes on meanwhile.
func TestUserProcessBound(t *testing.T) {
	t.Parallel()
	// A uid range of its own: the bound counts every process of a uid.
	const first, last, bound = 47200, 47209, 40
	tc := newTenantCluster(t, fmt.Sprintf("AGENTGATE_USER_UIDS=%d-%d", first, last), fmt.Sprintf("AGENTGATE_USER_MAX_PROCS=%d", bound))
	// The bomb's processes outlive the shell that forked them: stopped
	// here, by pid, whatever happens to the test.
	t.Cleanup(func() {
		for _, pid := range pidsOfUIDs(first, last) {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	})
	sc := &shellCluster{cluster: tc.cluster, gw1: tc.gw, gw2: tc.gw, worker: tc.worker}
	init := func(shellID string) map[string]any {
		m := sc.plainInit(shellID)
		delete(m, "projectPath")
		return m
	}
	mallory := sc.dialShell(tc.gw, "mallory")
	mallory.send(init("mallory-1"))
	mallory.waitText(0, "$ ", 20*time.Second)
	mark := mallory.mark()
	// dash gives up at the first refused fork, where bash would retry
	// for half a minute; the sleeps let go of the pipe, or tail would wait
	// for them.
	mallory.typeLine(`sh -c 'i=0; while [ $i -lt 200 ]; do sleep 300 >/dev/null 2>&1 & i=$((i+1)); done; wait' 2>&1 | tail -n 1; echo "BO""MB=$?"`)
	mallory.waitText(mark, "BOMB=", 30*time.Second)
	out := mallory.text(mark)
	t.Logf("mallory's terminal:\n%s", out)
	require.Contains(t, out, "Cannot fork")

	fi, err := os.Stat(filepath.Join(tc.homes, "mallory"))
	require.NoError(t, err)
	uid := int(fi.Sys().(*syscall.Stat_t).Uid)
	n := len(pidsOfUIDs(uid, uid))
	t.Logf("mallory's account holds %d processes (bound %d)", n, bound)
	require.LessOrEqual(t, n, bound)
	require.Greater(t, n, bound/2, "the bomb reached the bound")

	bob := sc.dialShell(tc.gw, "bob")
	bob.send(init("bob-1"))
	bob.waitText(0, "$ ", 20*time.Second)
	mark = bob.mark()
	bob.typeLine(`echo "BOB=$((6*7))"`)
	bob.waitText(mark, "BOB=42", 10*time.Second)
}

// pidsOfUIDs lists the processes whose real uid is within [first, last].
func pidsOfUIDs(first, last int) []int {
	entries, _ := os.ReadDir("/proc")
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		status, err := os.ReadFile(filepath.Join("/proc", e.Name(), "status"))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(status), "\n") {
			if rest, ok := strings.CutPrefix(line, "Uid:"); ok {
				if f := strings.Fields(rest); len(f) > 0 {
					if uid, err := strconv.Atoi(f[0]); err == nil && uid >= first && uid <= last {
						pids = append(pids, pid)
					}
				}
				break
			}
		}
	}
	return pids
}

// envValue returns the value of name in env (the last one).
func envValue(env []string, name string) string {
	v := ""
	for _, kv := range env {
		if val, ok := strings.CutPrefix(kv, name+"="); ok {
			v = val
		}
	}
	return v
}

// reachableDir is a temporary folder every account can pass through (a
// test's own temporary folders are root's alone).
func reachableDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "agentgate-accounts-")
	require.NoError(t, err)
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	require.NoError(t, os.Chmod(dir, 0o711))
	return dir
}

// reachableBin returns bin, or a copy that every account can run when a
// folder above bin is closed to them.
func reachableBin(t *testing.T, bin string) string {
	t.Helper()
	real, err := filepath.EvalSymlinks(bin)
	require.NoError(t, err)
	open := true
	for dir := filepath.Dir(real); ; dir = filepath.Dir(dir) {
		fi, err := os.Stat(dir)
		if err != nil || fi.Mode().Perm()&0o001 == 0 {
			open = false
			break
		}
		if dir == "/" {
			break
		}
	}
	if open {
		return bin
	}
	dst := filepath.Join(reachableDir(t), filepath.Base(real))
	data, err := os.ReadFile(real)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(dst, data, 0o755))
	return dst
}

// TestUnrecordedConversationNotResumed: on a worker whose users share one
// account, a conversation id agentgate never recorded (one bob started in
// his terminal, seen in a broadcast) is answered as a missing conversation
// and no CLI starts; the user's terminal gets none of the service's
// variables either.
func TestUnrecordedConversationNotResumed(t *testing.T) {
	t.Parallel()
	sc := newShellCluster(t)
	alice := sc.dial(sc.gw1, "alice")
	alice.send(sc.command("continue bob's", "0d9e3c1a-5b7f-4c2e-9a41-6f1e2d3c4b5a", "r1"))
	sid := alice.waitReply("session-accepted", nil).str("sessionId")
	evs := alice.waitEnd(sid, 1, 30*time.Second)
	sum := checkRun(t, evs, 1)
	requireComplete(t, sum.completes[0], 1, false, false)
	require.Contains(t, evs[beforeEnd(evs)].Raw, "No conversation found with session ID: 0d9e3c1a-5b7f-4c2e-9a41-6f1e2d3c4b5a")
	require.Empty(t, sc.mock.Requests(), "no CLI asked the model anything")

	term := sc.dialShell(sc.gw1, "alice")
	term.send(sc.plainInit("env"))
	term.waitText(0, "bash-", 20*time.Second)
	mark := term.mark()
	term.typeLine(`echo "N=$(env | grep -c -e AGENTGATE -e redis://)" "S=[$AGENTGATE_JWT_SECRET]"`)
	term.waitText(mark, "N=0 S=[]", 10*time.Second)
}
