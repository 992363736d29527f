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
func (w Workspaces) Resolve(p string, resolve func(string) (string, error)) (string, error) {
	if p == "" || !filepath.IsAbs(p) || strings.ContainsRune(p, 0) {
		return "", fmt.Errorf("%w: %q is not an absolute path", ErrInvalidPath, p)
	}
	real, err := resolve(filepath.Clean(p))
	if err != nil {
		return "", fmt.Errorf("%w: %q does not exist", ErrInvalidPath, p)
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
	return "", fmt.Errorf("%w: %q is outside the workspaces", ErrInvalidPath, p)
}

func within(root, p string) bool {
	if root == p {
		return true
	}
	rel, err := filepath.Rel(root, p)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, "../") && !filepath.IsAbs(rel)
}
