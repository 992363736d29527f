package workers

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"
)

// The variables that tag, in the environment of every process a worker
// starts (and of what those start, which inherit it), the run or the
// terminal generation it belongs to, beside the worker's owner variable
// (orphans.go). A daemon a tool starts (setsid, its descriptors on
// /dev/null or a log, its parent gone) is in no process group, session,
// tree or open file of its run that the kill finds; by its tag it is found
// when its run or terminal ends, and by the periodic sweep should it
// escape that. They are variables of their own, not a longer owner
// value: a worker of the version before takes the whole owner value for
// a worker id, and would kill a process whose value it does not know.
const (
	runTagEnv   = "AG_RUN_ID"
	shellTagEnv = "AG_TERMINAL_ID"
)

// runTag is the tag variable (NAME=VALUE) of a run. A run id is unique
// within its session only (two sessions accepted in one millisecond get
// the same), so the session names it too.
func runTag(sessionID, runID string) string { return runTagEnv + "=" + sessionID + "." + runID }

// shellTag is the tag variable of a terminal generation.
func shellTag(key string, gen int64) string {
	return shellTagEnv + "=" + key + "." + strconv.FormatInt(gen, 10)
}

// tagPrefixes are the starts of the tag variables, to find them in an
// environment.
var tagPrefixes = [][]byte{[]byte(runTagEnv + "="), []byte(shellTagEnv + "=")}

// tagSweepPasses bounds the SIGKILL passes of one sweep: a process forked
// while a pass read /proc is found by the next, and a tagged process that
// forks in a loop could keep a sweep going for ever.
const tagSweepPasses = 8

// tagSet holds the tags of the runs and terminal generations of a worker,
// from before their process starts until what they left was swept, and
// how many of them each uid has (a user's account, under Accounts). Its
// zero value is ready.
type tagSet struct {
	mu   sync.Mutex
	cond sync.Cond // on mu: a uid's clearing ended
	live map[string]int
	uids map[int]int
	// clearing holds the uids whose processes clearAccounts is killing:
	// no run or terminal of theirs starts meanwhile.
	clearing map[int]bool

	// swept batches the sweeps of ended tags, cleared the clearing of
	// accounts left with none.
	swept   batcher[string]
	cleared batcher[int]
}

// batcher merges requests that come while one is being served into one
// batch, served next: when many runs end together (a shutdown, a user's
// aborts), each would otherwise read every process's environment. Its
// zero value is ready.
type batcher[K comparable] struct {
	mu      sync.Mutex
	pending *batch[K]
	serving sync.Mutex // one batch at a time
}

type batch[K comparable] struct {
	keys map[K]bool
	done chan struct{}
}

// do adds k to the next batch, which serve serves, and returns once it
// was served. The serve of a batch is the serve of the call that made it.
func (b *batcher[K]) do(k K, serve func(map[K]bool)) {
	b.mu.Lock()
	next := b.pending
	if next == nil {
		next = &batch[K]{keys: map[K]bool{}, done: make(chan struct{})}
		b.pending = next
		go func() {
			b.serving.Lock()
			defer b.serving.Unlock()
			b.mu.Lock()
			b.pending = nil // later calls make the next batch
			b.mu.Unlock()
			serve(next.keys)
			close(next.done)
		}()
	}
	next.keys[k] = true
	b.mu.Unlock()
	<-next.done
}

// begin records that tag, of a process about to start as uid, is live. It
// waits while the uid's processes are being cleared (clearAccounts), which
// would take the new ones for leftovers.
func (ts *tagSet) begin(tag string, uid int) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.cond.L == nil {
		ts.cond.L = &ts.mu
	}
	for ts.clearing[uid] {
		ts.cond.Wait()
	}
	if ts.live == nil {
		ts.live, ts.uids = map[string]int{}, map[int]int{}
	}
	ts.live[tag]++
	ts.uids[uid]++
}

// end forgets tag (begun for uid) and reports whether uid has no tag left.
func (ts *tagSet) end(tag string, uid int) bool {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.live[tag]--; ts.live[tag] <= 0 {
		delete(ts.live, tag)
	}
	if ts.uids[uid]--; ts.uids[uid] <= 0 {
		delete(ts.uids, uid)
		return true
	}
	return false
}

// isLive reports whether tag is one of a run or terminal of this worker.
func (ts *tagSet) isLive(tag string) bool {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	return ts.live[tag] > 0
}

// beginTag records tag as live for a process about to start as uid.
func (w *Worker) beginTag(tag string, uid int) { w.tags.begin(tag, uid) }

// endTag kills what is left of the run or terminal generation of tag, its
// process (uid's) having ended, then forgets the tag. When it was the
// last of uid's under Accounts, every process of the account on this host
// goes too (clearAccounts): one that cleared its environment is found so.
func (w *Worker) endTag(tag string, uid int) {
	w.sweepTag(tag)
	if w.tags.end(tag, uid) && w.cfg.Accounts != nil {
		w.tags.cleared.do(uid, w.clearAccounts)
	}
}

// sweepTag kills this worker's processes tagged with tag, in one batch
// with the other tags ended meanwhile, and returns once they are gone.
func (w *Worker) sweepTag(tag string) {
	w.tags.swept.do(tag, func(tags map[string]bool) { w.killTagged(tags, killGrace) })
}

// killTagged ends this worker's processes tagged with one of tags as the
// leader of a run is ended: SIGTERM, up to grace for them to exit, then
// SIGKILL to every one still running or found since (tagSweepPasses).
// Nothing is read for a batch that finds none, the usual case, beyond one
// pass over /proc.
func (w *Worker) killTagged(tags map[string]bool, grace time.Duration) {
	owners := w.ownerVars()
	mine := func(env []byte) bool {
		owner, tag := ownerAndTag(env)
		return owners[string(owner)] && tags[string(tag)]
	}
	first := scanProcs(mine)
	if len(first) == 0 {
		return
	}
	for _, d := range first {
		_ = syscall.Kill(d.pid, syscall.SIGTERM)
	}
	for deadline := time.Now().Add(grace); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if !anyRunning(first) {
			break
		}
	}
	for _, d := range first {
		if d.running() {
			_ = syscall.Kill(d.pid, syscall.SIGKILL)
		}
	}
	for range tagSweepPasses {
		found := scanProcs(mine)
		if len(found) == 0 {
			return
		}
		for _, d := range found {
			_ = syscall.Kill(d.pid, syscall.SIGKILL)
		}
	}
}

// ownerVars are this worker's owner variables (NAME=SCOPE/ID), as they
// appear in an environment.
func (w *Worker) ownerVars() map[string]bool {
	return map[string]bool{w.ownerVar(runOwnerEnv): true, w.ownerVar(shellOwnerEnv): true}
}

// ownerAndTag returns the first owner variable and the first tag variable
// (NAME=VALUE) of a process's environment (NUL-separated), nil for none.
func ownerAndTag(env []byte) (owner, tag []byte) {
	for kv := range bytes.SplitSeq(env, []byte{0}) {
		if owner == nil && (bytes.HasPrefix(kv, []byte(runOwnerEnv+"=")) || bytes.HasPrefix(kv, []byte(shellOwnerEnv+"="))) {
			owner = kv
		}
		if tag == nil {
			for _, p := range tagPrefixes {
				if bytes.HasPrefix(kv, p) {
					tag = kv
					break
				}
			}
		}
		if owner != nil && tag != nil {
			break
		}
	}
	return owner, tag
}

// scanProcs lists the running processes whose environment match accepts.
// A process whose environment cannot be read (gone, or another uid's
// without CAP_SYS_PTRACE) is passed over.
func scanProcs(match func(env []byte) bool) []proc {
	var out []proc
	for _, pid := range processes() {
		env, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "environ"))
		if err != nil || !match(env) {
			continue
		}
		if _, start, ok := readStat(pid); ok {
			out = append(out, proc{pid, start})
		}
	}
	return out
}

// anyRunning reports whether a process of ps still runs.
func anyRunning(ps []proc) bool {
	for _, d := range ps {
		if d.running() {
			return true
		}
	}
	return false
}

// sweepStaleTags kills, at once, this worker's processes tagged with a run
// or terminal generation it no longer has: what escaped its end's sweep
// (forked as the sweep read /proc). The tags are live from before their
// process starts until after that sweep, so a process starting is never
// taken for one left over.
func (w *Worker) sweepStaleTags() {
	owners := w.ownerVars()
	for _, d := range scanProcs(func(env []byte) bool {
		owner, tag := ownerAndTag(env)
		return owners[string(owner)] && tag != nil && !w.tags.isLive(string(tag))
	}) {
		w.log.Info("killing a process of a run or terminal that ended", "pid", d.pid)
		_ = syscall.Kill(d.pid, syscall.SIGKILL)
	}
}

// clearAccounts kills every process of the accounts of uids (all of the
// Accounts range when nil) that have no run or terminal on this worker:
// the range is the users' alone, so such a process is one a run or a
// terminal of theirs left, whatever its environment says (a daemon that
// cleared it, `env -i`). A uid none of whose processes is tagged by
// another worker, that is: two workers on one host (in one PID namespace)
// hand a user the same uid, and a process of the other's is left alone,
// with every other process of that uid. A uid being cleared starts no run
// or terminal until it is done (tagSet.begin).
func (w *Worker) clearAccounts(uids map[int]bool) {
	a := w.cfg.Accounts
	if a == nil {
		return
	}
	ts := &w.tags
	marked := map[int]bool{}     // being cleared here
	passedOver := map[int]bool{} // live here, or another worker's
	defer func() {
		ts.mu.Lock()
		for uid := range marked {
			delete(ts.clearing, uid)
		}
		if ts.cond.L != nil {
			ts.cond.Broadcast()
		}
		ts.mu.Unlock()
	}()
	// mark decides, the first time it meets uid, whether to clear it.
	mark := func(uid int) bool {
		if marked[uid] {
			return true
		}
		if passedOver[uid] || uid < a.FirstUID || uid > a.LastUID || (uids != nil && !uids[uid]) {
			return false
		}
		ts.mu.Lock()
		defer ts.mu.Unlock()
		if ts.uids[uid] > 0 || ts.clearing[uid] {
			passedOver[uid] = true
			return false
		}
		if ts.clearing == nil {
			ts.clearing = map[int]bool{}
		}
		ts.clearing[uid], marked[uid] = true, true
		return true
	}
	owners := w.ownerVars()
	for range tagSweepPasses {
		victims := map[int][]proc{}
		for _, pid := range processes() {
			uid, ok := realUID(pid)
			if !ok || !mark(uid) {
				continue
			}
			dir := filepath.Join("/proc", strconv.Itoa(pid))
			// Unreadable (no CAP_SYS_PTRACE): taken for a leftover.
			if env, err := os.ReadFile(filepath.Join(dir, "environ")); err == nil {
				if owner, _ := ownerAndTag(env); owner != nil && !owners[string(owner)] {
					passedOver[uid] = true
					continue
				}
			}
			if _, start, ok := readStat(pid); ok {
				victims[uid] = append(victims[uid], proc{pid, start})
			}
		}
		killed := 0
		for uid, ps := range victims {
			if passedOver[uid] {
				continue
			}
			w.log.Info("killing the processes of an account with no run or terminal left on this worker", "uid", uid, "processes", len(ps))
			for _, d := range ps {
				_ = syscall.Kill(d.pid, syscall.SIGKILL)
				killed++
			}
		}
		if killed == 0 {
			return
		}
	}
}

// realUID reads a process's real uid from /proc/PID/status: the owner of
// /proc/PID is root for a process that made itself not dumpable.
func realUID(pid int) (int, bool) {
	b, err := os.ReadFile(filepath.Join("/proc", strconv.Itoa(pid), "status"))
	if err != nil {
		return 0, false
	}
	_, rest, ok := bytes.Cut(b, []byte("\nUid:"))
	if !ok {
		return 0, false
	}
	f := bytes.Fields(rest)
	if len(f) == 0 {
		return 0, false
	}
	uid, err := strconv.Atoi(string(f[0]))
	return uid, err == nil
}
