package workers

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
)

// Accounts runs each user's provider CLIs and terminals under an OS account
// of their own, with a home of their own: a user's CLI state (~/.claude,
// ~/.codex, ~/.gemini, ~/.cursor), conversations and files are theirs alone,
// and nothing of the worker's (its environment, its /proc entries, files
// only it may read) is open to them. The worker needs root to switch.
type Accounts struct {
	// FirstUID and LastUID bound the uids handed to users, in the order
	// users first run something; a user's gid is their uid.
	FirstUID, LastUID int
	// Homes holds one home per user, Homes/NAME, mode 0700, owned by the
	// user's uid. It is created (mode 0711, so no one can list it) when
	// missing.
	Homes string
	// MaxProcs bounds the processes and threads of one account on the
	// worker's host (RLIMIT_NPROC), so that a fork bomb in a terminal stops
	// there; zero means no bound.
	MaxProcs int
}

// Validate checks the range and the homes folder.
func (a *Accounts) Validate() error {
	if a.FirstUID < 1000 || a.LastUID < a.FirstUID || a.LastUID > 1<<31-2 {
		return fmt.Errorf("workers: account uids %d-%d: want a range from 1000 up that no account of this host uses, such as 20000-29999", a.FirstUID, a.LastUID)
	}
	if err := hostAccountsIn(a.FirstUID, a.LastUID); err != nil {
		return err
	}
	if !filepath.IsAbs(a.Homes) {
		return fmt.Errorf("workers: account homes %q is not an absolute path", a.Homes)
	}
	if os.Geteuid() != 0 {
		return errors.New("workers: running users' processes under their own accounts needs a worker running as root")
	}
	return nil
}

// hostAccountFiles are the host's own accounts and groups, which users'
// uids and gids must not be.
var hostAccountFiles = []string{"/etc/passwd", "/etc/group"}

// hostAccountsIn refuses a range that holds a uid or gid of the host's own
// accounts or groups: the first user would be handed that account, its
// files and whatever it may do (on a cloud image uid 1000 is often a user
// with sudo). A file that cannot be read (a scratch image) says nothing.
func hostAccountsIn(first, last int) error {
	for _, path := range hostAccountFiles {
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		for line := range strings.Lines(string(data)) {
			fields := strings.Split(strings.TrimSpace(line), ":")
			if len(fields) < 3 || strings.HasPrefix(fields[0], "#") {
				continue
			}
			ids := fields[2:3]
			if len(fields) >= 4 && strings.HasSuffix(path, "passwd") {
				ids = fields[2:4] // the uid and the primary gid
			}
			for _, f := range ids {
				if id, err := strconv.Atoi(f); err == nil && id >= first && id <= last {
					return fmt.Errorf("workers: account uids %d-%d: %s has %s of this host (id %d); give a range no account of this host uses, such as 20000-29999", first, last, path, fields[0], id)
				}
			}
		}
	}
	return nil
}

// bound makes MaxProcs the worker process's own RLIMIT_NPROC, soft and
// hard, which every process it starts inherits and none can raise. The
// kernel holds each account to it, counting the account's processes and
// threads together, and refuses a fork past it; the worker itself, root,
// is not held to it. It is set here rather than on each process started:
// a process may lower its own limits, but setting another's (prlimit on a
// process of another uid) needs CAP_SYS_RESOURCE, which containers rarely
// grant.
func (a *Accounts) bound() error {
	if a.MaxProcs <= 0 {
		return nil
	}
	n := uint64(a.MaxProcs)
	if err := unix.Setrlimit(unix.RLIMIT_NPROC, &unix.Rlimit{Cur: n, Max: n}); err != nil {
		return fmt.Errorf("workers: bound the processes of each account to %d: %w", n, err)
	}
	return nil
}

// account is the OS identity one user's processes run under; nil means the
// worker's own.
type account struct {
	name string
	uid  int
	home string
}

// credential is what SysProcAttr needs to start a process as the account,
// with no supplementary group of the worker's.
func (a *account) credential() *syscall.Credential {
	if a == nil {
		return nil
	}
	return &syscall.Credential{Uid: uint32(a.uid), Gid: uint32(a.uid), Groups: []uint32{}}
}

// env is env with the account's identity and home set: its HOME, USER and
// LOGNAME, a shell, and no folder of the worker's (sharedFolderEnv).
func (a *account) env(env []string) []string {
	if a == nil {
		return env
	}
	out := make([]string, 0, len(env)+4)
	for _, kv := range env {
		if name, _, _ := strings.Cut(kv, "="); !nameMatches(name, sharedFolderEnv) {
			out = append(out, kv)
		}
	}
	return withVars(out, "HOME="+a.home, "USER="+a.name, "LOGNAME="+a.name, "SHELL=/bin/bash")
}

// sharedFolderEnv names the variables that point a program at a folder for
// its state or temporary files (CODEX_HOME, CLAUDE_CONFIG_DIR,
// GEMINI_CLI_HOME, XDG_*, TMPDIR, CLAUDE_CODE_TMPDIR):
// set on the worker, every user's CLI would keep its logins and
// conversations in that one folder, readable by every other user. A
// process of a user's account goes without them, and its CLI uses the
// defaults under the user's own home. SSL_CERT_DIR (read-only, shared on
// purpose) is not among them.
var sharedFolderEnv = []string{"TMPDIR", "*_TMPDIR", "*_HOME", "*_CONFIG_DIR", "*_CONFIG_HOME", "*_DATA_DIR", "*_STATE_DIR", "*_CACHE_DIR", "XDG_*"}

// chown gives the account files the worker made for it (a run's images).
func (a *account) chown(paths ...string) error {
	if a == nil {
		return nil
	}
	for _, p := range paths {
		if err := os.Lchown(p, a.uid, a.uid); err != nil {
			return fmt.Errorf("hand %s to the user's account: %w", p, err)
		}
	}
	return nil
}

// accountSet maps users to accounts, once per user and worker.
type accountSet struct {
	cfg *Accounts // nil: every process runs as the worker
	st  *store.Store

	mu sync.Mutex
	m  map[string]*account
}

// lookup returns the account of user, creating their home when needed; nil
// when the worker runs every process as itself.
func (as *accountSet) lookup(ctx context.Context, user string) (*account, error) {
	if as.cfg == nil {
		return nil, nil
	}
	if !app.ValidUserName(user) || strings.HasPrefix(user, ".") {
		return nil, fmt.Errorf("no account for user %q", app.Clip(user, 64))
	}
	as.mu.Lock()
	a := as.m[user]
	as.mu.Unlock()
	if a != nil {
		// Made again if an operator removed it meanwhile.
		return a, ensureHome(as.cfg.Homes, a)
	}
	uid, err := as.st.AccountUID(ctx, user, as.cfg.FirstUID, as.cfg.LastUID)
	if err != nil {
		return nil, err
	}
	a = &account{name: user, uid: uid, home: filepath.Join(as.cfg.Homes, user)}
	if err := checkHomeOwners(as.cfg.Homes, a); err != nil {
		return nil, err
	}
	if err := ensureHome(as.cfg.Homes, a); err != nil {
		return nil, err
	}
	as.mu.Lock()
	if as.m == nil {
		as.m = map[string]*account{}
	}
	as.m[user] = a
	as.mu.Unlock()
	return a, nil
}

// ensureHome makes the account's home, mode 0700 and owned by it, under
// homes (mode 0711: users reach their own home without listing the others).
// A home owned by another uid is refused rather than taken over.
func ensureHome(homes string, a *account) error {
	if err := os.MkdirAll(homes, 0o711); err != nil {
		return fmt.Errorf("make the homes folder: %w", err)
	}
	if err := checkHomes(homes); err != nil {
		return err
	}
	switch err := os.Mkdir(a.home, 0o700); {
	case err == nil:
		if err := os.Chown(a.home, a.uid, a.uid); err != nil {
			return fmt.Errorf("hand the home of %s to its account: %w", a.name, err)
		}
		return nil
	case !errors.Is(err, os.ErrExist):
		return fmt.Errorf("make the home of %s: %w", a.name, err)
	}
	fi, err := os.Lstat(a.home)
	if err != nil {
		return fmt.Errorf("read the home of %s: %w", a.name, err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok {
		return fmt.Errorf("the home of %s is not a folder", a.name)
	}
	if int(st.Uid) != a.uid {
		return fmt.Errorf("the home of %s belongs to uid %d, not to its account %d", a.name, st.Uid, a.uid)
	}
	return nil
}

// checkHomes sets the homes folder to 0711 when the worker owns it:
// MkdirAll leaves the mode of a folder that exists alone, and an image's
// `mkdir -p` or a fresh volume gives 0755 (every user's terminal lists the
// others' names) or 0777 (a user can make another user's home, or a link
// in its place, before the worker does). A folder of another owner that
// other accounts can write to is refused, as the worker cannot fix it.
func checkHomes(homes string) error {
	fi, err := os.Stat(homes)
	if err != nil {
		return fmt.Errorf("read the homes folder: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !fi.IsDir() || !ok {
		return fmt.Errorf("the homes folder %s is not a folder", homes)
	}
	mode := fi.Mode() & (os.ModePerm | os.ModeSticky | os.ModeSetgid | os.ModeSetuid)
	if mode == 0o711 {
		return nil
	}
	// The worker runs as root (it sets users' uids), which may set the
	// mode of a folder whatever its owner (an admin's bind mount).
	err = os.Chmod(homes, 0o711)
	if err != nil && mode.Perm()&0o022 != 0 {
		return fmt.Errorf("the homes folder %s (mode %04o, uid %d) can be written by other accounts, so a user could make another user's home, and setting it to 0711 failed (%v): make it mode 0711",
			homes, mode.Perm(), st.Uid, err)
	}
	return nil
}

// checkHomeOwners refuses an account whose uid owns another user's home:
// the uid map lives in Redis, and a store that lost it would otherwise hand
// a new user the files of an old one.
func checkHomeOwners(homes string, a *account) error {
	entries, err := os.ReadDir(homes)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("read the homes folder: %w", err)
	}
	for _, e := range entries {
		if e.Name() == a.name {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue
		}
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) == a.uid {
			return fmt.Errorf("uid %d of %s already owns the home of %s (was the account map in Redis lost?)", a.uid, a.name, e.Name())
		}
	}
	return nil
}
