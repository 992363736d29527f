package workers

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

// TestReadLine: lines shorter and longer than the reader's buffer, CRLF,
// a last line without its newline, and a line over maxLineBytes, which is
// consumed and reported while the lines around it are read whole.
func TestReadLine(t *testing.T) {
	long := strings.Repeat("x", 10_000) // over the 4 KiB buffer
	tooLong := strings.Repeat("y", maxLineBytes+1)
	in := "a\r\n" + long + "\n\n" + tooLong + "\nb\n" + long + "c\nlast"
	rd := bufio.NewReaderSize(strings.NewReader(in), 4<<10)
	type read struct {
		line string
		err  error
	}
	var got []read
	for {
		line, err := readLine(rd)
		got = append(got, read{string(line), err})
		if err != nil && !errors.Is(err, errLineTooLong) {
			break
		}
	}
	require.Equal(t, []read{
		{"a", nil}, {long, nil}, {"", nil}, {"", errLineTooLong}, {"b", nil}, {long + "c", nil}, {"last", io.EOF},
	}, got)
}

// BenchmarkReadLine reads lines of a run's typical size (one stream-json
// event): no allocation per line.
func BenchmarkReadLine(b *testing.B) {
	line := `{"type":"assistant","message":{"content":[{"type":"text","text":"` + strings.Repeat("word ", 60) + `"}]}}` + "\n"
	in := strings.NewReader("")
	rd := bufio.NewReaderSize(in, 4<<10)
	data := strings.Repeat(line, 1000)
	b.SetBytes(int64(len(line)))
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		if i%1000 == 0 {
			in.Reset(data)
			rd.Reset(in)
		}
		if _, err := readLine(rd); err != nil {
			b.Fatal(err)
		}
	}
}
