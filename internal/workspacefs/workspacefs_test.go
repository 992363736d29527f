package workspacefs

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/agentgate/agentgate/app"
)

// TestDir: a directory under a root, also through a symlink that stays
// inside, resolves to its real path; a file, a missing path and a path
// outside the roots are refused with app.ErrInvalidPath, a file as a
// missing path is.
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
	_, errFile := Dir(ws, filepath.Join(root, "file"))
	_, errMissing := Dir(ws, filepath.Join(root, "none"))
	require.Equal(t, strings.Replace(errMissing.Error(), "none", "file", 1), errFile.Error())
}

// TestDirSwappedForALink: a project folder the user swaps for a link just
// after the walk saw it as a folder is refused the same way whatever the
// link points at: the walk enters folders without following links, so
// what the link leads to is not looked at.
func TestDirSwappedForALink(t *testing.T) {
	root := t.TempDir()
	proj := filepath.Join(root, "proj")
	ws := app.Workspaces{Roots: []string{root}}
	var errs []string
	for _, target := range []string{t.TempDir(), filepath.Join(root, "missing"), root} {
		require.NoError(t, os.RemoveAll(proj))
		require.NoError(t, os.Mkdir(proj, 0o755))
		swapped := false
		fsys := hookFS{after: func(name string) {
			if name == "proj" && !swapped {
				swapped = true
				require.NoError(t, os.Remove(proj))
				require.NoError(t, os.Symlink(target, proj))
			}
		}}
		_, err := ws.Resolve(proj, fsys)
		require.ErrorIs(t, err, app.ErrInvalidPath, target)
		require.True(t, swapped)
		errs = append(errs, err.Error())
	}
	require.Equal(t, errs[0], errs[1])
	require.Equal(t, errs[0], errs[2])
}

// hookFS is FS with a call after each Lstat, to change the tree between
// the walk's looks.
type hookFS struct{ after func(name string) }

func (h hookFS) OpenRoot(path string) (app.Dir, string, error) {
	d, real, err := FS{}.OpenRoot(path)
	if err != nil {
		return nil, "", err
	}
	return hookDir{d, h}, real, nil
}

type hookDir struct {
	app.Dir
	h hookFS
}

func (d hookDir) Lstat(name string) (fs.FileMode, error) {
	mode, err := d.Dir.Lstat(name)
	d.h.after(name)
	return mode, err
}

func (d hookDir) Enter(name string) (app.Dir, error) {
	next, err := d.Dir.Enter(name)
	if err != nil {
		return nil, err
	}
	return hookDir{next, d.h}, nil
}

// TestDirRacesASwap: a user who swaps a folder of their workspace with a
// link to a folder outside it (renameat2 RENAME_EXCHANGE, in a loop) while
// the gateway resolves paths below it learns nothing of what is outside:
// every path that exists only outside gets the one error, whether a folder
// or a file, and nothing resolves outside the root. (Walking paths by
// name, the second look went through the swapped-in link about one time in
// ten.)
func TestDirRacesASwap(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(outside, "secret"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(outside, "file"), nil, 0o600))
	d, l := filepath.Join(root, "d"), filepath.Join(root, "l")
	require.NoError(t, os.MkdirAll(filepath.Join(d, "own"), 0o700))
	require.NoError(t, os.Symlink(outside, l))
	realRoot, err := filepath.EvalSymlinks(root)
	require.NoError(t, err)
	ws := app.Workspaces{Roots: []string{root}}

	stop := make(chan struct{})
	var swaps atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if err := unix.Renameat2(unix.AT_FDCWD, d, unix.AT_FDCWD, l, unix.RENAME_EXCHANGE); err != nil {
				t.Errorf("renameat2: %v", err)
				return
			}
			swaps.Add(1)
		}
	}()
	defer func() { close(stop); wg.Wait() }()

	const iterations = 20000
	var ownFound, ownRefused int
	for i := range iterations {
		for _, name := range []string{"secret", "file", "missing"} {
			p := filepath.Join(d, name)
			_, err := Dir(ws, p)
			require.Error(t, err, "%s resolved (iteration %d)", p, i)
			require.Equal(t, fmt.Sprintf("%s: %q does not exist or is outside the workspaces", app.ErrInvalidPath, p), err.Error(), "iteration %d", i)
		}
		for _, p := range []string{d, filepath.Join(d, "own")} {
			dir, err := Dir(ws, p)
			if err != nil {
				if p != d {
					ownRefused++
				}
				continue
			}
			require.True(t, dir == realRoot || strings.HasPrefix(dir, realRoot+"/"), "%s resolved to %s, outside the root", p, dir)
			if p != d {
				require.Equal(t, filepath.Join(realRoot, "d", "own"), dir)
				ownFound++
			}
		}
	}
	// The swap ran and both states were seen.
	require.Positive(t, swaps.Load())
	require.Positive(t, ownFound)
	require.Positive(t, ownRefused)
	t.Logf("%d swaps; d/own found %d times, refused %d", swaps.Load(), ownFound, ownRefused)
}

// TestDirClosesItsDescriptors: many resolves, that succeed or fail at every
// step (a missing name, a file, a loop, a link out, an untrusted root), leave
// as many descriptors open as before.
func TestDirClosesItsDescriptors(t *testing.T) {
	root, other := t.TempDir(), t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(root, "a", "b", "c"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(root, "a", "file"), nil, 0o600))
	for link, target := range map[string]string{"a/up": "..", "a/in": "b/c", "a/out": other, "a/loop": "loop", "a/dangling": "nothing", "a/tofile": "file", "rootlink": root} {
		require.NoError(t, os.Symlink(target, filepath.Join(root, link)))
	}
	ws := app.Workspaces{Roots: []string{filepath.Join(root, "missing"), filepath.Join(root, "rootlink"), root, filepath.Join(root, "a", "file")}}
	paths := []string{"", "a", "a/b/c", "a/up/a/in", "a/in/x", "a/out", "a/loop", "a/dangling", "a/tofile", "a/file", "a/file/x", "rootlink/a/b"}
	resolveAll := func() {
		for _, p := range paths {
			_, _ = Dir(ws, filepath.Join(root, p))
		}
	}
	resolveAll() // whatever the runtime opens once
	before := openFDs(t)
	for range 200 {
		resolveAll()
	}
	require.Equal(t, before, openFDs(t))
}

func openFDs(t *testing.T) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	require.NoError(t, err)
	return len(fds)
}

// TestRootsOnlyThroughTrustedFolders: a root is opened only if every folder
// on its way, and every link followed to it, is root's or this process's
// user's: a user who owns a folder above their root could make the root a
// link to "/". The root's own folder may be theirs. Needs root, to chown.
func TestRootsOnlyThroughTrustedFolders(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give files to another user")
	}
	const alice = 12345
	base := t.TempDir()
	home := filepath.Join(base, "alice")
	require.NoError(t, os.MkdirAll(filepath.Join(home, "projects", "p"), 0o755))
	require.NoError(t, os.Chown(home, alice, alice))
	require.NoError(t, os.Symlink(home, filepath.Join(base, "alicelink")))
	require.NoError(t, os.Symlink(home, filepath.Join(base, "rootlink")))
	require.NoError(t, os.Lchown(filepath.Join(base, "alicelink"), alice, alice))
	realBase, err := filepath.EvalSymlinks(base)
	require.NoError(t, err)
	want := filepath.Join(realBase, "alice", "projects", "p")

	for _, tc := range []struct {
		root, path string
		ok         bool
	}{
		{home, filepath.Join(home, "projects", "p"), true},                             // alice's own folder is the root
		{filepath.Join(home, "projects"), filepath.Join(home, "projects", "p"), false}, // through alice's folder
		{filepath.Join(base, "rootlink"), filepath.Join(base, "rootlink", "projects", "p"), true},
		{filepath.Join(base, "alicelink"), filepath.Join(base, "alicelink", "projects", "p"), false}, // alice's link
	} {
		got, err := Dir(app.Workspaces{Roots: []string{tc.root}}, tc.path)
		if !tc.ok {
			require.ErrorIs(t, err, app.ErrInvalidPath, tc.root)
			_, _, err = FS{}.OpenRoot(tc.root)
			require.Error(t, err, tc.root)
			continue
		}
		require.NoError(t, err, tc.root)
		require.Equal(t, want, got, tc.root)
	}
	// Refused for its owner, not its shape.
	require.NoError(t, os.Chown(home, 0, 0))
	got, err := Dir(app.Workspaces{Roots: []string{filepath.Join(home, "projects")}}, filepath.Join(home, "projects", "p"))
	require.NoError(t, err)
	require.Equal(t, want, got)
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
