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

// TestHostAccountsRefused: a uid range that holds an account or a group of
// the host is refused (the first user would be handed that account), as is
// one under 1000; a range the host does not use passes.
func TestHostAccountsRefused(t *testing.T) {
	dir := t.TempDir()
	passwd, group := filepath.Join(dir, "passwd"), filepath.Join(dir, "group")
	require.NoError(t, os.WriteFile(passwd, []byte("root:x:0:0:root:/root:/bin/bash\nubuntu:x:1000:1000::/home/ubuntu:/bin/bash\nodd:x:30000:25000::/:/bin/false\n# note\n"), 0o644))
	require.NoError(t, os.WriteFile(group, []byte("root:x:0:\nsudo:x:27:ubuntu\ndocker:x:20500:\n"), 0o644))
	saved := hostAccountFiles
	hostAccountFiles = []string{passwd, group, filepath.Join(dir, "missing")}
	t.Cleanup(func() { hostAccountFiles = saved })
	for _, tc := range []struct {
		first, last int
		refused     string
	}{
		{1000, 1999, "ubuntu"},
		{999, 1999, "want a range from 1000 up"},
		{20000, 20999, "docker"},
		{24000, 26000, "odd"}, // its primary gid
		{29000, 30000, "odd"},
		{40000, 49999, ""},
	} {
		err := (&Accounts{FirstUID: tc.first, LastUID: tc.last, Homes: "/var/lib/agentgate/home"}).Validate()
		if tc.refused == "" {
			if err != nil {
				require.NotContains(t, err.Error(), "uids", "%d-%d", tc.first, tc.last) // may still need root
			}
			continue
		}
		require.ErrorContains(t, err, tc.refused, "%d-%d", tc.first, tc.last)
	}
}
