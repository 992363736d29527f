package workers

import "golang.org/x/sys/unix"

// When a terminal's line discipline turns a typed interrupt, quit or
// suspend character into a signal, it throws away the output still queued
// for the terminal, unless NOFLSH is set (termios(3), ISIG). Output the
// worker has read from the PTY but not yet stored is the rest of that
// queue: it is dropped too, so after a Ctrl-C in a flood the prompt comes
// back after what is already on its way to the sockets, not after a
// backlog that a terminal on the other end of the PTY would never have
// shown. The kernel says when it flushed: the ptmx is in packet mode
// (TIOCPKT, ioctl_tty(2)), and a read then returns either data behind a
// zero byte or a status byte, TIOCPKT_FLUSHWRITE among its flags when the
// output queue was flushed. Data read before that status was written
// before the flush; data read after it, such as the echoed ^C and the
// prompt, came after.

// read reads the terminal's output into buf: data (within buf), or
// flushed when the kernel reports that it threw the terminal's queued
// output away.
func (p *ptyProc) read(buf []byte) (data []byte, flushed bool, err error) {
	n, err := p.f.Read(buf)
	if n == 0 {
		return nil, false, err
	}
	if buf[0] != unix.TIOCPKT_DATA {
		return nil, buf[0]&unix.TIOCPKT_FLUSHWRITE != 0, err
	}
	return buf[1:n], false, err
}

// dropUnstored drops the output read from the PTY and not yet handed to
// an append, as the line discipline flushed what it still held.
func (sh *shell) dropUnstored() {
	sh.outMu.Lock()
	n := len(sh.pending)
	sh.pending = sh.pending[:0]
	sh.outCond.Broadcast() // a reader waiting for room
	sh.outMu.Unlock()
	if n > 0 {
		ptyFlushed.Add(float64(n))
		sh.flow.wakeReader() // a reader waiting for the window
	}
}
