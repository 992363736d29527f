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

// Links reads the file system for Resolve: os.Lstat, os.Readlink and
// filepath.EvalSymlinks in production, passed in to keep this package free
// of I/O.
type Links struct {
	Lstat        func(name string) (fs.FileInfo, error)
	Readlink     func(name string) (string, error)
	EvalSymlinks func(path string) (string, error) // of the roots only
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

// Resolve returns the real path of p if it lies under a root, as written
// (under a root or under its real path), and stays under one when its
// symlinks are followed. The result must still be checked to be a directory
// by the caller that can stat it.
//
// A path that does not exist and one outside the workspaces get the same
// error: users must not learn which files exist elsewhere on the host. That
// holds inside a workspace too, where a symlink (dangling or not) may point
// outside. So Resolve looks at nothing outside the roots: a symlink's target
// is joined to its folder and cleaned before it is looked at, and one that
// leaves every root fails there. (filepath.EvalSymlinks looks at each
// component of a target before it applies a "..": a link to
// OTHER/NAME/../../mine told a user whether OTHER/NAME exists, in a folder
// the gateway, not the user, may read.) A target such as link/../x is thus
// read as x, where the kernel would first follow link.
func (w Workspaces) Resolve(p string, fsys Links) (string, error) {
	// The errors quote a clip of p: a client is shown them, and its path
	// (%q escapes a U+0085 to 6 bytes) must not make them grow with it.
	if p == "" || !filepath.IsAbs(p) || strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("%w: %q is not an absolute path", ErrInvalidPath, Clip(p, MaxEchoedPath))
	}
	unknown := fmt.Errorf("%w: %q does not exist or is outside the workspaces", ErrInvalidPath, Clip(p, MaxEchoedPath))
	p = filepath.Clean(p)
	var roots []string // real paths
	start := ""
	for _, root := range w.Roots {
		real, err := fsys.EvalSymlinks(root)
		if err != nil {
			continue
		}
		roots = append(roots, real)
		if start != "" {
			continue
		}
		if within(root, p) {
			rel, _ := filepath.Rel(root, p)
			start = filepath.Join(real, rel)
		} else if within(real, p) {
			start = p
		}
	}
	if start == "" {
		return "", unknown
	}
	real, ok := walkWithin(start, roots, fsys)
	if !ok {
		return "", unknown
	}
	return real, nil
}

// walkWithin follows the symlinks of p, a clean path under one of roots,
// one component at a time, and returns the path they lead to; false when
// a component is missing or a link leads out of every root.
func walkWithin(p string, roots []string, fsys Links) (string, bool) {
	root := rootOf(roots, p)
	done, rest := root, components(root, p)
	for hops, steps := 0, 0; len(rest) > 0; {
		if steps++; steps > maxWalkSteps {
			return "", false
		}
		next := filepath.Join(done, rest[0])
		rest = rest[1:]
		fi, err := fsys.Lstat(next)
		if err != nil {
			return "", false
		}
		if fi.Mode()&fs.ModeSymlink == 0 {
			done = next
			continue
		}
		if hops++; hops > maxLinkHops {
			return "", false
		}
		target, err := fsys.Readlink(next)
		if err != nil || target == "" || strings.ContainsRune(target, 0) {
			return "", false
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(done, target)
		}
		target = filepath.Clean(target)
		if root = rootOf(roots, target); root == "" {
			return "", false
		}
		done, rest = root, append(components(root, target), rest...)
	}
	return done, true
}

// rootOf returns the root of roots that p lies under, or "".
func rootOf(roots []string, p string) string {
	for _, r := range roots {
		if within(r, p) {
			return r
		}
	}
	return ""
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
