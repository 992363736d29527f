package workers

import (
	"bytes"
	"context"
	"time"

	"golang.org/x/sys/unix"
)

// When a terminal's line discipline turns a typed interrupt, quit or
// suspend character into a signal, it throws away the output still queued
// for the terminal, unless NOFLSH is set (termios(3), ISIG). Output the
// worker has read from the PTY but not yet stored is the rest of that
// queue: a Ctrl-C in a flood drops it too, so the prompt comes back after
// what is already on its way to the sockets, not after a backlog that a
// terminal on the other end of the PTY would never have shown.

// flushesOutput reports whether typing data makes the terminal's line
// discipline raise a signal that flushes output: data holds the interrupt,
// quit or suspend character while ISIG is on and NOFLSH off. The settings
// are read from the terminal each time, as the program on it changes them
// (an editor turns ISIG off).
func (p *ptyProc) flushesOutput(data []byte) bool {
	if !hasControlByte(data) {
		return false
	}
	raw, err := p.f.SyscallConn()
	if err != nil {
		return false
	}
	var t *unix.Termios
	// TCGETS on the master answers with the terminal's (the slave's)
	// settings on Linux.
	if cerr := raw.Control(func(fd uintptr) { t, err = unix.IoctlGetTermios(int(fd), unix.TCGETS) }); cerr != nil || err != nil {
		return false
	}
	if t.Lflag&unix.ISIG == 0 || t.Lflag&unix.NOFLSH != 0 {
		return false
	}
	for _, i := range []int{unix.VINTR, unix.VQUIT, unix.VSUSP} {
		// NUL is _POSIX_VDISABLE: the character is unset.
		if c := t.Cc[i]; c != 0 && bytes.IndexByte(data, c) >= 0 {
			return true
		}
	}
	return false
}

// hasControlByte reports whether data holds a control character other
// than the line and tab ones typed all the time: only those are worth a
// look at the terminal's settings (the signal characters are control
// characters unless a user remaps them to printable ones).
func hasControlByte(data []byte) bool {
	for _, c := range data {
		if (c < 0x20 && c != '\r' && c != '\n' && c != '\t') || c == 0x7f {
			return true
		}
	}
	return false
}

// signalTyped records a signal key about to be written (app.HasSignalKey,
// or one the terminal's settings make a signal), for flushLoop to announce
// once the appends before it are stored. When the key flushes output, the
// output read from the PTY and not yet handed to an append is dropped, as
// the line discipline flushes what it still holds. Called before the key
// is written: output read after that may be the signal's own (^C, the
// prompt), and it must go out after the announcement, not be taken for
// output it throws away.
func (sh *shell) signalTyped(flushed bool) {
	sh.outMu.Lock()
	n := 0
	if flushed {
		n = len(sh.pending)
		sh.pending = sh.pending[:0]
	}
	sh.signals = append(sh.signals, flushed)
	sh.outCond.Broadcast() // flushLoop, and a reader waiting for room
	sh.outMu.Unlock()
	if n > 0 {
		ptyFlushed.Add(float64(n))
		sh.flow.wakeReader() // a reader waiting for the window
	}
}

// announceSignals tells the terminal's watchers about typed signal keys:
// the output through lastSeq was stored before each (store.ShellSignal). A
// gateway holds the output of a socket that sent one until it hears, then
// skips what was stored before a key that flushed (handlers/terminals.go).
// Called by flushLoop only, between appends.
func (sh *shell) announceSignals(flushed []bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, f := range flushed {
		if f {
			sh.flow.flushed(sh.lastSeq)
		}
		if err := sh.w.st.ShellSignal(ctx, sh.key, sh.gen, sh.lastSeq, f); err != nil {
			// The gateway stops holding after a short wait anyway.
			sh.log.Debug("announce signal key", "err", err)
		}
	}
}
