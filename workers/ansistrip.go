package workers

import "strings"

// stripANSI removes terminal escape sequences from s: CSI (ESC [ … final),
// OSC, DCS, SOS, PM and APC strings (up to BEL or ESC \), and two- or
// three-byte ESC sequences, so that login URLs are found in what the user
// sees. It is hand-written: the ANSI package it replaces built width tables
// at process start that cost every gateway and worker 30–70 ms before it
// could answer /readyz.
func stripANSI(s string) string {
	i := strings.IndexByte(s, 0x1b)
	if i < 0 {
		return s
	}
	var b strings.Builder
	b.Grow(len(s))
	for i >= 0 {
		b.WriteString(s[:i])
		s = s[i+1:]
		s = s[escapeLen(s):]
		i = strings.IndexByte(s, 0x1b)
	}
	b.WriteString(s)
	return b.String()
}

// escapeLen is the length of the escape sequence whose ESC was just
// before s (what follows the ESC); an unfinished one takes the rest.
func escapeLen[T string | []byte](s T) int {
	if len(s) == 0 {
		return 0
	}
	switch s[0] {
	case '[': // CSI: parameters and intermediates, then a final byte
		for j := 1; j < len(s); j++ {
			if c := s[j]; c >= 0x40 && c <= 0x7e {
				return j + 1
			} else if c < 0x20 || c > 0x7e {
				return j // malformed: keep what follows
			}
		}
		return len(s)
	case ']', 'P', 'X', '^', '_': // strings ended by BEL or ST (ESC \)
		for j := 1; j < len(s); j++ {
			switch s[j] {
			case 0x07:
				return j + 1
			case 0x1b:
				if j+1 < len(s) && s[j+1] == '\\' {
					return j + 2
				}
				return j
			}
		}
		return len(s)
	}
	// ESC, intermediates (0x20–0x2f), then a final byte.
	j := 0
	for j < len(s) && s[j] >= 0x20 && s[j] <= 0x2f {
		j++
	}
	if j < len(s) {
		j++
	}
	return j
}
