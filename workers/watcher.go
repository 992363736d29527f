package workers

import (
	"context"
	"encoding/json"
	"io/fs"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/agentgate/agentgate/app"
)

// Bounds of one scan of the providers' session folders, so that a huge or
// deep home folder costs a bounded amount per poll.
const (
	watchDepth    = 6
	watchMaxFiles = 100_000
)

// watchRoot is one provider's session folder and the files in it that
// hold sessions.
type watchRoot struct {
	provider app.Provider
	dir      string
	exts     []string
}

// watchRoots are the folders the providers keep their sessions in, under
// the HOME (and CLAUDE_CONFIG_DIR) the provider processes get.
func watchRoots(env []string) []watchRoot {
	home := lookupEnv(env, "HOME")
	claude := lookupEnv(env, "CLAUDE_CONFIG_DIR")
	if claude == "" && home != "" {
		claude = filepath.Join(home, ".claude")
	}
	var roots []watchRoot
	if claude != "" {
		roots = append(roots, watchRoot{app.Claude, filepath.Join(claude, "projects"), []string{".jsonl"}})
	}
	if home != "" {
		roots = append(roots,
			watchRoot{app.Cursor, filepath.Join(home, ".cursor", "projects"), []string{".json", ".jsonl", ".db"}},
			watchRoot{app.Codex, filepath.Join(home, ".codex", "sessions"), []string{".jsonl"}},
			watchRoot{app.Gemini, filepath.Join(home, ".gemini", "tmp"), []string{".json", ".jsonl"}},
		)
	}
	return roots
}

// fileState is what a poll compares: a file changed if either moved.
type fileState struct {
	size    int64
	modTime int64
}

// watchedFile is a session file found by a scan.
type watchedFile struct {
	root int // index in the watcher's roots
	fileState
}

// projectsWatcher polls the providers' session folders and, when session
// files of conversations agentgate runs are added or change, tells their
// owner's chat sockets with sessions_updated. Polling, like the reference,
// works on every file system and needs no watch per folder; a poll of a few
// thousand files costs milliseconds.
//
// It sends neither projects_updated nor loading_progress: Claude Code UI's
// frontend replaces its whole project list with the one projects_updated
// carries (useProjectsState.ts), and agentgate has no project list of that
// kind (ids from that service's database, sessions, display names). Those
// come from a projects service beside agentgate (POST /api/broadcast). Nor
// does it name folders or conversations it cannot attribute: workers whose
// users share one account share one HOME, and its folder list is everyone's.
type projectsWatcher struct {
	w        *Worker
	roots    []watchRoot
	interval time.Duration
	files    map[string]watchedFile
}

func newProjectsWatcher(w *Worker, env []string, interval time.Duration) *projectsWatcher {
	return &projectsWatcher{w: w, roots: watchRoots(env), interval: interval}
}

// run polls until ctx ends. Runs in its own goroutine.
func (pw *projectsWatcher) run(ctx context.Context) {
	pw.files = pw.scan()
	t := time.NewTicker(pw.interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		files := pw.scan()
		changes := diffFiles(pw.files, files, pw.roots)
		pw.files = files
		if len(changes) > 0 {
			pw.publishChanges(ctx, changes)
		}
	}
}

// scan lists the session files under every root.
func (pw *projectsWatcher) scan() map[string]watchedFile {
	files := map[string]watchedFile{}
	for i, root := range pw.roots {
		_ = filepath.WalkDir(root.dir, func(p string, d fs.DirEntry, err error) error {
			if err != nil {
				return nil // a folder that vanished or cannot be read is skipped
			}
			rel, _ := filepath.Rel(root.dir, p)
			depth := strings.Count(rel, string(filepath.Separator))
			if d.IsDir() {
				if depth >= watchDepth {
					return filepath.SkipDir
				}
				return nil
			}
			if len(files) >= watchMaxFiles || !slices.Contains(root.exts, filepath.Ext(p)) || rel == "." {
				return nil
			}
			info, err := d.Info()
			if err != nil {
				return nil
			}
			files[p] = watchedFile{root: i, fileState: fileState{info.Size(), info.ModTime().UnixMilli()}}
			return nil
		})
	}
	return files
}

// change is one session file added or changed between two scans.
type change struct {
	typ       string // "add" or "change", as the reference names them
	provider  app.Provider
	sessionID string
}

func diffFiles(before, after map[string]watchedFile, roots []watchRoot) []change {
	var out []change
	for p, f := range after {
		old, seen := before[p]
		if seen && old.fileState == f.fileState {
			continue
		}
		typ := "change"
		if !seen {
			typ = "add"
		}
		out = append(out, change{typ: typ, provider: roots[f.root].provider, sessionID: sessionIDOf(p)})
	}
	slices.SortFunc(out, func(a, b change) int { return strings.Compare(a.sessionID, b.sessionID) })
	return out
}

// sessionIDOf names a session by its file: Claude's files are named by the
// session id, Codex's rollouts end with the thread id.
func sessionIDOf(p string) string {
	name := strings.TrimSuffix(filepath.Base(p), filepath.Ext(p))
	if id := trailingUUID().FindString(name); id != "" {
		return id
	}
	return name
}

// trailingUUID finds the session UUID at the end of a file name, compiled
// on first use (not at start-up).
var trailingUUID = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$`)
})

// publishChanges tells each owner of a changed conversation which of their
// sessions changed, with agentgate's session ids. A file of a conversation
// agentgate did not run (or no longer knows) is not announced: nothing says
// whose it is.
func (pw *projectsWatcher) publishChanges(ctx context.Context, changes []change) {
	byOwner := map[string][]change{}
	var owners []string
	for _, c := range changes {
		owner, id, ok := pw.ownerOf(ctx, c.provider, c.sessionID)
		if !ok {
			continue
		}
		c.sessionID = id
		if byOwner[owner] == nil {
			owners = append(owners, owner)
		}
		byOwner[owner] = append(byOwner[owner], c)
	}
	for _, owner := range owners {
		pw.publish(ctx, owner, sessionsUpdated(byOwner[owner]))
	}
}

// ownerOf finds the agentgate session a provider's conversation id belongs
// to: a gateway-minted Claude session uses its own id, a resumed or other
// provider's conversation is indexed by its provider id.
func (pw *projectsWatcher) ownerOf(ctx context.Context, p app.Provider, id string) (owner, sessionID string, ok bool) {
	if !app.ValidSessionID(id) {
		return "", "", false
	}
	rctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	if sess, err := pw.w.st.Session(rctx, id); err == nil && sess.Provider == p {
		return sess.Owner, sess.ID, true
	}
	sid, err := pw.w.st.SessionByProviderID(rctx, p, id)
	if err != nil {
		return "", "", false
	}
	sess, err := pw.w.st.Session(rctx, sid)
	if err != nil {
		return "", "", false
	}
	return sess.Owner, sess.ID, true
}

// sessionsUpdated is the frame that tells a user their sessions changed on
// disk, with the reference's change fields: the first change in the
// singular ones, every change in the plural ones.
func sessionsUpdated(changes []change) map[string]any {
	types, ids, providers := []string{}, []string{}, []string{}
	for _, c := range changes {
		types = append(types, c.typ)
		ids = append(ids, c.sessionID)
		if !slices.Contains(providers, string(c.provider)) {
			providers = append(providers, string(c.provider))
		}
	}
	return map[string]any{
		"type":              "sessions_updated",
		"timestamp":         time.Now().UTC().Format(time.RFC3339Nano),
		"changeType":        changes[0].typ,
		"updatedSessionId":  changes[0].sessionID,
		"watchProvider":     string(changes[0].provider),
		"changeTypes":       types,
		"updatedSessionIds": ids,
		"watchProviders":    providers,
	}
}

func (pw *projectsWatcher) publish(ctx context.Context, user string, frame map[string]any) {
	b, err := json.Marshal(frame)
	if err != nil {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	if err := pw.w.st.Broadcast(wctx, user, b); err != nil && ctx.Err() == nil {
		pw.w.log.Warn("publish sessions_updated", "user", user, "err", err)
	}
}
