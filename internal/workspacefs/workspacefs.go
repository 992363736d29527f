// Package workspacefs resolves project paths on this host's file system:
// app.Workspaces.Resolve given directories held open by file descriptor.
// Gateways and workers both resolve project paths (the gateway to answer
// at once, the worker again before it runs anything), and neither imports
// the other.
package workspacefs

import (
	"errors"
	"io/fs"
	"os"

	"golang.org/x/sys/unix"

	"github.com/agentgate/agentgate/app"
)

// Dir resolves p under ws (app.Workspaces.Resolve) to an existing
// directory. Its errors wrap app.ErrInvalidPath.
func Dir(ws app.Workspaces, p string) (string, error) {
	return ws.Resolve(p, FS{})
}

// FS is the host's file system as app.Workspaces.Resolve walks it: each
// directory is an O_PATH file descriptor, and names are looked up in it
// with the *at calls, never following a link.
//
// A root is opened by a walk from "/" (app.OpenFrom) that looks only in
// folders, and reads only links, that root or this process's user owns:
// no one else may be able to make a root lead elsewhere, such as a user
// who replaces the root /home/alice/projects by a link to "/". The root's
// own folder may be anyone's (a user's home).
type FS struct{}

// OpenRoot implements app.FS.
func (FS) OpenRoot(path string) (app.Dir, string, error) {
	top, err := open(unix.AT_FDCWD, "/", true)
	if err != nil {
		return nil, "", err
	}
	d, real, err := app.OpenFrom(top, path)
	if err != nil {
		return nil, "", err
	}
	// The root's contents are its user's: Resolve looks in them all.
	d.(*dir).guarded = false
	return d, real, nil
}

// errUntrusted refuses a look into a folder, or at a link, on a root's way
// that someone other than root or this process's user owns.
var errUntrusted = errors.New("owned by another user")

// dir is an open directory, an O_PATH file descriptor.
type dir struct {
	fd int
	// guarded: the directory is on the way to a root; it may be looked in
	// only if trusted, and the links in it read only if they are.
	guarded bool
	trusted bool // root or this process's user owns the directory
}

// open opens the directory name in the directory dirfd, not following a
// link, and checks on the descriptor that it is one: a link swapped in
// after it was seen as a directory is refused, not followed.
func open(dirfd int, name string, guarded bool) (*dir, error) {
	fd, err := unix.Openat(dirfd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
		unix.Close(fd)
		return nil, unix.ENOTDIR
	}
	return &dir{fd: fd, guarded: guarded, trusted: trusted(&st)}, nil
}

// trusted reports whether root or this process's user owns what st is of.
func trusted(st *unix.Stat_t) bool {
	return st.Uid == 0 || int(st.Uid) == os.Geteuid()
}

func (d *dir) look() error {
	if d.guarded && !d.trusted {
		return errUntrusted
	}
	return nil
}

func (d *dir) Lstat(name string) (fs.FileMode, error) {
	if err := d.look(); err != nil {
		return 0, err
	}
	var st unix.Stat_t
	if err := unix.Fstatat(d.fd, name, &st, unix.AT_SYMLINK_NOFOLLOW); err != nil {
		return 0, err
	}
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFDIR:
		return fs.ModeDir, nil
	case unix.S_IFLNK:
		return fs.ModeSymlink, nil
	case unix.S_IFREG:
		return 0, nil
	}
	return fs.ModeIrregular, nil // a device, pipe or socket: no folder either
}

func (d *dir) Readlink(name string) (string, error) {
	if err := d.look(); err != nil {
		return "", err
	}
	if !d.guarded {
		return readlink(d.fd, name)
	}
	// The link's owner is checked on the link read, not on a name that
	// may be another link by then.
	fd, err := unix.Openat(d.fd, name, unix.O_PATH|unix.O_NOFOLLOW|unix.O_CLOEXEC, 0)
	if err != nil {
		return "", err
	}
	defer unix.Close(fd)
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return "", err
	}
	if st.Mode&unix.S_IFMT != unix.S_IFLNK {
		return "", unix.EINVAL
	}
	if !trusted(&st) {
		return "", errUntrusted
	}
	return readlink(fd, "") // "": the link fd is open on
}

// readlink reads the link name in the directory dirfd, whatever its length.
func readlink(dirfd int, name string) (string, error) {
	for size := 256; ; size *= 2 {
		buf := make([]byte, size)
		n, err := unix.Readlinkat(dirfd, name, buf)
		if err != nil {
			return "", err
		}
		if n < size {
			return string(buf[:n]), nil
		}
	}
}

func (d *dir) Enter(name string) (app.Dir, error) {
	if err := d.look(); err != nil {
		return nil, err
	}
	next, err := open(d.fd, name, d.guarded)
	if err != nil {
		return nil, err // not a nil *dir in an app.Dir
	}
	return next, nil
}

func (d *dir) Close() error {
	return unix.Close(d.fd)
}
