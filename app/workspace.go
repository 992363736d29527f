package app

import (
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
)

// Workspaces are the roots a project path must resolve under.
type Workspaces struct {
	Roots []string
}

// ParseWorkspaces splits a colon-separated list of roots, dropping empties.
func ParseWorkspaces(list string) Workspaces {
	var w Workspaces
	for _, r := range strings.Split(list, ":") {
		if r = strings.TrimSpace(r); r != "" {
			w.Roots = append(w.Roots, filepath.Clean(r))
		}
	}
	return w
}

// FS opens the directories Resolve walks: workspacefs.FS on this host
// (file descriptors), passed in to keep this package free of I/O.
type FS interface {
	// OpenRoot opens the workspace root at path, a clean absolute path, and
	// returns it with its real path. It fails for a root that is missing or
	// not a directory, and for one whose path someone other than root or
	// this process could redirect (see workspacefs.FS).
	OpenRoot(path string) (Dir, string, error)
}

// Dir is an open directory: its names are looked up in it, whatever has
// since become of the path it was opened by, so that a folder swapped for
// a symlink while Resolve walks cannot make it look elsewhere.
type Dir interface {
	// Lstat returns the mode of name in the directory, not following a link.
	Lstat(name string) (fs.FileMode, error)
	// Readlink returns the target of the symlink name in the directory.
	Readlink(name string) (string, error)
	// Enter opens the directory name in the directory; it fails when name
	// is anything else, a symlink included.
	Enter(name string) (Dir, error)
	Close() error
}

// MaxEchoedPath bounds the bytes of a project path an error quotes.
const MaxEchoedPath = 64

// maxLinkHops bounds the symlinks one Resolve follows (a loop ends there).
const maxLinkHops = 40

// maxWalkSteps bounds the components one Resolve looks at, links' targets
// included. Each link starts the walk again from its root: 40 links in a
// folder 1,900 levels deep made one request about 78,000 Lstat calls on
// 4 KB paths, seconds of a gateway's CPU, 50 times a second per user.
// 256 steps is any real project's depth with a few links on the way.
const maxWalkSteps = 256

// Resolve returns the real path of the directory p names if p lies under a
// root, as written (under a root or under its real path), and stays under
// one when its symlinks are followed.
//
// A path that does not exist, one that is not a directory and one outside
// the workspaces get the same error: users must not learn which files
// exist elsewhere on the host. That holds inside a workspace too, where a
// symlink (dangling or not) may point outside. So Resolve looks at nothing
// outside the roots: a symlink's target is joined to its folder and
// cleaned before it is looked at, and one that leaves every root fails
// there. (filepath.EvalSymlinks looks at each component of a target before
// it applies a "..": a link to OTHER/NAME/../../mine told a user whether
// OTHER/NAME exists, in a folder the gateway, not the user, may read.) A
// target such as link/../x is thus read as x, where the kernel would first
// follow link. And it walks open directories, not paths: a user who swaps
// a folder on the way for a link (to another user's home) between two
// looks does not get the second one answered from there.
//
// The path returned was a directory, without links, when it was walked;
// one who may change it can make it something else since.
func (w Workspaces) Resolve(p string, fsys FS) (string, error) {
	// The errors quote a clip of p: a client is shown them, and its path
	// (%q escapes a U+0085 to 6 bytes) must not make them grow with it.
	if p == "" || !filepath.IsAbs(p) || strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("%w: %q is not an absolute path", ErrInvalidPath, Clip(p, MaxEchoedPath))
	}
	unknown := fmt.Errorf("%w: %q does not exist or is outside the workspaces", ErrInvalidPath, Clip(p, MaxEchoedPath))
	p = filepath.Clean(p)
	var roots []root
	defer func() {
		for _, r := range roots {
			r.dir.Close()
		}
	}()
	start := ""
	for _, path := range w.Roots {
		if !filepath.IsAbs(path) {
			continue
		}
		dir, real, err := fsys.OpenRoot(path)
		if err != nil {
			continue // unusable, as a missing root
		}
		roots = append(roots, root{real, dir})
		if start != "" {
			continue
		}
		if within(path, p) {
			rel, _ := filepath.Rel(path, p)
			start = filepath.Join(real, rel)
		} else if within(real, p) {
			start = p
		}
	}
	if start == "" {
		return "", unknown
	}
	dir, real, ok := walk(start, roots)
	if !ok {
		return "", unknown
	}
	if dir != nil {
		dir.Close()
	}
	return real, nil
}

// OpenFrom opens the directory p, a clean absolute path, leads to from
// top, the directory "/", following its links as Resolve does, wherever
// they point, and returns it with its real path. It is how an FS opens a
// root: workspacefs.FS walks from a "/" whose directories refuse to be
// looked in unless they are trusted. It takes over top: the result, which
// may be top, is the caller's to close.
func OpenFrom(top Dir, p string) (Dir, string, error) {
	dir, real, ok := walk(p, []root{{"/", top}})
	if !ok {
		top.Close()
		return nil, "", fmt.Errorf("%w: %q does not exist or is not a directory", ErrInvalidPath, Clip(p, MaxEchoedPath))
	}
	if dir == nil {
		return top, real, nil
	}
	top.Close()
	return dir, real, nil
}

// root is a workspace root as Resolve walks it: its real path and its open
// directory.
type root struct {
	path string
	dir  Dir
}

// walk follows the symlinks of p, a clean path under one of roots, one
// component at a time from that root's directory, and returns the
// directory it leads to (nil when that is a root's own, which stays the
// roots' owner's to close) and its real path; false when a component is
// missing or not a directory, or a link leads out of every root.
func walk(p string, roots []root) (Dir, string, bool) {
	r := rootOf(roots, p)
	if r == nil {
		return nil, "", false
	}
	done, rest := r.path, components(r.path, p)
	cur, mine := r.dir, false // mine: cur is walk's to close, not a root's
	release := func() {
		if mine {
			cur.Close()
		}
	}
	for hops, steps := 0, 0; len(rest) > 0; {
		if steps++; steps > maxWalkSteps {
			release()
			return nil, "", false
		}
		name := rest[0]
		rest = rest[1:]
		mode, err := cur.Lstat(name)
		if err != nil {
			release()
			return nil, "", false
		}
		if mode.IsDir() {
			// Entered without following a link: one swapped in since
			// fails here rather than lead elsewhere.
			next, err := cur.Enter(name)
			release()
			if err != nil {
				return nil, "", false
			}
			cur, mine, done = next, true, filepath.Join(done, name)
			continue
		}
		if mode&fs.ModeSymlink == 0 || hops >= maxLinkHops {
			release() // a file is no folder to go on in or end at
			return nil, "", false
		}
		hops++
		target, err := cur.Readlink(name)
		release()
		if err != nil || target == "" || strings.ContainsRune(target, 0) {
			return nil, "", false
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(done, target)
		}
		target = filepath.Clean(target)
		if r = rootOf(roots, target); r == nil {
			return nil, "", false
		}
		cur, mine = r.dir, false
		done, rest = r.path, append(components(r.path, target), rest...)
	}
	if !mine {
		return nil, done, true
	}
	return cur, done, true
}

// rootOf returns the root of roots that p lies under, or nil.
func rootOf(roots []root, p string) *root {
	for i := range roots {
		if within(roots[i].path, p) {
			return &roots[i]
		}
	}
	return nil
}

// components splits p, under root, into the names that lead to it from root.
func components(root, p string) []string {
	rel, _ := filepath.Rel(root, p)
	if rel == "." {
		return nil
	}
	return strings.Split(rel, string(filepath.Separator))
}

func within(root, p string) bool {
	if root == p {
		return true
	}
	rel, err := filepath.Rel(root, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../") && !filepath.IsAbs(rel)
}

// UserPlaceholder in a workspace root stands for the user's name, so that
// one root such as /srv/agentgate/home/{user} gives every user a folder of
// their own (see For).
const UserPlaceholder = "{user}"

// For returns the roots as they apply to user: UserPlaceholder replaced by
// the name. A name that could leave the root ("." or ".." or one holding a
// separator) drops the roots that hold the placeholder.
func (w Workspaces) For(user string) Workspaces {
	safe := user != "" && user != "." && user != ".." && !strings.ContainsAny(user, "/\x00")
	out := Workspaces{Roots: make([]string, 0, len(w.Roots))}
	for _, r := range w.Roots {
		if !strings.Contains(r, UserPlaceholder) {
			out.Roots = append(out.Roots, r)
		} else if safe {
			out.Roots = append(out.Roots, filepath.Clean(strings.ReplaceAll(r, UserPlaceholder, user)))
		}
	}
	return out
}

// PerUser reports whether some root is a per-user root (holds UserPlaceholder).
func (w Workspaces) PerUser() bool {
	for _, r := range w.Roots {
		if strings.Contains(r, UserPlaceholder) {
			return true
		}
	}
	return false
}
