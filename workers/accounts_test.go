package workers

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestEnsureHomeFixesHomesMode: a homes folder is set to 0711 whatever
// mode it had (an image's mkdir gives 0755: every user could list the
// others' names), whoever owns it (root may: an admin's bind mount); the
// homes folder made here is 0711 too.
func TestEnsureHomeFixesHomesMode(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: homes are handed to other uids")
	}
	for _, mode := range []os.FileMode{0o755, 0o777, 0o700, 0o711 | os.ModeSticky} {
		homes := filepath.Join(t.TempDir(), "home")
		require.NoError(t, os.Mkdir(homes, 0o700))
		require.NoError(t, os.Chmod(homes, mode))
		a := &account{name: "alice", uid: 20001, home: filepath.Join(homes, "alice")}
		require.NoError(t, ensureHome(homes, a), mode)
		fi, err := os.Stat(homes)
		require.NoError(t, err)
		require.Equal(t, os.ModeDir|0o711, fi.Mode(), "homes made %v", mode)
		fi, err = os.Stat(a.home)
		require.NoError(t, err)
		require.Equal(t, os.ModeDir|0o700, fi.Mode())
	}

	// Made here.
	homes := filepath.Join(t.TempDir(), "new", "home")
	require.NoError(t, ensureHome(homes, &account{name: "bob", uid: 20002, home: filepath.Join(homes, "bob")}))
	fi, err := os.Stat(homes)
	require.NoError(t, err)
	require.Equal(t, os.ModeDir|0o711, fi.Mode()&^0o022, "umask aside")

	// Another owner's: set to 0711 as well.
	for _, mode := range []os.FileMode{0o777, 0o775, 0o1777, 0o755} {
		homes := filepath.Join(t.TempDir(), "home")
		require.NoError(t, os.Mkdir(homes, 0o700))
		require.NoError(t, os.Chown(homes, 30000, 30000))
		perm := mode & 0o777
		if mode&0o1000 != 0 {
			perm |= os.ModeSticky
		}
		require.NoError(t, os.Chmod(homes, perm))
		require.NoError(t, ensureHome(homes, &account{name: "carol", uid: 20003, home: filepath.Join(homes, "carol")}), "mode %04o", mode)
		fi, err := os.Stat(homes)
		require.NoError(t, err)
		require.Equal(t, os.ModeDir|0o711, fi.Mode(), "another owner's homes made %04o", mode)
	}
}
