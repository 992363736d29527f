package link

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
)

const (
	// helloPrefix starts a gateway's hello line, before the token.
	helloPrefix = "agentgate-link/1 "
	// helloOK is the worker's answer to a hello with its token.
	helloOK = "ok\n"
	// maxHello bounds a hello line: the prefix, a token, a newline.
	maxHello = 256
	// MaxFrame bounds one control on a link; a larger one takes the inbox.
	MaxFrame = 1 << 20
)

// errFrameSize is a frame whose length is zero or over MaxFrame.
var errFrameSize = errors.New("link: frame size out of range")

// appendFrame appends body to buf as one frame.
func appendFrame(buf, body []byte) []byte {
	buf = binary.BigEndian.AppendUint32(buf, uint32(len(body)))
	return append(buf, body...)
}

// readFrame reads one frame from r into buf (grown as needed) and returns
// its body.
func readFrame(r io.Reader, buf []byte) ([]byte, error) {
	var n [4]byte
	if _, err := io.ReadFull(r, n[:]); err != nil {
		return nil, err
	}
	size := binary.BigEndian.Uint32(n[:])
	if size == 0 || size > MaxFrame {
		return nil, fmt.Errorf("%w: %d bytes", errFrameSize, size)
	}
	if cap(buf) < int(size) {
		buf = make([]byte, size)
	}
	buf = buf[:size]
	if _, err := io.ReadFull(r, buf); err != nil {
		return nil, fmt.Errorf("link: read frame: %w", err)
	}
	return buf, nil
}
