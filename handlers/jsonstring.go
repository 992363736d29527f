package handlers

import (
	"encoding/binary"
	"math/bits"
	"unicode/utf8"
)

// jsonEscape gives, for each ASCII byte, what follows the backslash of its
// escape inside a JSON string: 0 for a byte that stands for itself, 'u' for
// a control byte without a short escape (\u00XX).
var jsonEscape = func() (t [utf8.RuneSelf]byte) {
	for c := range 0x20 {
		t[c] = 'u'
	}
	t['\n'], t['\r'], t['\t'], t['"'], t['\\'] = 'n', 'r', 't', '"', '\\'
	return t
}()

// appendJSONString appends s as a JSON string. Invalid UTF-8 becomes
// U+FFFD, as encoding/json writes it: a WebSocket text frame must be valid
// UTF-8, and a terminal's bytes need not be.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	// Room for s and a few escapes (a line break every few dozen bytes);
	// output denser in escapes grows as append grows it.
	if free := cap(b) - len(b); free < len(s)+2 {
		b = append(make([]byte, 0, len(b)+len(s)+len(s)/16+2), b...)
	}
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		// Eight bytes at a time: most terminal output is plain ASCII, and
		// the mask tells where the first byte that is not plain is.
		for i+8 <= len(s) {
			x := binary.LittleEndian.Uint64([]byte(s[i : i+8]))
			if m := specialBytes(x); m != 0 {
				i += bits.TrailingZeros64(m) >> 3
				break
			}
			i += 8
		}
		if i >= len(s) {
			break
		}
		c := s[i]
		if c < utf8.RuneSelf {
			e := jsonEscape[c]
			if e == 0 {
				i++
				continue
			}
			b = append(b, s[start:i]...)
			if e == 'u' {
				b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
			} else {
				b = append(b, '\\', e)
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(s[i:])
		if r != utf8.RuneError || size != 1 {
			i += size
			continue
		}
		b = append(b, s[start:i]...)
		b = append(b, `\ufffd`...)
		i++
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// specialBytes returns a mask with the top bit set of each byte of x (read
// little-endian) that is not plain inside a JSON string: from 0x80, below
// 0x20, a quote or a backslash. Bits above the lowest set byte may be set
// for plain bytes (the borrow of the zero-byte test runs upwards), so only
// the lowest one is exact: enough to find the first.
func specialBytes(x uint64) uint64 {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	// Adding 0x60 to a byte below 0x80 carries into no other byte and
	// sets its top bit exactly from 0x20 on.
	zero := func(v uint64) uint64 { return (v - ones) &^ v & highs }
	return (x & highs) | (^(x + ones*0x60) & highs) | zero(x^(ones*'"')) | zero(x^(ones*'\\'))
}
