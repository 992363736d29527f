package workspacefs

import (
	"os"
	"path/filepath"
	"strings"
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

// FuzzDir: whatever path a client sends, a directory Dir returns has no
// symlinks on its way (it is its own real path) and lies under the real
// path of a root. The fixture tree has links that stay inside, that leave
// (absolute and by ".."), that dangle, that loop, and a root reached
// through a link; the fuzzer's path is taken as is and also under a root.
func FuzzDir(f *testing.F) {
	base := f.TempDir()
	outside := filepath.Join(base, "outside")
	real := filepath.Join(base, "real")
	for _, d := range []string{outside, filepath.Join(outside, "secret"), filepath.Join(real, "proj", "sub"), filepath.Join(real, "other")} {
		require.NoError(f, os.MkdirAll(d, 0o755))
	}
	real, err := filepath.EvalSymlinks(real) // the temp folder may be reached through a link
	require.NoError(f, err)
	require.NoError(f, os.WriteFile(filepath.Join(real, "file"), nil, 0o644))
	rootLink := filepath.Join(base, "root") // the workspace root, itself a link
	require.NoError(f, os.Symlink(real, rootLink))
	for link, target := range map[string]string{
		"proj/up":      "..",
		"proj/in":      "sub",
		"proj/abs":     filepath.Join(real, "other"),
		"out":          outside,
		"outrel":       "../outside/secret",
		"dangling":     "missing",
		"loop1":        "loop2",
		"loop2":        "loop1",
		"viaroot":      filepath.Join(rootLink, "proj"),
		"proj/sub/esc": "../../../outside",
	} {
		require.NoError(f, os.Symlink(target, filepath.Join(real, link)))
	}
	ws := app.Workspaces{Roots: []string{rootLink}}
	for _, p := range []string{"proj", "proj/up/proj/in", "proj/abs", "out", "outrel", "dangling", "loop1", "viaroot", "proj/sub/esc", "../outside", "proj/../../outside/secret", "file", ""} {
		f.Add(p)
	}
	f.Add(filepath.Join(real, "proj"))
	f.Add(outside)
	f.Fuzz(func(t *testing.T, p string) {
		for _, path := range []string{p, filepath.Join(rootLink, p), filepath.Join(real, p)} {
			dir, err := Dir(ws, path)
			if err != nil {
				require.ErrorIs(t, err, app.ErrInvalidPath)
				// %q writes a byte that is not UTF-8 as 4: the clip of
				// app.MaxEchoedPath bytes quoted, and the error's words.
				require.LessOrEqual(t, len(err.Error()), 4*app.MaxEchoedPath+100, "the error quotes a clip of the path")
				continue
			}
			resolved, err := filepath.EvalSymlinks(dir)
			require.NoError(t, err)
			require.Equal(t, resolved, dir, "%q: the result has no links", path)
			rel, err := filepath.Rel(real, dir)
			require.NoError(t, err)
			require.False(t, rel == ".." || strings.HasPrefix(rel, "../"), "%q resolved to %q, outside the root", path, dir)
			fi, err := os.Lstat(dir)
			require.NoError(t, err)
			require.True(t, fi.IsDir())
		}
	})
}
