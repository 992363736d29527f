package app

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestResolveHidesWhatIsOutside: a path outside the workspaces gets the same
// error whether or not it exists, also when reached through a symlink inside
// a workspace, and a missing path inside gets that error too (a missing
// component could be a dangling symlink that points outside).
func TestResolveHidesWhatIsOutside(t *testing.T) {
	root, outside := t.TempDir(), t.TempDir()
	secret := filepath.Join(outside, "shadow")
	require.NoError(t, os.WriteFile(secret, []byte("x"), 0o600))
	require.NoError(t, os.Symlink(secret, filepath.Join(root, "to-secret")))
	require.NoError(t, os.Symlink(filepath.Join(outside, "nonexistent"), filepath.Join(root, "to-nothing")))
	require.NoError(t, os.Symlink(outside, filepath.Join(root, "out")))
	require.NoError(t, os.WriteFile(filepath.Join(root, "file"), nil, 0o600))
	require.NoError(t, os.Symlink("file", filepath.Join(root, "to-file")))
	w := Workspaces{Roots: []string{root}}

	const hidden = `invalid project path: PATH does not exist or is outside the workspaces`
	cases := []struct {
		name, path string
	}{
		{"an existing file outside", secret},
		{"a missing file outside", filepath.Join(outside, "nonexistent")},
		{"an existing system file", "/etc/passwd"},
		{"a missing system file", "/etc/nonexistent"},
		{"below a file outside", filepath.Join(secret, "x")},
		{"a symlink to an existing file outside", filepath.Join(root, "to-secret")},
		{"a dangling symlink to outside", filepath.Join(root, "to-nothing")},
		{"an existing file through a symlinked folder", filepath.Join(root, "out", "shadow")},
		{"a missing file through a symlinked folder", filepath.Join(root, "out", "nonexistent")},
		{"a missing folder inside", filepath.Join(root, "nonexistent")},
		// Not "is not a directory": through a swapped link, that told
		// whether a file exists where the link led.
		{"a file inside", filepath.Join(root, "file")},
		{"a symlink to a file inside", filepath.Join(root, "to-file")},
		{"below a file inside", filepath.Join(root, "file", "x")},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := w.Resolve(tc.path, testLinks)
			require.ErrorIs(t, err, ErrInvalidPath)
			require.Equal(t, strings.Replace(hidden, "PATH", `"`+tc.path+`"`, 1), err.Error())
		})
	}
}

// testLinks reads the real file system by path (pathFS).
var testLinks FS = pathFS{}

// pathFS is an FS over the real file system that names directories by
// path, not by descriptor (workspacefs tests those): it runs Resolve's walk
// on real trees. look, if set, hears each path looked at; open, if set,
// counts the directories open.
type pathFS struct {
	look func(p string)
	open *atomic.Int64
}

func (f pathFS) OpenRoot(path string) (Dir, string, error) {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return nil, "", err
	}
	if fi, err := os.Stat(real); err != nil || !fi.IsDir() {
		return nil, "", errors.New("not a directory")
	}
	return f.dir(real), real, nil
}

func (f pathFS) dir(p string) Dir {
	if f.open != nil {
		f.open.Add(1)
	}
	return pathDir{f, p}
}

type pathDir struct {
	fs   pathFS
	path string
}

func (d pathDir) at(name string) string {
	p := filepath.Join(d.path, name)
	if d.fs.look != nil {
		d.fs.look(p)
	}
	return p
}

func (d pathDir) Lstat(name string) (fs.FileMode, error) {
	fi, err := os.Lstat(d.at(name))
	if err != nil {
		return 0, err
	}
	return fi.Mode(), nil
}

func (d pathDir) Readlink(name string) (string, error) { return os.Readlink(d.at(name)) }

func (d pathDir) Enter(name string) (Dir, error) {
	p := d.at(name)
	if fi, err := os.Lstat(p); err != nil || !fi.IsDir() {
		return nil, errors.New("not a directory")
	}
	return d.fs.dir(p), nil
}

func (d pathDir) Close() error {
	if d.fs.open != nil {
		d.fs.open.Add(-1)
	}
	return nil
}

// TestResolveLooksOnlyInside: a symlink in a user's workspace whose target
// goes through another folder and back ("OTHER/NAME/../../mine") answers the
// same whether OTHER/NAME exists or not, and Resolve looks at nothing
// outside the roots to answer (filepath.EvalSymlinks looked at OTHER/NAME,
// which a gateway running as root may read where the user may not).
func TestResolveLooksOnlyInside(t *testing.T) {
	homes := t.TempDir()
	mine, other := filepath.Join(homes, "alice"), filepath.Join(homes, "bob")
	require.NoError(t, os.MkdirAll(filepath.Join(other, "secret-project"), 0o700))
	require.NoError(t, os.MkdirAll(filepath.Join(mine, "proj"), 0o700))
	for name, target := range map[string]string{
		"probe-exists":   other + "/secret-project/../../alice/proj",
		"probe-missing":  other + "/no-such-thing/../../alice/proj",
		"rel-exists":     "../bob/secret-project/../../alice/proj",
		"rel-missing":    "../bob/no-such-thing/../../alice/proj",
		"out":            other + "/secret-project",
		"loop":           "loop",
		"chain":          "probe-exists",
		"inside-dotdot":  "proj/../proj",
		"absolute-mine":  mine + "/proj",
		"dangling-mine":  mine + "/nothing",
		"through-out":    other,
		"through-chain":  "chain",
		"parent-of-root": "..",
	} {
		require.NoError(t, os.Symlink(target, filepath.Join(mine, name)))
	}
	var mu sync.Mutex
	var looked []string
	look := func(p string) {
		mu.Lock()
		defer mu.Unlock()
		looked = append(looked, p)
	}
	links := pathFS{look: look}
	w := Workspaces{Roots: []string{mine}}
	realMine, err := filepath.EvalSymlinks(mine)
	require.NoError(t, err)
	want := filepath.Join(realMine, "proj")
	for _, tc := range []struct {
		link string
		ok   bool
	}{
		{"probe-exists", true}, {"probe-missing", true}, {"rel-exists", true}, {"rel-missing", true},
		{"chain", true}, {"inside-dotdot", true}, {"absolute-mine", true},
		{"out", false}, {"loop", false}, {"dangling-mine", false}, {"through-out", false},
		{"parent-of-root", false}, {"through-chain", true},
	} {
		got, err := w.Resolve(filepath.Join(mine, tc.link), links)
		if !tc.ok {
			require.ErrorIs(t, err, ErrInvalidPath, tc.link)
			continue
		}
		require.NoError(t, err, tc.link)
		require.Equal(t, want, got, tc.link)
	}
	for _, p := range looked {
		require.True(t, within(realMine, p), "looked at %s, outside the workspace", p)
	}
}

// TestResolveBoundsItsWalk: a chain of links in a deep folder does not make
// Resolve look at tens of thousands of paths (each link starts the walk
// again from the root): it gives up past maxWalkSteps components, while a
// path of ordinary depth through a few links still resolves.
func TestResolveBoundsItsWalk(t *testing.T) {
	home := t.TempDir()
	deep := home
	for range 300 {
		deep = filepath.Join(deep, "a")
	}
	require.NoError(t, os.MkdirAll(deep, 0o700))
	const chain = 40
	for i := range chain {
		require.NoError(t, os.Symlink(fmt.Sprintf("L%d", i+1), filepath.Join(deep, fmt.Sprintf("L%d", i))))
	}
	require.NoError(t, os.Mkdir(filepath.Join(deep, fmt.Sprintf("L%d", chain)), 0o700))
	var looks atomic.Int64
	links := pathFS{look: func(string) { looks.Add(1) }}
	w := Workspaces{Roots: []string{home}}
	_, err := w.Resolve(filepath.Join(deep, "L0"), links)
	require.ErrorIs(t, err, ErrInvalidPath)
	require.LessOrEqual(t, looks.Load(), int64(2*maxWalkSteps), "paths looked at")

	// Twenty levels and three links on the way resolve.
	proj := filepath.Join(home, "src")
	for range 20 {
		proj = filepath.Join(proj, "p")
	}
	require.NoError(t, os.MkdirAll(proj, 0o700))
	require.NoError(t, os.Symlink(filepath.Join(home, "src"), filepath.Join(home, "code")))
	require.NoError(t, os.Symlink("code", filepath.Join(home, "work")))
	require.NoError(t, os.Symlink(strings.TrimPrefix(proj, filepath.Join(home, "src")+"/"), filepath.Join(home, "src", "latest")))
	got, err := w.Resolve(filepath.Join(home, "work", "latest"), links)
	require.NoError(t, err)
	realProj, err := filepath.EvalSymlinks(proj)
	require.NoError(t, err)
	require.Equal(t, realProj, got)
}

// TestResolveFailsClosedOnASwap: a folder swapped for a link between the
// walk's look at it and its entering is refused, the same way whatever the
// link points at (a folder outside, one inside, nothing): what it leads to
// is not looked at.
func TestResolveFailsClosedOnASwap(t *testing.T) {
	root := t.TempDir()
	proj := filepath.Join(root, "proj")
	require.NoError(t, os.Mkdir(filepath.Join(root, "inside"), 0o700))
	w := Workspaces{Roots: []string{root}}
	var errs []string
	for _, target := range []string{t.TempDir(), filepath.Join(root, "inside"), filepath.Join(root, "missing")} {
		require.NoError(t, os.RemoveAll(proj))
		require.NoError(t, os.Mkdir(proj, 0o700))
		looks, swapped := 0, false
		links := pathFS{look: func(p string) {
			if p != proj {
				return
			}
			if looks++; looks == 2 { // seen as a folder, now entered: a link took its place
				swapped = true
				require.NoError(t, os.Remove(proj))
				require.NoError(t, os.Symlink(target, proj))
			}
		}}
		_, err := w.Resolve(proj, links)
		require.ErrorIs(t, err, ErrInvalidPath, target)
		require.True(t, swapped)
		errs = append(errs, err.Error())
	}
	require.Equal(t, errs[0], errs[1])
	require.Equal(t, errs[0], errs[2])
}

// TestResolveSkipsUnusableRoots: a root that cannot be opened (missing,
// a file, relative, or one the FS refuses) is as if not configured; the
// others still resolve, and a path under it gets the usual error.
func TestResolveSkipsUnusableRoots(t *testing.T) {
	base := t.TempDir()
	good := filepath.Join(base, "good")
	require.NoError(t, os.MkdirAll(filepath.Join(good, "proj"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(base, "file"), nil, 0o600))
	realGood, err := filepath.EvalSymlinks(good)
	require.NoError(t, err)
	w := Workspaces{Roots: []string{filepath.Join(base, "missing"), filepath.Join(base, "file"), "relative", good}}
	got, err := w.Resolve(filepath.Join(good, "proj"), testLinks)
	require.NoError(t, err)
	require.Equal(t, filepath.Join(realGood, "proj"), got)
	_, err = w.Resolve(filepath.Join(base, "file"), testLinks)
	require.ErrorIs(t, err, ErrInvalidPath)
}

// TestResolveClosesWhatItOpens: every directory Resolve opens (the roots,
// each folder on the way) is closed, whether it resolves or fails where.
func TestResolveClosesWhatItOpens(t *testing.T) {
	root, other := t.TempDir(), t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(root, "a", "b", "c"), 0o700))
	require.NoError(t, os.WriteFile(filepath.Join(root, "a", "file"), nil, 0o600))
	for link, target := range map[string]string{"a/up": "..", "a/in": "b/c", "a/out": other, "a/loop": "loop", "a/dangling": "nothing", "a/tofile": "file"} {
		require.NoError(t, os.Symlink(target, filepath.Join(root, link)))
	}
	var open atomic.Int64
	links := pathFS{open: &open}
	w := Workspaces{Roots: []string{root, other, filepath.Join(root, "missing")}}
	for _, p := range []string{"", "a", "a/b/c", "a/up/a/in", "a/in/x", "a/out", "a/loop", "a/dangling", "a/tofile", "a/file", "a/file/x", "a/b/../in"} {
		_, _ = w.Resolve(filepath.Join(root, p), links)
		require.Zero(t, open.Load(), p)
	}
	_, _ = w.Resolve(other, links)
	require.Zero(t, open.Load())
}
