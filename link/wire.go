package link

import (
	"crypto/aes"
	"crypto/cipher"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

const (
	// helloPrefix starts a version-1 hello line, before the token.
	helloPrefix = "agentgate-link/1 "
	// helloOK is the worker's answer to a hello with its token.
	helloOK = "ok\n"
	// maxHello bounds each line of a hello (handshake.go): a version-1
	// hello with its token, a nonce, a proof or its answer.
	maxHello = 256
	// MaxFrame bounds one control on a link; a larger one takes the inbox.
	// On a sealed link it bounds the control, not the sealed frame, which
	// is sealOverhead longer.
	MaxFrame = 1 << 20
	// sealOverhead is what sealing adds to a frame's body: GCM's tag.
	sealOverhead = 16
	// keepBuf is the largest frame buffer kept for the life of a link: a
	// large paste's is dropped after it.
	keepBuf = 64 << 10
)

var (
	// errFrameSize is a frame whose length is zero or over MaxFrame.
	errFrameSize = errors.New("link: frame size out of range")
	// errFrameOpen is a sealed frame that does not open: changed,
	// replayed, reordered or sealed under another key.
	errFrameOpen = errors.New("link: sealed frame does not open")
)

// appendFrame appends body to buf as one frame in clear (versions 1 and 2).
func appendFrame(buf, body []byte) []byte {
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(body)))
	return append(buf, body...)
}

// newAEAD returns AES-256-GCM under key (32 bytes).
func newAEAD(key []byte) (cipher.AEAD, error) {
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, fmt.Errorf("link: %w", err)
	}
	return cipher.NewGCM(b)
}

// frameCounter is the GCM nonce of one direction of a sealed link: the
// number of frames sealed before, big-endian in 96 bits. A key is used for
// one connection and one direction only, so a nonce never repeats under
// it; a frame replayed, dropped or moved opens under no other count.
type frameCounter struct {
	nonce [12]byte
	n     uint64
}

// next returns the nonce of the next frame, or false once the count is
// spent (2^64 frames: never, in practice).
func (c *frameCounter) next() ([]byte, bool) {
	if c.n == math.MaxUint64 {
		return nil, false
	}
	binary.BigEndian.PutUint64(c.nonce[4:], c.n)
	c.n++
	return c.nonce[:], true
}

// frameWriter makes the frames of one link, sealed when aead is set (a
// version-3 link), into a buffer it reuses: no allocation per frame once
// the buffer has grown to the frames' size.
type frameWriter struct {
	aead cipher.AEAD
	ctr  frameCounter
	hdr  [4]byte // the length prefix, the sealed body's additional data
	buf  []byte
}

// frame returns body as one frame, valid until the next call.
func (w *frameWriter) frame(body []byte) ([]byte, error) {
	if cap(w.buf) > keepBuf {
		w.buf = nil
	}
	if w.aead == nil {
		w.buf = appendFrame(w.buf[:0], body)
		return w.buf, nil
	}
	nonce, ok := w.ctr.next()
	if !ok {
		return nil, errors.New("link: frame count spent")
	}
	binary.BigEndian.PutUint32(w.hdr[:], uint32(len(body)+sealOverhead))
	w.buf = append(w.buf[:0], w.hdr[:]...)
	w.buf = w.aead.Seal(w.buf, nonce, body, w.hdr[:])
	return w.buf, nil
}

// frameReader reads the frames of one link from r, opening them when aead
// is set, into a buffer it reuses.
type frameReader struct {
	r    io.Reader
	aead cipher.AEAD
	ctr  frameCounter
	hdr  [4]byte
	buf  []byte
}

// next reads one frame and returns its body, valid until the next call.
// Any error ends the link: after one, the stream is out of step.
func (fr *frameReader) next() ([]byte, error) {
	if cap(fr.buf) > keepBuf {
		fr.buf = nil
	}
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(fr.hdr[:])
	lo, hi := uint32(1), uint32(MaxFrame)
	if fr.aead != nil {
		lo, hi = lo+sealOverhead, hi+sealOverhead
	}
	if size < lo || size > hi {
		return nil, fmt.Errorf("%w: %d bytes", errFrameSize, size)
	}
	if cap(fr.buf) < int(size) {
		fr.buf = make([]byte, size)
	}
	fr.buf = fr.buf[:size]
	if _, err := io.ReadFull(fr.r, fr.buf); err != nil {
		return nil, fmt.Errorf("link: read frame: %w", err)
	}
	if fr.aead == nil {
		return fr.buf, nil
	}
	nonce, ok := fr.ctr.next()
	if !ok {
		return nil, errFrameOpen
	}
	body, err := fr.aead.Open(fr.buf[:0], nonce, fr.buf, fr.hdr[:])
	if err != nil {
		return nil, errFrameOpen
	}
	return body, nil
}
