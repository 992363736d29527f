package handlers

import (
	"encoding/binary"
	"unicode/utf8"
)

// plainJSON marks the bytes that stand for themselves inside a JSON string:
// printable ASCII but the quote and the backslash.
var plainJSON = func() (t [256]bool) {
	for c := 0x20; c < 0x80; c++ {
		t[c] = c != '"' && c != '\\'
	}
	return t
}()

// appendJSONString appends s as a JSON string. Invalid UTF-8 becomes
// U+FFFD, as encoding/json writes it: a WebSocket text frame must be valid
// UTF-8, and a terminal's bytes need not be.
func appendJSONString(b []byte, s string) []byte {
	const hex = "0123456789abcdef"
	b = append(b, '"')
	start := 0
	for i := 0; i < len(s); {
		// Eight plain bytes at a time: most terminal output is ASCII.
		for i+8 <= len(s) && plainWord(binary.LittleEndian.Uint64([]byte(s[i:i+8]))) {
			i += 8
		}
		if i >= len(s) {
			break
		}
		c := s[i]
		if plainJSON[c] {
			i++
			continue
		}
		if c >= utf8.RuneSelf {
			r, size := utf8.DecodeRuneInString(s[i:])
			if r != utf8.RuneError || size != 1 {
				i += size
				continue
			}
			b = append(b, s[start:i]...)
			b = append(b, `\ufffd`...)
			i++
			start = i
			continue
		}
		b = append(b, s[start:i]...)
		switch c {
		case '"', '\\':
			b = append(b, '\\', c)
		case '\n':
			b = append(b, '\\', 'n')
		case '\r':
			b = append(b, '\\', 'r')
		case '\t':
			b = append(b, '\\', 't')
		default:
			b = append(b, '\\', 'u', '0', '0', hex[c>>4], hex[c&0xf])
		}
		i++
		start = i
	}
	b = append(b, s[start:]...)
	return append(b, '"')
}

// plainWord reports whether eight bytes are all plain (see plainJSON): none
// from 0x80, none below 0x20, no quote, no backslash. The tests are the
// zero-byte bit tricks: (v-0x01…)&^v has a byte's top bit set when that
// byte of v is zero.
func plainWord(x uint64) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	if x&highs != 0 {
		return false
	}
	// Every byte is below 0x80, so adding 0x60 carries into no other byte
	// and sets the top bit exactly of the bytes from 0x20 on.
	if ^(x+ones*0x60)&highs != 0 {
		return false
	}
	zero := func(v uint64) bool { return (v-ones)&^v&highs != 0 }
	return !zero(x^(ones*'"')) && !zero(x^(ones*'\\'))
}
