package handlers

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/olahol/melody"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
)

// connPair opens a socket to a bare melody server whose side is a conn with
// a queue of limit frames, wired to melody as the gateway wires it.
func connPair(t *testing.T, limit int) (*conn, *websocket.Conn) {
	t.Helper()
	m := melody.New()
	m.Config.MessageBufferSize = melodyBufferSize
	opened := make(chan *conn, 1)
	m.HandleConnect(func(ms *melody.Session) {
		c := newConn(ms, app.User{Name: "u"}, limit, 0)
		ms.Set("conn", c)
		opened <- c
	})
	m.HandleSentMessage(func(ms *melody.Session, _ []byte) { connOf(ms).sent() })
	dropped := make(chan error, 1)
	m.HandleError(func(ms *melody.Session, err error) {
		if errors.Is(err, melody.ErrMessageBufferFull) {
			select {
			case dropped <- err:
			default:
			}
		}
	})
	t.Cleanup(func() {
		select {
		case err := <-dropped:
			t.Errorf("melody dropped a frame: %v", err)
		default:
		}
	})
	ts := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = m.HandleRequest(w, r)
	}))
	t.Cleanup(ts.Close)
	t.Cleanup(func() { _ = m.Close() })
	ws, resp, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(ts.URL, "http"), nil)
	require.NoError(t, err)
	resp.Body.Close()
	t.Cleanup(func() { ws.Close() })
	return <-opened, ws
}

// TestConnHoldsWhatMelodyCannot fills a socket's queue while its client
// reads nothing: melody's buffer gets its share, the rest is held, a frame
// past the limit is refused, and the client then reads every frame in order
// while the held ones move to melody; nothing is left held afterwards.
func TestConnHoldsWhatMelodyCannot(t *testing.T) {
	const limit = 64
	c, ws := connPair(t, limit)
	// Frames large enough that the socket's kernel buffers fill with a few.
	body := bytes.Repeat([]byte("x"), 256<<10)
	frame := func(i int) []byte { return fmt.Appendf(nil, "%04d%s", i, body) }
	// The kernel takes some frames off the queue; the rest fills it.
	sent := 0
	for c.trySend(frame(sent)) {
		sent++
		require.Less(t, sent, 1000, "the queue never filled")
	}
	require.GreaterOrEqual(t, sent, limit)
	require.EqualValues(t, limit, c.queued.Load())
	c.hmu.Lock()
	held, inMelody := len(c.held), c.inMelody
	c.hmu.Unlock()
	require.Equal(t, melodyFrames, inMelody)
	require.Equal(t, limit-melodyFrames, held, "frames held while the client reads nothing")

	for i := range sent {
		require.NoError(t, ws.SetReadDeadline(time.Now().Add(10*time.Second)))
		_, data, err := ws.ReadMessage()
		require.NoError(t, err, "frame %d", i)
		require.Equal(t, fmt.Sprintf("%04d", i), string(data[:4]))
		require.Len(t, data, len(body)+4)
	}
	require.Eventually(t, func() bool { return c.queued.Load() == 0 }, 5*time.Second, time.Millisecond)
	c.hmu.Lock()
	defer c.hmu.Unlock()
	require.Nil(t, c.held, "the held frames' buffer outlives the backlog")
	require.Zero(t, c.inMelody)
}

// TestConnKeepsOrderUnderConcurrentSends sends from several goroutines
// while the client reads: each sender's frames arrive in its order and none
// is lost or repeated, whether it went to melody directly or was held.
func TestConnKeepsOrderUnderConcurrentSends(t *testing.T) {
	const senders, each = 4, 500
	c, ws := connPair(t, 64)
	done := make(chan struct{})
	for s := range senders {
		go func() {
			defer func() { done <- struct{}{} }()
			for i := range each {
				if !c.send(fmt.Appendf(nil, "%d:%d", s, i)) {
					t.Errorf("sender %d: frame %d refused", s, i)
					return
				}
			}
		}()
	}
	next := make([]int, senders)
	for range senders * each {
		require.NoError(t, ws.SetReadDeadline(time.Now().Add(10*time.Second)))
		_, data, err := ws.ReadMessage()
		require.NoError(t, err)
		var s, i int
		_, err = fmt.Sscanf(string(data), "%d:%d", &s, &i)
		require.NoError(t, err)
		require.Equal(t, next[s], i, "sender %d", s)
		next[s]++
	}
	for range senders {
		<-done
	}
}
