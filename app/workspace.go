package app

import (
	"fmt"
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

// Resolve returns the real path of p if it lies under a root, following
// symlinks with resolve (filepath.EvalSymlinks in production; the function
// is passed in to keep this package free of I/O). Roots are resolved the same
// way so that a root behind a symlink still matches. The result must still
// be checked to be a directory by the caller that can stat it.
//
// A path that does not exist and one outside the workspaces get the same
// error: users must not learn which files exist elsewhere on the host. That
// holds inside a workspace too, where a symlink (dangling or not) may point
// outside.
func (w Workspaces) Resolve(p string, resolve func(string) (string, error)) (string, error) {
	if p == "" || !filepath.IsAbs(p) || strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("%w: %q is not an absolute path", ErrInvalidPath, p)
	}
	unknown := fmt.Errorf("%w: %q does not exist or is outside the workspaces", ErrInvalidPath, p)
	real, err := resolve(filepath.Clean(p))
	if err != nil {
		return "", unknown
	}
	for _, root := range w.Roots {
		realRoot, err := resolve(root)
		if err != nil {
			continue
		}
		if within(realRoot, real) {
			return real, nil
		}
	}
	return "", unknown
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
