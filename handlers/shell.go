package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/labstack/echo/v4"
	"github.com/olahol/melody"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
)

const (
	// DefaultShellDetachTimeout is how long a terminal lives unwatched; the
	// gateway refreshes the watch time of its terminals well within it.
	DefaultShellDetachTimeout = 30 * time.Minute
	// shellReplayChunk is how many stored chunks one catch-up read fetches,
	// and shellReplayBytes how many bytes of frames it keeps at most (one
	// frame at least): a 32 KiB chunk of control bytes is a frame of 192
	// KiB, and a catch-up holds what it read while its socket is slow.
	shellReplayChunk = 64
	shellReplayBytes = 1 << 20
)

// shellSocket is one /shell socket and the terminal it follows.
type shellSocket struct {
	c  *conn
	mu sync.Mutex
	w  *watch
	// clientAcks is set once the client sends acks: its terminal's flow
	// then follows what it rendered, not what was written to its socket
	// (kernel buffers hold megabytes a slow client has not read).
	clientAcks atomic.Bool
	// sentSeq is the seq of the last chunk written to the socket: a client
	// cannot have rendered more, and an ack past it is taken as it.
	sentSeq atomic.Int64
	// taken is set when another socket's init took the socket's terminal
	// (terminals.displaceLocked), and told when it was last said so to
	// input that came after (both under mu).
	taken bool
	told  time.Time
}

// tellTaken answers input or a resize of a socket whose terminal another
// socket took, at most every takenNoticeEvery, and reports whether it was
// taken. The answer is a notice, not an error frame: Claude Code UI's
// frontend shows output only, and its user typing into an old window
// would see nothing happen.
func (sock *shellSocket) tellTaken() bool {
	sock.mu.Lock()
	taken, tell := sock.taken, sock.taken && time.Since(sock.told) >= takenNoticeEvery
	if tell {
		sock.told = time.Now()
	}
	sock.mu.Unlock()
	if tell {
		sock.notice("warn", noticeTaken)
	}
	return taken
}

// takenNoticeEvery spaces the notices of a taken terminal: one per burst
// of keystrokes, not one per key.
const takenNoticeEvery = 5 * time.Second

// ackedSeq is how far a client's ack of seq lets its terminal's flow go.
func (sock *shellSocket) ackedSeq(seq int64) int64 { return min(seq, sock.sentSeq.Load()) }

func (s *Server) newShellSockets() *melody.Melody {
	m := melody.New()
	m.Config.MaxMessageSize = s.cfg.MaxMessageSize
	m.Config.MessageBufferSize = melodyBufferSize
	m.Config.PingPeriod = s.cfg.PingPeriod
	m.Config.PongWait = 2*s.cfg.PingPeriod + 10*time.Second
	// A socket's read buffer lives as long as it does; client frames are
	// small, and a larger one is read past the buffer, not through it.
	m.Upgrader.ReadBufferSize = 512
	m.Upgrader.WriteBufferPool = &sync.Pool{}
	m.Upgrader.CheckOrigin = s.origins.allows
	m.HandleConnect(func(ms *melody.Session) {
		user, _ := ms.Get("user")
		sock := &shellSocket{c: newConn(ms, user.(app.User), s.cfg.QueueSize, 0)}
		sock.c.share = shellMelodyFrames
		if err := limitUnsent(ms, shellUnsentMax); err != nil {
			s.log.Debug("limit a terminal socket's unsent bytes", "err", err)
		}
		sock.c.quota, sock.c.refusal = quotaOf(ms), s.shellRefusal
		ms.Set("shell", sock)
		releaseUpgrade(ms)
		s.shells.mu.Lock()
		s.shells.socks[sock] = struct{}{}
		s.shells.mu.Unlock()
		shellMetrics.sockets.Inc()
		// As for chat sockets: one upgraded while Drain ran closes itself.
		if s.drained.Load() {
			sock.c.closeNow(closeShutdown)
		}
	})
	m.HandleDisconnect(func(ms *melody.Session) {
		sock := shellSocketOf(ms)
		sock.c.closed.Store(true)
		sock.c.cancel()
		s.shells.mu.Lock()
		delete(s.shells.socks, sock)
		s.shells.mu.Unlock()
		s.shells.detachSocket(sock)
		shellMetrics.sockets.Dec()
	})
	m.HandleSentMessage(func(ms *melody.Session, frame []byte) {
		sock := shellSocketOf(ms)
		sock.c.sent(len(frame))
		shellMetrics.wrote(frame)
		if seq, ok := frameSeq(frame); ok {
			sock.sentSeq.Store(seq)
			if !sock.clientAcks.Load() {
				s.shells.written(sock, seq)
			}
		}
	})
	m.HandleMessage(func(ms *melody.Session, data []byte) { onFreshStack(func() { s.onShellMessage(ms, data) }) })
	m.HandleMessageBinary(func(ms *melody.Session, _ []byte) {
		if c := shellSocketOf(ms).c; c.admit(1) {
			c.reply(&app.ShellError{Type: "error", Message: app.ErrTextInvalidPayload})
		}
	})
	m.HandleError(func(ms *melody.Session, err error) {
		if errors.Is(err, melody.ErrMessageBufferFull) {
			shellSocketOf(ms).c.closeWith(closeSlow)
		}
	})
	return m
}

func shellSocketOf(ms *melody.Session) *shellSocket {
	v, _ := ms.Get("shell")
	return v.(*shellSocket)
}

// serveShell authenticates the upgrade of /shell: 401 before any upgrade.
func (s *Server) serveShell(c echo.Context) error { return s.serveUpgrade(c, s.shellSockets) }

// maxAckFrame is longer than any ack a client sends ({"type":"ack","seq":N}).
const maxAckFrame = 128

// ackPrefix starts an ack as the bundled page (JSON.stringify) writes it.
var ackPrefix = []byte(`{"type":"ack",`)

// onShellMessage handles one /shell frame, on the socket's read goroutine,
// so a socket's frames keep their order: an init has queued its open
// control before the input that follows it is sent.
func (s *Server) onShellMessage(ms *melody.Session, data []byte) {
	sock := shellSocketOf(ms)
	defer func() {
		if p := recover(); p != nil {
			s.log.Error("shell message handler panicked", "panic", p, "user", sock.c.user.Name)
			sock.notice("error", "Error: internal error")
		}
	}()
	// An ack does not pay the frame rate: a rendering client acks each
	// frame it shows, and an ack costs a comparison (and at most one
	// control in flight). A frame short enough to be one pays the ack rate
	// before it is parsed; past it, an ack as the bundled page writes it is
	// dropped (acks are cumulative: the next says all it said), and any
	// other frame pays the frame rate, as a longer one does first.
	//
	// A frame over the frame rate waits for it rather than being dropped
	// (awaitFrames): a terminal's frames are what its user typed, pasted
	// or scrolled, and a client that shows only output frames would never
	// learn that a keystroke was lost.
	paid := len(data) > maxAckFrame
	if !paid && !sock.c.admitAck() {
		if bytes.HasPrefix(data, ackPrefix) {
			return
		}
		paid = true
	}
	if paid && !sock.c.awaitFrames(1) {
		return
	}
	msg, err := app.ParseShellMessage(data)
	if err == nil && msg.Type == "ack" {
		sock.clientAcks.Store(true)
		s.shells.written(sock, sock.ackedSeq(*msg.Seq))
		return
	}
	if !paid && !sock.c.awaitFrames(1) {
		return
	}
	if err != nil {
		if shellFrameType(data) == "init" {
			sock.refuse(err.Error())
		} else {
			sock.error(err.Error())
		}
		return
	}
	ctx, cancel := context.WithTimeout(sock.c.ctx, requestTimeout)
	defer cancel()
	switch msg.Type {
	case "init":
		s.shells.init(ctx, sock, msg, s.pickWorker)
	case "input":
		s.shells.input(ctx, sock, msg.Data)
	case "resize":
		s.shells.control(ctx, sock, store.ControlShellResize, store.ShellSize{Cols: msg.Cols, Rows: msg.Rows})
	}
}

// shellFrameType is the type a frame the parser refused says it has, if
// any: a refused init is answered as a refusal (shellSocket.refuse).
func shellFrameType(data []byte) string {
	var head struct {
		Type string `json:"type"`
	}
	_ = json.Unmarshal(data, &head)
	return head.Type
}

// pickWorker chooses a live worker for a new terminal, at random so that
// terminals spread over the workers. A draining worker is passed over: it
// ends its terminals and would refuse a new one.
func (s *Server) pickWorker(ctx context.Context) (string, error) {
	live, err := s.st.LiveWorkers(ctx)
	if err != nil {
		return "", err
	}
	live = slices.DeleteFunc(live, func(w store.WorkerInfo) bool { return w.Draining })
	if len(live) == 0 {
		return "", app.ErrNoWorker
	}
	// One with room for a terminal, as its last heartbeat said; when none
	// has, any: the worker refuses with its own words.
	if room := slices.DeleteFunc(slices.Clone(live), store.WorkerInfo.TerminalsFull); len(room) > 0 {
		live = room
	}
	return live[rand.IntN(len(live))].ID, nil
}

func (sock *shellSocket) error(text string) {
	sock.c.reply(&app.ShellError{Type: "error", Message: text})
}

// refuse answers an init that opens no terminal: the error frame for
// clients that read it, then the same words as a red notice, because
// Claude Code UI's shell client handles only output, auth_url and url_open
// frames (useShellConnection.ts at afc717e6) and would otherwise show a
// blank terminal. Errors that answer other frames stay error frames only: a
// line written into a running program's screen (an editor, a TUI) would
// garble it, and that terminal is there to say what happens.
func (sock *shellSocket) refuse(text string) {
	sock.error(text)
	sock.notice("error", text)
}

func (sock *shellSocket) notice(level, text string) { sock.genNotice(level, text, 0) }

// genNotice is a notice that begins the socket's view of terminal
// generation gen (app.ShellOutput.Gen).
func (sock *shellSocket) genNotice(level, text string, gen int64) {
	sock.c.reply(&app.ShellOutput{Type: "output", Data: app.ShellNotice(level, text), Gen: gen})
}

// trimNotice tells a socket that n chunks it should have had are no longer
// stored (PROTOCOL §4: a notice, then what remains).
func trimNotice(n int64) app.ShellOutput {
	return app.ShellOutput{Type: "output", Data: app.ShellNotice("warn",
		fmt.Sprintf("[Output trimmed: %d earlier chunks are no longer stored]", n))}
}

// genNoticeFrame encodes a gateway notice (an output frame without seq)
// that begins the socket's view of terminal generation gen.
func genNoticeFrame(level, text string, gen int64) []byte {
	b, _ := json.Marshal(app.ShellOutput{Type: "output", Data: app.ShellNotice(level, text), Gen: gen})
	return b
}

// frameSeq reads the seq of an output frame (outputFrame puts it last); a
// notice or another frame has none.
func frameSeq(frame []byte) (int64, bool) {
	i := bytes.LastIndex(frame, []byte(`"seq":`))
	if i < 0 || !bytes.HasSuffix(frame, []byte("}")) {
		return 0, false
	}
	n, err := strconv.ParseInt(string(frame[i+len(`"seq":`):len(frame)-1]), 10, 64)
	return n, err == nil
}

// outputFrame encodes an output frame with its seq, as
// json.Marshal(app.ShellOutput{…}) does but without its reflection and
// HTML escaping: terminal output is the gateway's largest per-byte cost.
//
// The frame is built in a reused buffer and copied out at its size: output
// dense in escapes (seq's "\r\n" every few bytes, colour codes) outgrew
// any guess of its size, and the reallocations doubled the garbage of a
// gateway relaying a flood.
func outputFrame(seq int64, data string) []byte {
	scratch := frameScratch.Get().(*[]byte)
	b := append((*scratch)[:0], `{"type":"output","data":`...)
	b = appendJSONString(b, data)
	b = append(b, `,"seq":`...)
	b = strconv.AppendInt(b, seq, 10)
	b = append(b, '}')
	frame := bytes.Clone(b)
	if cap(b) <= frameScratchMax {
		*scratch = b
		frameScratch.Put(scratch)
	}
	return frame
}

// frameScratch holds the buffers outputFrame builds frames in; one larger
// than frameScratchMax (a worker's 32 KiB chunk escaped byte for byte
// takes 192 KiB) is left to the collector.
var frameScratch = sync.Pool{New: func() any { return new([]byte) }}

const frameScratchMax = 256 << 10
