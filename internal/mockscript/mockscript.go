// Package mockscript is what the scripted model API mocks share: the turns
// a test scripts, which request takes which turn, the log of requests, and
// the count of requests a hanging turn holds.
package mockscript

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
)

// Script is a mock's script of turns T and its log of requests R. It is
// safe for concurrent use.
type Script[T, R any] struct {
	when func(T) string

	mu      sync.Mutex
	turns   []T
	used    []bool
	def     T
	reqs    []R
	hanging int
}

// New returns an empty script whose unmatched requests get def. when
// returns a turn's marker: the turn is taken by the first request whose
// prompt contains it ("" matches any prompt).
func New[T, R any](def T, when func(T) string) *Script[T, R] {
	return &Script[T, R]{def: def, when: when}
}

// Add appends turns to the script; safe to call while requests are served.
func (s *Script[T, R]) Add(turns ...T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.turns = append(s.turns, turns...)
	s.used = append(s.used, make([]bool, len(turns))...)
}

// SetDefault sets the turn of requests that no scripted turn matches.
func (s *Script[T, R]) SetDefault(t T) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.def = t
}

// Pending returns how many scripted turns have not been taken yet.
func (s *Script[T, R]) Pending() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, u := range s.used {
		if !u {
			n++
		}
	}
	return n
}

// Take returns the first turn not taken yet whose marker is in prompt, and
// its index; or the default turn and -1.
func (s *Script[T, R]) Take(prompt string) (T, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i, t := range s.turns {
		if w := s.when(t); s.used[i] || (w != "" && !strings.Contains(prompt, w)) {
			continue
		}
		s.used[i] = true
		return t, i
	}
	return s.def, -1
}

// Record appends a request to the log.
func (s *Script[T, R]) Record(r R) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.reqs = append(s.reqs, r)
}

// Requests returns a copy of every request recorded so far, in order.
func (s *Script[T, R]) Requests() []R {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]R(nil), s.reqs...)
}

// Hang holds a request, counted by Hanging, until stop or closed is closed.
func (s *Script[T, R]) Hang(stop, closed <-chan struct{}) {
	s.mu.Lock()
	s.hanging++
	s.mu.Unlock()
	select {
	case <-stop:
	case <-closed:
	}
	s.mu.Lock()
	s.hanging--
	s.mu.Unlock()
}

// Hanging returns how many requests a hanging turn holds now; poll it to
// know a CLI is mid-stream before signalling it.
func (s *Script[T, R]) Hanging() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.hanging
}

// Split cuts s into n pieces of roughly equal rune length (n < 1 means 1),
// the chunks a turn's text is streamed in.
func Split(s string, n int) []string {
	r := []rune(s)
	if n < 1 {
		n = 1
	}
	if n > len(r) {
		n = max(len(r), 1)
	}
	out := make([]string, 0, n)
	for i := range n {
		out = append(out, string(r[i*len(r)/n:(i+1)*len(r)/n]))
	}
	return out
}

// WriteJSON answers a request with status and v as JSON.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err) // the mocks' own values always encode
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = w.Write(b)
}

// SSEEvent is one Server-Sent Event as the mocks' own tests read it back.
type SSEEvent struct {
	Name string
	Data map[string]any
}

// ReadSSE reads a Server-Sent Events stream to its end: an event for each
// blank-line-terminated block that has a data line.
func ReadSSE(r io.Reader) ([]SSEEvent, error) {
	var events []SSEEvent
	var cur SSEEvent
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if name, ok := strings.CutPrefix(line, "event: "); ok {
			cur.Name = name
		} else if data, ok := strings.CutPrefix(line, "data: "); ok {
			if err := json.Unmarshal([]byte(data), &cur.Data); err != nil {
				return events, fmt.Errorf("read SSE data %q: %w", data, err)
			}
		} else if line == "" && cur.Data != nil {
			events = append(events, cur)
			cur = SSEEvent{}
		}
	}
	if cur.Data != nil {
		events = append(events, cur)
	}
	return events, sc.Err()
}
