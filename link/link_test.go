package link

import (
	"bytes"
	"context"
	"crypto/cipher"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store"
)

// worker is a link server on 127.0.0.1 that records what it is handed.
type worker struct {
	addr, token string
	stop        context.CancelFunc
	done        chan struct{}

	mu  sync.Mutex
	got []store.Control
}

func startWorker(t *testing.T) *worker {
	t.Helper()
	return startWorkerLog(t, nil)
}

// startWorkerLog is startWorker with the server's logger.
func startWorkerLog(t *testing.T, log *slog.Logger) *worker {
	t.Helper()
	token, err := NewToken()
	require.NoError(t, err)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	w := &worker{addr: ln.Addr().String(), token: token, stop: cancel, done: make(chan struct{})}
	srv := NewServer(token, func(c store.Control) {
		w.mu.Lock()
		w.got = append(w.got, c)
		w.mu.Unlock()
	}, log)
	go func() { defer close(w.done); _ = srv.Serve(ctx, ln) }()
	t.Cleanup(func() { w.close() })
	return w
}

func (w *worker) close() {
	w.stop()
	<-w.done
}

func (w *worker) controls() []store.Control {
	w.mu.Lock()
	defer w.mu.Unlock()
	return append([]store.Control(nil), w.got...)
}

func (w *worker) waitControls(t *testing.T, n int) []store.Control {
	t.Helper()
	require.Eventually(t, func() bool { return len(w.controls()) >= n }, 5*time.Second, time.Millisecond)
	return w.controls()
}

func input(i int) store.Control {
	data, _ := json.Marshal("key " + strconv.Itoa(i))
	return store.Control{Type: store.ControlShellInput, Shell: "s", Gen: 1, Data: data}
}

// linkUp sends a first control to worker (it takes the inbox and starts
// the dial), waits for the link, and then for the quiet time after which
// controls take it.
func linkUp(t *testing.T, c *Client, worker string) {
	t.Helper()
	require.ErrorIs(t, c.Send(context.Background(), worker, input(-1)), ErrNoLink, "the first control, while the link is dialed")
	require.Eventually(t, func() bool { return linked(c, worker) }, 5*time.Second, time.Millisecond)
	time.Sleep(switchQuiet)
}

// linked reports whether c holds a link to worker.
func linked(c *Client, worker string) bool {
	c.mu.Lock()
	p := c.peers[worker]
	c.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.conn != nil
}

func TestSendInOrder(t *testing.T) {
	w := startWorker(t)
	c := NewClient(func(context.Context, string) (string, string, error) { return w.addr, w.token, nil }, nil)
	defer c.Close()
	linkUp(t, c, "w1")
	const n = 500
	for i := range n {
		require.NoError(t, c.Send(context.Background(), "w1", input(i)))
	}
	got := w.waitControls(t, n)
	for i, ctl := range got {
		require.Equal(t, input(i), ctl)
	}
}

func TestSendFallsBack(t *testing.T) {
	w := startWorker(t)
	var mu sync.Mutex
	lookups := 0
	var addr, token string
	c := NewClient(func(context.Context, string) (string, string, error) {
		mu.Lock()
		defer mu.Unlock()
		lookups++
		return addr, token, nil
	}, nil)
	defer c.Close()
	ctx := context.Background()
	looked := func() int { mu.Lock(); defer mu.Unlock(); return lookups }

	// No link advertised: the inbox, and no new lookup before retryAfter.
	require.ErrorIs(t, c.Send(ctx, "w1", input(0)), ErrNoLink)
	require.Eventually(t, func() bool { return looked() == 1 }, 5*time.Second, time.Millisecond)
	require.ErrorIs(t, c.Send(ctx, "w1", input(1)), ErrNoLink)
	time.Sleep(10 * time.Millisecond)
	require.Equal(t, 1, looked())

	// Controls a link does not carry, and ones too large for a frame.
	mu.Lock()
	addr, token = w.addr, w.token
	mu.Unlock()
	linkUp(t, c, "w2")
	require.ErrorIs(t, c.Send(ctx, "w2", store.Control{Type: store.ControlShellOpen, Shell: "s", Gen: 1}), ErrNoLink)
	require.NoError(t, c.Send(ctx, "w2", input(2)))
	big, _ := json.Marshal(string(bytes.Repeat([]byte("a"), MaxFrame)))
	require.ErrorIs(t, c.Send(ctx, "w2", store.Control{Type: store.ControlShellInput, Shell: "s", Gen: 1, Data: big}), ErrNoLink)
	// The large one took the inbox: the next waits, not to overtake it.
	require.ErrorIs(t, c.Send(ctx, "w2", input(3)), ErrNoLink)
	time.Sleep(switchQuiet)
	require.NoError(t, c.Send(ctx, "w2", input(4)))
	require.Equal(t, []store.Control{input(2), input(4)}, w.waitControls(t, 2))

	// The worker goes away: sends fail over to the inbox, none blocks.
	w.close()
	require.Eventually(t, func() bool { return c.Send(ctx, "w2", input(5)) != nil }, 5*time.Second, time.Millisecond)
	start := time.Now()
	require.ErrorIs(t, c.Send(ctx, "w2", input(6)), ErrNoLink)
	require.Less(t, time.Since(start), 100*time.Millisecond, "a send does not wait for a dial")

	// A wrong token is refused at hello.
	w2 := startWorker(t)
	mu.Lock()
	addr, token = w2.addr, "not-"+w2.token
	mu.Unlock()
	for range 3 {
		require.ErrorIs(t, c.Send(ctx, "w3", input(7)), ErrNoLink)
		time.Sleep(switchQuiet)
	}
	require.Empty(t, w2.controls())
}

// TestSendBlackholed: a worker whose link never answers costs sends
// nothing; its dials back off.
func TestSendBlackholed(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	defer ln.Close() // accepts in the kernel's backlog, never says ok
	c := NewClient(func(context.Context, string) (string, string, error) { return ln.Addr().String(), "t", nil }, nil)
	defer c.Close()
	for range 20 {
		start := time.Now()
		require.ErrorIs(t, c.Send(context.Background(), "w1", input(0)), ErrNoLink)
		require.Less(t, time.Since(start), 100*time.Millisecond)
		time.Sleep(10 * time.Millisecond)
	}
	require.Eventually(t, func() bool {
		c.mu.Lock()
		p := c.peers["w1"]
		c.mu.Unlock()
		p.mu.Lock()
		defer p.mu.Unlock()
		return !p.dialing && p.backoff >= retryAfter
	}, 5*time.Second, 10*time.Millisecond, "the dial timed out and backs off")
}

func TestSendRedialsNewWorker(t *testing.T) {
	w := startWorker(t)
	var mu sync.Mutex
	cur := w
	c := NewClient(func(context.Context, string) (string, string, error) {
		mu.Lock()
		defer mu.Unlock()
		return cur.addr, cur.token, nil
	}, nil)
	defer c.Close()
	ctx := context.Background()
	linkUp(t, c, "w1")
	require.NoError(t, c.Send(ctx, "w1", input(0)))
	w.waitControls(t, 1)
	w.close()
	require.Eventually(t, func() bool { return !linked(c, "w1") }, 5*time.Second, time.Millisecond, "the client notices the link's end")
	// The client notices the end of the link, and a later send dials again
	// (the new server stands for a restarted listener).
	w2 := startWorker(t)
	mu.Lock()
	cur = w2
	mu.Unlock()
	// Acks take a link as soon as it is up; input waits for a pause in
	// its terminal's input through the inbox.
	ack := store.Control{Type: store.ControlShellAcks, Data: []byte(`[{"shell":"s","gen":1,"seq":1}]`)}
	require.Eventually(t, func() bool {
		require.ErrorIs(t, c.Send(ctx, "w1", input(1)), ErrNoLink, "input during the quiet time")
		return c.Send(ctx, "w1", ack) == nil
	}, 10*time.Second, 10*time.Millisecond)
	require.ErrorIs(t, c.Send(ctx, "w1", input(2)), ErrNoLink)
	time.Sleep(switchQuiet)
	require.NoError(t, c.Send(ctx, "w1", input(3)))
	require.Equal(t, []store.Control{ack, input(3)}, w2.waitControls(t, 2))
}

// rawLink dials w and says hello with token.
func rawLink(t *testing.T, w *worker, token string) net.Conn {
	t.Helper()
	conn, err := net.Dial("tcp", w.addr)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	_, err = conn.Write([]byte(helloPrefix + token + "\n"))
	require.NoError(t, err)
	return conn
}

// ended reports whether the server closed conn (within a second).
func ended(conn net.Conn) bool {
	_ = conn.SetReadDeadline(time.Now().Add(time.Second))
	var b [16]byte
	for {
		_, err := conn.Read(b[:])
		if err != nil {
			var ne net.Error
			return !(errors.As(err, &ne) && ne.Timeout())
		}
	}
}

// TestServerRefuses: what a stranger on the network can send.
func TestServerRefuses(t *testing.T) {
	w := startWorker(t)
	frame := func(body []byte) []byte { return appendFrame(nil, body) }
	good, _ := json.Marshal(input(7))
	for name, tc := range map[string]struct {
		token string
		send  []byte
	}{
		"wrong token":        {token: w.token[:len(w.token)-1] + "x"},
		"empty token":        {token: ""},
		"zero frame":         {token: w.token, send: []byte{0, 0, 0, 0}},
		"oversized frame":    {token: w.token, send: binary.BigEndian.AppendUint32(nil, MaxFrame+1)},
		"huge length":        {token: w.token, send: []byte{0xff, 0xff, 0xff, 0xff}},
		"dropped, not ended": {token: w.token, send: append(frame([]byte("not json")), frame([]byte(`{"type":"shell-open","shell":"s","gen":1}`))...)},
	} {
		t.Run(name, func(t *testing.T) {
			conn := rawLink(t, w, tc.token)
			if tc.send != nil {
				_, _ = conn.Write(tc.send)
			}
			if tc.token == w.token && name == "dropped, not ended" {
				// Undecodable and uncarried controls are dropped, the
				// link goes on: a good frame after them arrives.
				_, _ = conn.Write(frame(good))
				require.Equal(t, input(7), w.waitControls(t, 1)[0])
				return
			}
			require.True(t, ended(conn), "the link stays open")
		})
	}
	require.Len(t, w.controls(), 1, "nothing but the good frame was handed on")
}

// TestServerHelloTimeout: a connection that never says hello is closed.
func TestServerHelloTimeout(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the hello timeout")
	}
	w := startWorker(t)
	conn, err := net.Dial("tcp", w.addr)
	require.NoError(t, err)
	defer conn.Close()
	_ = conn.SetReadDeadline(time.Now().Add(helloTimeout + 5*time.Second))
	_, err = conn.Read(make([]byte, 1))
	require.Error(t, err)
	var ne net.Error
	require.False(t, errors.As(err, &ne) && ne.Timeout(), "still open after the hello timeout")
}

func FuzzReadFrame(f *testing.F) {
	key := bytes.Repeat([]byte{7}, 32)
	aead, err := newAEAD(key)
	require.NoError(f, err)
	f.Add(appendFrame(nil, []byte(`{"type":"shell-input"}`)))
	f.Add([]byte{0, 0, 0, 0})
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 1})
	sealed, err := (&frameWriter{aead: aead}).frame([]byte(`{"type":"shell-input"}`))
	require.NoError(f, err)
	f.Add(sealed)
	f.Fuzz(func(t *testing.T, b []byte) {
		for _, a := range []cipher.AEAD{nil, aead} {
			fr := &frameReader{r: bytes.NewReader(b), aead: a}
			for {
				body, err := fr.next()
				if err != nil {
					break
				}
				if len(body) == 0 || len(body) > MaxFrame {
					t.Fatalf("frame of %d bytes", len(body))
				}
			}
		}
	})
}

// countHandler counts the records logged through it.
type countHandler struct {
	mu *sync.Mutex
	n  *int
}

func (h countHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h countHandler) Handle(context.Context, slog.Record) error {
	h.mu.Lock()
	*h.n++
	h.mu.Unlock()
	return nil
}
func (h countHandler) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h countHandler) WithGroup(string) slog.Handler      { return h }

// TestServerRefusalsLogSparingly: a stranger knocking in a loop gets each
// connection closed, and the log one line a second, not one a knock.
func TestServerRefusalsLogSparingly(t *testing.T) {
	var mu sync.Mutex
	logged := 0
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	ctx, cancel := context.WithCancel(context.Background())
	srv := NewServer("right", func(store.Control) {}, slog.New(countHandler{&mu, &logged}))
	done := make(chan struct{})
	go func() { defer close(done); _ = srv.Serve(ctx, ln) }()
	defer func() { cancel(); <-done }()
	w := &worker{addr: ln.Addr().String()}
	for range 50 {
		require.True(t, ended(rawLink(t, w, "wrong")))
	}
	mu.Lock()
	defer mu.Unlock()
	require.Positive(t, logged)
	require.LessOrEqual(t, logged, 3, "refusals logged")
}

// TestPrunedPeerNotUsed: a send that took a worker's peer just before the
// map pruned it sends on a peer still in the map, so any link it dials is
// one the client closes.
func TestPrunedPeerNotUsed(t *testing.T) {
	c := NewClient(func(context.Context, string) (string, string, error) { return "", "", nil }, nil)
	taken := c.peer("w0")
	for i := 1; i <= maxPeers; i++ {
		c.peer(fmt.Sprintf("w%d", i)) // the last one prunes every idle peer
	}
	require.True(t, taken.gone)
	p := c.lockedPeer("w0")
	p.mu.Unlock()
	require.NotSame(t, taken, p)
	c.mu.Lock()
	require.Same(t, p, c.peers["w0"])
	c.mu.Unlock()
}
