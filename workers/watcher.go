package workers

import (
	"cmp"
	"context"
	"encoding/json"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/agentgate/agentgate/app"
)

// Bounds of one scan of the providers' session folders, so that a huge or
// deep home folder costs a bounded amount per poll.
const (
	watchDepth    = 6
	watchMaxFiles = 100_000
	maxProjects   = 500
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
	root    int // index in the watcher's roots
	project string
	fileState
}

// projectsWatcher polls the providers' session folders and publishes
// projects_updated to every chat socket when session files are added or
// change; while it builds its first list it publishes loading_progress.
// Polling, like the reference, works on every file system and needs no
// watch per folder; a poll of a few thousand files costs milliseconds.
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
	pw.publishLoading(ctx)
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
			pw.publish(ctx, projectsUpdated(changes, projectList(files, pw.roots)))
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
			project, _, _ := strings.Cut(rel, string(filepath.Separator))
			if project == rel {
				project = "" // a file at the root belongs to no project
			}
			files[p] = watchedFile{root: i, project: project, fileState: fileState{info.Size(), info.ModTime().UnixMilli()}}
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

// sessionIDOf names a session by its file: Claude's files are named by
// the session id.
func sessionIDOf(p string) string {
	return strings.TrimSuffix(filepath.Base(p), filepath.Ext(p))
}

// project is one entry of projects_updated's list.
type project struct {
	Name         string       `json:"name"`
	Provider     app.Provider `json:"provider"`
	SessionCount int          `json:"sessionCount"`
	LastActivity int64        `json:"lastActivity"`
}

// projectList lists the projects of a scan, most recently active first.
func projectList(files map[string]watchedFile, roots []watchRoot) []project {
	byKey := map[string]*project{}
	for _, f := range files {
		if f.project == "" {
			continue
		}
		key := string(roots[f.root].provider) + "/" + f.project
		p := byKey[key]
		if p == nil {
			p = &project{Name: f.project, Provider: roots[f.root].provider}
			byKey[key] = p
		}
		p.SessionCount++
		p.LastActivity = max(p.LastActivity, f.modTime)
	}
	out := make([]project, 0, len(byKey))
	for _, p := range byKey {
		out = append(out, *p)
	}
	slices.SortFunc(out, func(a, b project) int {
		if c := cmp.Compare(b.LastActivity, a.LastActivity); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	if len(out) > maxProjects {
		out = out[:maxProjects]
	}
	return out
}

// projectsUpdated is the projects_updated frame (reference §8): the first
// change in the singular fields, every change in the plural ones.
func projectsUpdated(changes []change, projects []project) map[string]any {
	types, ids, providers := []string{}, []string{}, []string{}
	for _, c := range changes {
		types = append(types, c.typ)
		ids = append(ids, c.sessionID)
		if !slices.Contains(providers, string(c.provider)) {
			providers = append(providers, string(c.provider))
		}
	}
	return map[string]any{
		"type":              "projects_updated",
		"projects":          projects,
		"timestamp":         time.Now().UTC().Format(time.RFC3339Nano),
		"changeType":        changes[0].typ,
		"updatedSessionId":  changes[0].sessionID,
		"watchProvider":     string(changes[0].provider),
		"changeTypes":       types,
		"updatedSessionIds": ids,
		"watchProviders":    providers,
		"batched":           true,
	}
}

// loadingSteps bounds the loading_progress frames of one list.
const loadingSteps = 20

// publishLoading announces the first list as it is taken in, then its
// completion, as the reference does while it builds its list; a long list
// is announced in at most loadingSteps steps.
func (pw *projectsWatcher) publishLoading(ctx context.Context) {
	projects := projectList(pw.files, pw.roots)
	step := max(1, (len(projects)+loadingSteps-1)/loadingSteps)
	for i := step - 1; i < len(projects); i += step {
		pw.publish(ctx, map[string]any{"type": "loading_progress", "phase": "loading",
			"current": i + 1, "total": len(projects), "currentProject": projects[i].Name})
	}
	pw.publish(ctx, map[string]any{"type": "loading_progress", "phase": "complete",
		"current": len(projects), "total": len(projects)})
}

func (pw *projectsWatcher) publish(ctx context.Context, frame map[string]any) {
	b, err := json.Marshal(frame)
	if err != nil {
		return
	}
	wctx, cancel := context.WithTimeout(ctx, writeTimeout)
	defer cancel()
	if err := pw.w.st.Broadcast(wctx, b); err != nil && ctx.Err() == nil {
		pw.w.log.Warn("publish projects", "err", err)
	}
}
