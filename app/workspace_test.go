package app

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
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := w.Resolve(tc.path, testLinks)
			require.ErrorIs(t, err, ErrInvalidPath)
			require.Equal(t, strings.Replace(hidden, "PATH", `"`+tc.path+`"`, 1), err.Error())
		})
	}
}

// testLinks reads the real file system, as production does.
var testLinks = Links{Lstat: os.Lstat, Readlink: os.Readlink, EvalSymlinks: filepath.EvalSymlinks}

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
	links := Links{
		Lstat:        func(p string) (fs.FileInfo, error) { look(p); return os.Lstat(p) },
		Readlink:     func(p string) (string, error) { look(p); return os.Readlink(p) },
		EvalSymlinks: filepath.EvalSymlinks,
	}
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
	links := Links{
		Lstat:        func(p string) (fs.FileInfo, error) { looks.Add(1); return os.Lstat(p) },
		Readlink:     func(p string) (string, error) { looks.Add(1); return os.Readlink(p) },
		EvalSymlinks: filepath.EvalSymlinks,
	}
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
