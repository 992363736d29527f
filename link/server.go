package link

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/agentgate/agentgate/store"
)

const (
	// helloTimeout bounds how long a connection may take to say hello.
	helloTimeout = 5 * time.Second
	// maxConns bounds the links one worker holds (a gateway holds one).
	maxConns = 1024
)

// accepted are the control types a link carries: the ones a user waits
// on. Opens, kills, aborts and permission answers take the inbox, whose
// order and persistence they need.
var accepted = map[string]bool{
	store.ControlShellInput:  true,
	store.ControlShellResize: true,
	store.ControlShellAcks:   true,
	store.ControlShellAck:    true,
}

// NewToken returns a random token for a worker's links.
func NewToken() (string, error) {
	b := make([]byte, 32)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("link: make token: %w", err)
	}
	return hex.EncodeToString(b), nil
}

// Server accepts the links of gateways to one worker and hands their
// controls to it.
type Server struct {
	token  string
	hello  []byte // the version-1 hello: the token itself
	handle func(store.Control)
	log    *slog.Logger

	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
	wg     sync.WaitGroup
	// refusals are the links refused at hello (anyone who reaches the
	// port can knock), broken those whose sealed frames did not open
	// (anyone on the path can flip bits): each logged sparingly.
	refusals, broken sparseLog
}

// sparseLog counts events logged at most once a second.
type sparseLog struct {
	at time.Time // when one was last logged
	n  int       // how many since
}

// note counts an event and returns how many to report now, 0 within a
// second of the last report.
func (l *sparseLog) note(now time.Time) int {
	l.n++
	if now.Sub(l.at) < time.Second {
		return 0
	}
	n := l.n
	l.at, l.n = now, 0
	return n
}

// NewServer returns a server that admits gateways which present token and
// calls handle with each control they send, from one goroutine per link:
// handle must be safe for concurrent use.
func NewServer(token string, handle func(store.Control), log *slog.Logger) *Server {
	if log == nil {
		log = slog.Default()
	}
	return &Server{token: token, hello: []byte(helloPrefix + token + "\n"), handle: handle, log: log, conns: map[net.Conn]struct{}{}}
}

// Serve accepts links on ln until ctx ends, then closes ln and every link
// and waits for their goroutines.
func (s *Server) Serve(ctx context.Context, ln net.Listener) error {
	stop := context.AfterFunc(ctx, func() {
		ln.Close()
		s.mu.Lock()
		s.closed = true
		for c := range s.conns {
			c.Close()
		}
		s.mu.Unlock()
	})
	defer stop()
	defer s.wg.Wait()
	for {
		c, err := ln.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				time.Sleep(10 * time.Millisecond)
				continue
			}
			return fmt.Errorf("link: accept: %w", err)
		}
		s.mu.Lock()
		if s.closed || len(s.conns) >= maxConns {
			s.mu.Unlock()
			c.Close()
			continue
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		s.mu.Unlock()
		go s.serveConn(c)
	}
}

// serveConn checks a link's hello, then reads its controls until it ends.
// Runs in its own goroutine.
func (s *Server) serveConn(c net.Conn) {
	defer s.wg.Done()
	defer func() {
		c.Close()
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
	}()
	_ = c.SetDeadline(time.Now().Add(helloTimeout))
	r := bufio.NewReaderSize(c, 16<<10)
	line, err := r.ReadSlice('\n')
	if err != nil || len(line) > maxHello {
		s.refused(c.RemoteAddr().String())
		return
	}
	key, err := s.serverHello(c, r, line)
	if err != nil {
		if errors.Is(err, errHelloRefused) {
			// Neither the token nor why: the caller is not a gateway of ours.
			s.refused(c.RemoteAddr().String())
		}
		return
	}
	_ = c.SetDeadline(time.Time{})
	fr := &frameReader{r: r}
	if key != nil {
		if fr.aead, err = newAEAD(key); err != nil {
			s.log.Error("link closed", "remote", c.RemoteAddr().String(), "err", err)
			return
		}
	}
	for {
		body, err := fr.next()
		if err != nil {
			switch {
			case fr.aead != nil && (errors.Is(err, errFrameOpen) || errors.Is(err, errFrameSize)):
				// Changed on the way, or not from the gateway: nothing of
				// the frame is handed on, and the link ends.
				s.brokenFrame(c.RemoteAddr().String(), err)
			case errors.Is(err, errFrameSize):
				s.log.Warn("link closed", "remote", c.RemoteAddr().String(), "err", err)
			}
			return
		}
		var ctl store.Control
		if err := json.Unmarshal(body, &ctl); err != nil {
			s.log.Warn("drop undecodable link control", "err", err)
			continue
		}
		if !accepted[ctl.Type] {
			s.log.Warn("drop control not carried by links", "type", ctl.Type)
			continue
		}
		s.handle(ctl)
	}
}

// refused logs a refused link, at most once a second with the count of
// those refused meanwhile, so that knocking cannot flood the log.
func (s *Server) refused(remote string) {
	s.mu.Lock()
	n := s.refusals.note(time.Now())
	s.mu.Unlock()
	if n > 0 {
		s.log.Warn("link refused: wrong or missing token", "remote", remote, "refused", n)
	}
}

// brokenFrame logs a link closed on a sealed frame that did not open, as
// sparingly as refused.
func (s *Server) brokenFrame(remote string, err error) {
	s.mu.Lock()
	n := s.broken.note(time.Now())
	s.mu.Unlock()
	if n > 0 {
		s.log.Warn("link closed: a sealed frame was changed on the way or is not the gateway's", "remote", remote, "err", err, "closed", n)
	}
}
