package workers

import (
	"bytes"
	"context"
	"errors"
	"os"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
)

// readLoop copies PTY output into pending, stopping while pending is full.
// Runs in its own goroutine.
func (sh *shell) readLoop() {
	buf := make([]byte, shellChunkMax)
	var pace ptyPacer
	pause := time.Duration(0)
	pending := func() int {
		sh.outMu.Lock()
		defer sh.outMu.Unlock()
		return len(sh.pending)
	}
	for {
		// Not read while the sockets are a window behind: the process
		// blocks on a full PTY, and a Ctrl-C has little left to show.
		sh.flow.wait(pending, sh.p.exited)
		nanosleep(pause)
		n, err := sh.p.f.Read(buf)
		pause = pace.after(n)
		sh.took(buf[:n])
		if errors.Is(err, os.ErrDeadlineExceeded) {
			// The drain after the exit ran out (shell.run). Its deadline
			// may have passed before this goroutine ran at all (a loaded
			// machine): what the PTY holds was written before the exit,
			// the end of the program's output, and is read now.
			sh.drainNow(buf)
		}
		if err != nil {
			// EIO once the last holder of the tty is gone (Linux's EOF),
			// a deadline after exit, or the ptmx closed.
			break
		}
	}
	sh.outMu.Lock()
	sh.readDone = true
	sh.outCond.Broadcast()
	sh.outMu.Unlock()
}

// took adds output read from the PTY to pending, waiting while pending is
// full.
func (sh *shell) took(out []byte) {
	if len(out) == 0 {
		return
	}
	ptyOut.Add(float64(len(out)))
	sh.outMu.Lock()
	for len(sh.pending) >= shellPendingMax {
		sh.outCond.Wait()
	}
	sh.pending = append(sh.pending, out...)
	sh.outCond.Broadcast()
	sh.outMu.Unlock()
}

// shellDrainReads bounds drainNow's reads: the PTY holds at most 64 KiB
// (the kernel's limit on a tty's buffers), a PTY read gives at most 4 KiB,
// and a job that escaped the terminal's kill must not keep it going.
const shellDrainReads = 64

// drainNow reads what the PTY holds without waiting for more, once the
// drain's deadline passed: a read past its deadline fails before it looks.
func (sh *shell) drainNow(buf []byte) {
	if sh.p.f.SetReadDeadline(time.Time{}) != nil {
		return
	}
	raw, err := sh.p.f.SyscallConn()
	if err != nil {
		return
	}
	for range shellDrainReads {
		n := 0
		// The descriptor is non-blocking (the runtime's poller has it),
		// and the callback answers done: an empty PTY gives EAGAIN, a
		// PTY with no holder left EIO, and neither waits.
		if raw.Read(func(fd uintptr) bool {
			n, _ = unix.Read(int(fd), buf)
			return true
		}) != nil || n <= 0 {
			return
		}
		sh.took(buf[:n])
	}
}

// flushLoop appends pending output to Redis as soon as there is some:
// output that arrives during one append goes out together in the next, so
// a keystroke's echo is sent at once and a flood is sent in large chunks.
// Runs in its own goroutine.
func (sh *shell) flushLoop() {
	var carry []byte  // an incomplete UTF-8 sequence at the end of a batch
	flooding := false // the last append was bulk output
	// A flood's append waits for this much: half the flow window (at most
	// a chunk), so that a small window still has two appends on their way.
	// A quarter made a 64 KiB window's appends 16 KiB, a fifth more CPU
	// per MB than 32 KiB ones (bench/RESULTS.md, 2026-12-05, evening).
	coalesceTo := min(shellChunkMax, int(sh.flow.window/2))
	for {
		sh.outMu.Lock()
		for len(sh.pending) == 0 && !sh.readDone && len(sh.signals) == 0 {
			sh.outCond.Wait()
		}
		if len(sh.signals) > 0 {
			// Every append before the key's write is stored: what comes
			// next was read after it.
			sigs := sh.signals
			sh.signals = nil
			sh.outMu.Unlock()
			sh.announceSignals(sigs)
			// What follows a signal key is the end of a flood, the key's
			// echo and a prompt: it goes out at once, not after waiting
			// for more that will not come.
			flooding = false
			continue
		}
		if len(sh.pending) == 0 {
			sh.outMu.Unlock()
			break
		}
		if flooding && len(sh.pending) >= shellCoalesceFrom && len(sh.pending) < coalesceTo && !sh.readDone {
			// A flood goes on: let a few more PTY reads join this append,
			// so it costs one script call, one message and one frame per
			// ~32 KiB rather than per 4 KiB read; it goes as soon as that
			// much is there (a fixed wait held a small window's output
			// back). An echo or a prompt (small output) is never held.
			deadline := time.Now().Add(sh.coalesce)
			for len(sh.pending) < coalesceTo && !sh.readDone && len(sh.signals) == 0 && time.Now().Before(deadline) {
				sh.outMu.Unlock()
				nanosleep(shellCoalesceStep)
				sh.outMu.Lock()
			}
			if len(sh.signals) > 0 {
				sh.outMu.Unlock()
				continue // announced first, above
			}
		}
		// The spare is taken, never shared: the reader appends into pending
		// while data is on its way to Redis (go-redis sends data's bytes
		// as they are), so the two must not be one buffer.
		var data []byte
		if len(sh.pending) <= shellBatchMax {
			data = sh.pending
			sh.pending = sh.spare[:0]
		} else {
			data = append(sh.spare[:0], sh.pending[:shellBatchMax]...)
			sh.pending = sh.pending[:copy(sh.pending, sh.pending[shellBatchMax:])]
		}
		sh.spare = nil
		sh.outCond.Broadcast()
		last := sh.readDone && len(sh.pending) == 0
		sh.outMu.Unlock()

		buf := data
		if len(carry) > 0 {
			buf = append(carry, data...)
		}
		chunks, rest := splitChunks(buf, last)
		carry = append([]byte(nil), rest...)
		sh.append(chunks)
		flooding = len(data) >= shellCoalesceFrom

		sh.outMu.Lock()
		if cap(data) <= 2*shellBatchMax {
			sh.spare = data[:0] // a backlog's larger buffer is let go
		}
		sh.outMu.Unlock()
	}
	if len(carry) > 0 {
		sh.append([][]byte{bytes.ToValidUTF8(carry, []byte("\uFFFD"))})
	}
}

// append stores and publishes chunks, then looks for login URLs in them.
// While Redis is away, full or refusing writes, it tries again: the output
// waits in the worker, whose reader stops at shellPendingMax, and the
// program then waits on its PTY, as under a client that does not read.
// Failures for longer than stallLimit drop output instead until an append
// succeeds, so that a long outage does not hold the terminal for good; so
// does a worker shutting down.
func (sh *shell) append(chunks [][]byte) {
	if len(chunks) == 0 {
		return
	}
	if sh.dropping {
		if _, closing := sh.w.shells.quitting(); closing {
			return // each try would wait out go-redis's dials
		}
	}
	// A retry keeps the batch's number: an append whose reply was lost
	// (a stalled Redis runs it after the worker gave up waiting) is
	// stored once.
	sh.batches++
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		last, err := sh.w.st.ShellAppendBytes(ctx, sh.key, sh.gen, sh.batches, sh.lastSeq, chunks)
		cancel()
		if err == nil {
			sh.lastSeq = last
			sizes := make([]int, len(chunks))
			for i, c := range chunks {
				sizes[i] = len(c)
			}
			sh.flow.appendedChunks(last, sizes)
			break
		}
		if errors.Is(err, store.ErrStaleShell) {
			// The key was reopened or deleted, or the generation ended
			// elsewhere (a gateway took this worker for dead when its
			// heartbeats were late): nobody can see this terminal.
			if !sh.staleSeen {
				sh.staleSeen = true
				sh.log.Info("terminal ended or replaced in Redis: its output is dropped and it is killed")
			}
			sh.kill()
			return
		}
		if !sh.waitToAppend(err) {
			return
		}
	}
	if !sh.stallSince.IsZero() {
		sh.log.Info("storing terminal output again", "after", time.Since(sh.stallSince).Round(time.Millisecond))
		sh.stallSince, sh.dropping = time.Time{}, false
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, c := range chunks {
		for _, a := range sh.urls.scan(c) {
			if err := sh.w.st.ShellAuthURL(ctx, sh.key, sh.gen, a.url, a.autoOpen); err != nil {
				sh.log.Warn("announce login URL", "err", err)
			}
		}
	}
}

// waitToAppend waits after a failed append and reports whether to try it
// again; false means its output is dropped.
func (sh *shell) waitToAppend(err error) bool {
	now := time.Now()
	if sh.stallSince.IsZero() {
		sh.stallSince = now
		if store.Retryable(err) {
			sh.log.Warn("store terminal output: waiting for Redis, and the terminal's program with it", "err", err)
		}
	}
	quit, closing := sh.w.shells.quitting()
	sh.outMu.Lock()
	giveUp := sh.stallSince.Add(sh.stallLimit)
	sh.outMu.Unlock()
	if !store.Retryable(err) || closing || !now.Before(giveUp) {
		if !sh.dropping {
			sh.log.Warn("store terminal output: dropping it until Redis takes it", "err", err)
			sh.dropping = true
		}
		return false
	}
	wait, cancel := context.WithDeadline(context.Background(), giveUp)
	defer cancel()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		select {
		case <-quit:
			cancel()
		case <-stop:
		}
	}()
	sh.w.st.WaitRetry(wait, err)
	return true
}

// splitChunks cuts buf into valid UTF-8 chunks of at most shellChunkMax
// bytes, which share buf's memory unless they had to be changed. Unless
// last, an incomplete character at the end is returned as rest, to be
// completed by the next read.
func splitChunks(buf []byte, last bool) (chunks [][]byte, rest []byte) {
	end := len(buf)
	if !last {
		for i := len(buf) - 1; i >= 0 && i >= len(buf)-utf8.UTFMax+1; i-- {
			if utf8.RuneStart(buf[i]) {
				if !utf8.FullRune(buf[i:]) {
					end = i
				}
				break
			}
		}
	}
	rest = buf[end:]
	b := buf[:end]
	for len(b) > 0 {
		n := min(len(b), shellChunkMax)
		if n < len(b) {
			// Cut before a character, not inside one.
			for k := n; k > n-utf8.UTFMax && k > 0; k-- {
				if utf8.RuneStart(b[k]) {
					n = k
					break
				}
			}
		}
		c := b[:n:n]
		if !utf8.Valid(c) {
			c = bytes.ToValidUTF8(c, []byte("\uFFFD"))
		}
		if bytes.Contains(c, []byte("OPEN_URL: ")) {
			c = bytes.ReplaceAll(c, []byte("OPEN_URL: "), []byte("[INFO] Opening in browser: "))
		}
		chunks = append(chunks, c)
		b = b[n:]
	}
	return chunks, rest
}

// shellOpCost is the least an op counts against shellInputMax: a resize
// carries no data, and a queue of them for a PTY that reads nothing would
// otherwise grow without bound.
const shellOpCost = 64

// queueOp adds op to ops, which count bytes (each op shellOpCost at
// least), within limit. A resize right after another replaces it (only the
// last has any effect), so resizes, never refused, are at most one an
// input. It reports whether op was taken.
func queueOp(ops []shellOp, bytes, limit int, op shellOp) ([]shellOp, int, bool) {
	if n := len(ops); op.data == nil && n > 0 && ops[n-1].data == nil {
		ops[n-1] = op
		return ops, bytes, true
	}
	cost := max(len(op.data), shellOpCost)
	if op.data != nil && bytes+cost > limit {
		return ops, bytes, false
	}
	return append(ops, op), bytes + cost, true
}

// enqueue adds an input or a resize to the terminal's queue (queueOp).
func (sh *shell) enqueue(op shellOp) {
	sh.inMu.Lock()
	var ok bool
	sh.inQ, sh.inBytes, ok = queueOp(sh.inQ, sh.inBytes, shellInputMax, op)
	sh.inMu.Unlock()
	if !ok {
		sh.log.Warn("terminal input dropped: the process does not read it")
		return
	}
	select {
	case sh.inWake <- struct{}{}:
	default:
	}
}

// inputLoop writes queued input to the PTY and applies resizes, in order.
// A resize is recorded in Redis by sizeApplied's writer, not here: keystrokes queued
// after it (a Ctrl-C) came over a link or the inbox and need no Redis, and
// must not wait for a stalled one (up to 5 s a resize). Runs in its own
// goroutine.
func (sh *shell) inputLoop() {
	for {
		sh.inMu.Lock()
		ops := sh.inQ
		sh.inQ = nil
		sh.inBytes = 0
		sh.inMu.Unlock()
		for _, op := range ops {
			if op.data != nil {
				ptyIn.Add(float64(len(op.data)))
				if flush := sh.p.flushesOutput(op.data); flush || app.HasSignalKey(op.data) {
					sh.signalTyped(flush)
				}
				if _, err := sh.p.f.Write(op.data); err != nil {
					sh.log.Debug("write to terminal", "err", err)
				}
				continue
			}
			if err := sh.p.resize(op.cols, op.rows); err != nil {
				sh.log.Warn("resize terminal", "err", err)
			} else {
				cols, _ := termSize(op.cols, op.rows)
				sh.urls.setCols(int(cols)) // for the URLs it wraps from now on
				sh.sizeApplied(store.ShellSize{Cols: op.cols, Rows: op.rows})
			}
		}
		select {
		case <-sh.inWake:
		case <-sh.stopped:
			return
		}
	}
}

// sizeApplied has a size the PTY was given recorded in Redis (its hash's
// cols and rows), off the input path and never waiting: by a goroutine
// that runs only while there is a size to write, the latest only (sizes
// given meanwhile fold into the last), as providerInput writes a CLI's
// stdin. A write that fails is not tried again: the next resize writes its
// own; nothing is written once the terminal stopped.
func (sh *shell) sizeApplied(size store.ShellSize) {
	sh.sizeMu.Lock()
	defer sh.sizeMu.Unlock()
	sh.size, sh.sizeDirty = size, true
	if !sh.sizeWriting {
		sh.sizeWriting = true
		go sh.recordSizes()
	}
}

// recordSizes writes the pending size until none is left.
func (sh *shell) recordSizes() {
	for {
		sh.sizeMu.Lock()
		select {
		case <-sh.stopped:
			sh.sizeDirty = false
		default:
		}
		if !sh.sizeDirty {
			sh.sizeWriting = false
			sh.sizeMu.Unlock()
			return
		}
		size, record := sh.size, sh.storeSize
		sh.sizeDirty = false
		sh.sizeMu.Unlock()
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := record(ctx, size); err != nil {
			sh.log.Debug("record terminal size", "err", err)
		}
		cancel()
	}
}
