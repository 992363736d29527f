package workspacefs

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
)

// TestDir: a directory under a root, also through a symlink that stays
// inside, resolves to its real path; a file, a missing path and a path
// outside the roots are refused with app.ErrInvalidPath.
func TestDir(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(root, "proj"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(root, "file"), nil, 0o644))
	require.NoError(t, os.Symlink("proj", filepath.Join(root, "link")))
	require.NoError(t, os.Symlink(outside, filepath.Join(root, "out")))
	real, err := filepath.EvalSymlinks(filepath.Join(root, "proj"))
	require.NoError(t, err)
	ws := app.Workspaces{Roots: []string{root}}

	for _, p := range []string{filepath.Join(root, "proj"), filepath.Join(root, "link")} {
		dir, err := Dir(ws, p)
		require.NoError(t, err, p)
		require.Equal(t, real, dir, p)
	}
	for _, p := range []string{filepath.Join(root, "file"), filepath.Join(root, "missing"), filepath.Join(root, "out"), outside, "relative"} {
		_, err := Dir(ws, p)
		require.ErrorIs(t, err, app.ErrInvalidPath, p)
	}
}

// TestDirSwappedForALink: a project folder the user swaps for a link just
// after it was resolved is refused the same way whatever the link points
// at: an answer that followed it told whether paths outside the user's
// roots exist, and a link to a folder passed.
func TestDirSwappedForALink(t *testing.T) {
	root := t.TempDir()
	proj := filepath.Join(root, "proj")
	ws := app.Workspaces{Roots: []string{root}}
	saved := Links
	t.Cleanup(func() { Links = saved })
	var errs []string
	for _, target := range []string{t.TempDir(), filepath.Join(root, "missing")} {
		require.NoError(t, os.RemoveAll(proj))
		require.NoError(t, os.Mkdir(proj, 0o755))
		swapped := false
		Links.Lstat = func(p string) (os.FileInfo, error) {
			fi, err := os.Lstat(p)
			if p == proj && !swapped {
				// Resolved as a folder; a link takes its place.
				swapped = true
				require.NoError(t, os.Remove(proj))
				require.NoError(t, os.Symlink(target, proj))
			}
			return fi, err
		}
		_, err := Dir(ws, proj)
		require.ErrorIs(t, err, app.ErrInvalidPath, target)
		require.True(t, swapped)
		errs = append(errs, err.Error())
	}
	require.Equal(t, errs[0], errs[1])
}
