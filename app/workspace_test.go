package app

import (
	"os"
	"path/filepath"
	"strings"
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
			_, err := w.Resolve(tc.path, filepath.EvalSymlinks)
			require.ErrorIs(t, err, ErrInvalidPath)
			require.Equal(t, strings.Replace(hidden, "PATH", `"`+tc.path+`"`, 1), err.Error())
		})
	}
}
