// Package workspacefs resolves project paths on this host's file system:
// app.Workspaces.Resolve given the operating system's links, and the
// check that the result is a directory. Gateways and workers both resolve
// project paths (the gateway to answer at once, the worker again before it
// runs anything), and neither imports the other.
package workspacefs

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/agentgate/agentgate/app"
)

// Links is what app.Workspaces.Resolve reads of the file system.
var Links = app.Links{Lstat: os.Lstat, Readlink: os.Readlink, EvalSymlinks: filepath.EvalSymlinks}

// Dir resolves p under ws (app.Workspaces.Resolve) to an existing
// directory. Its errors wrap app.ErrInvalidPath.
func Dir(ws app.Workspaces, p string) (string, error) {
	dir, err := ws.Resolve(p, Links)
	if err != nil {
		return "", err
	}
	// Lstat: Resolve returned a path without links, and one swapped in
	// since would be followed by Stat, whose answer then told whether its
	// target (outside the user's roots) exists.
	if fi, err := os.Lstat(dir); err != nil || !fi.IsDir() {
		return "", fmt.Errorf("%w: %q is not a directory", app.ErrInvalidPath, app.Clip(p, app.MaxEchoedPath))
	}
	return dir, nil
}
