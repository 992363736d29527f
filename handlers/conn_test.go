package handlers

import (
	"bytes"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
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
	return pacedPair(t, limit, 0, nil)
}

// pacedPair is connPair with a pace interval; onSent, if not nil, sees
// each frame melody wrote before the conn learns of it.
func pacedPair(t *testing.T, limit int, interval time.Duration, onSent func([]byte)) (*conn, *websocket.Conn) {
	t.Helper()
	m := melody.New()
	m.Config.MessageBufferSize = melodyBufferSize
	opened := make(chan *conn, 1)
	m.HandleConnect(func(ms *melody.Session) {
		c := newConn(ms, app.User{Name: "u"}, limit, interval)
		ms.Set("conn", c)
		opened <- c
	})
	m.HandleSentMessage(func(ms *melody.Session, frame []byte) {
		if onSent != nil {
			onSent(frame)
		}
		connOf(ms).sent(len(frame))
	})
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
	// Frames large enough that the socket's kernel buffers fill with a
	// few, small enough that the queue's bytes do not fill first.
	body := bytes.Repeat([]byte("x"), maxQueuedBytes/limit-8)
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

// TestPaceRunsFromTheWrite holds two frames a client must see behind 30 MiB
// that its client does not read yet: the second is written a pace interval
// after the first was written, not after the first was handed to melody
// (both would then leave together once the client reads, and a client that
// keeps only the latest frame would never see the first).
func TestPaceRunsFromTheWrite(t *testing.T) {
	const interval = 50 * time.Millisecond
	var mu sync.Mutex
	wroteAt := map[string]time.Time{}
	c, ws := pacedPair(t, 64, interval, func(frame []byte) {
		if bytes.HasPrefix(frame, []byte(`{"kind":"text"`)) {
			mu.Lock()
			wroteAt[string(frame)] = time.Now()
			mu.Unlock()
		}
	})
	c.byteLimit = 1 << 40 // 30 MiB queued, so that melody writes late
	// Frames the client need not see go out without pauses.
	pad := fmt.Appendf(nil, `{"kind":"session-state-changed","pad":"%s"}`, bytes.Repeat([]byte("x"), 512<<10))
	const pads = 60
	for range pads {
		require.True(t, c.trySend(pad))
	}
	first, second := []byte(`{"kind":"text","n":1}`), []byte(`{"kind":"text","n":2}`)
	require.True(t, c.trySend(first))
	require.True(t, c.trySend(second))
	time.Sleep(3 * interval)

	for i := range pads + 2 {
		require.NoError(t, ws.SetReadDeadline(time.Now().Add(10*time.Second)))
		_, _, err := ws.ReadMessage()
		require.NoError(t, err, "frame %d", i)
	}
	// Melody reports a write after it returned: the client may have read
	// the frame first.
	require.Eventually(t, func() bool { mu.Lock(); defer mu.Unlock(); return len(wroteAt) == 2 }, 5*time.Second, time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	gap := wroteAt[string(second)].Sub(wroteAt[string(first)])
	require.GreaterOrEqual(t, gap, interval, "the second frame a client must see was written %v after the first", gap)
}

// TestCatchUpStopsWaitingWhenRepositioned: a replay waiting for room in a
// socket's queue gives up once its watch is repositioned, though the client
// never drains the queue: a client that keeps its queue over half and asks
// for the same history again and again must not pile up waiting replays.
func TestCatchUpStopsWaitingWhenRepositioned(t *testing.T) {
	c, _ := connPair(t, 64)
	body := bytes.Repeat([]byte("x"), 256<<10)
	// Filled until the kernel's buffers are full too, so the queue stays so.
	for sent, until := 0, time.Now().Add(300*time.Millisecond); time.Now().Before(until); time.Sleep(10 * time.Millisecond) {
		for ; c.trySend(body); sent++ {
			require.Less(t, sent, 1000, "the queue never filled")
		}
	}
	h := &hub{}
	f := &feed{}
	w := &watch{c: c, f: f, pos: 1, next: 1}
	done := make(chan bool, 1)
	go func() { done <- h.deliver(w, 1, []storedFrame{{seq: 1, frame: []byte("late")}}, false) }()
	select {
	case <-done:
		t.Fatal("delivered into a full queue")
	case <-time.After(200 * time.Millisecond):
	}
	f.mu.Lock()
	w.pos++
	f.mu.Unlock()
	select {
	case ok := <-done:
		require.False(t, ok)
	case <-time.After(5 * time.Second):
		t.Fatal("the replay still waits for room after its watch moved")
	}
}

// TestCatchUpStopsWaitingForASlotWhenRepositioned: catch-ups waiting for
// one of a socket's replay slots, which two long replays hold, give up
// once their watch is repositioned: a client that holds both slots and
// subscribes again and again must not pile up goroutines (one per
// subscribe waited for good before).
func TestCatchUpStopsWaitingForASlotWhenRepositioned(t *testing.T) {
	c, _ := connPair(t, 64)
	never := func() bool { return false }
	for range maxReplays {
		require.True(t, c.replaySlot(never))
	}
	h := &hub{}
	f := &feed{}
	w := &watch{c: c, f: f, pos: 1, next: 1}
	var wg sync.WaitGroup
	for range 100 {
		wg.Add(1)
		go func() { defer wg.Done(); h.catchUp(w, 1) }()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
		t.Fatal("a catch-up went on without a slot")
	case <-time.After(3 * replayRecheck):
	}
	f.mu.Lock()
	w.pos++
	f.mu.Unlock()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("catch-ups still wait for a slot after their watch moved")
	}
	c.replayDone()
	require.True(t, c.replaySlot(never), "a slot given back is taken again")
}

// TestConnBoundsQueuedBytes: a queue of large frames is full at
// maxQueuedBytes, before its frame count; a frame larger than that is
// still taken by an empty queue; every frame arrives once the client reads.
func TestConnBoundsQueuedBytes(t *testing.T) {
	const limit = 64
	c, ws := connPair(t, limit)
	big := bytes.Repeat([]byte("x"), 200<<10) // a chunk of control bytes, escaped
	sent := 0
	for c.trySend(big) {
		sent++
		require.Less(t, sent, 1000, "the queue never filled")
	}
	require.Less(t, c.queued.Load(), int64(limit), "full by its bytes first")
	require.LessOrEqual(t, c.qbytes.Load(), int64(maxQueuedBytes))
	for i := range sent {
		require.NoError(t, ws.SetReadDeadline(time.Now().Add(10*time.Second)))
		_, data, err := ws.ReadMessage()
		require.NoError(t, err, "frame %d", i)
		require.Len(t, data, len(big))
	}
	require.Eventually(t, func() bool { return c.queued.Load() == 0 && c.qbytes.Load() == 0 }, 5*time.Second, time.Millisecond)

	huge := bytes.Repeat([]byte("y"), maxQueuedBytes+1)
	require.True(t, c.trySend(huge), "an empty queue takes a frame over the byte bound")
	require.NoError(t, ws.SetReadDeadline(time.Now().Add(10*time.Second)))
	_, data, err := ws.ReadMessage()
	require.NoError(t, err)
	require.Len(t, data, len(huge))
}

// TestConnPauseDropsHeldFrames: while paused, frames queue behind what
// melody already has; resume drops those it is told to and sends the rest
// in order, and the queue's counts let go of the dropped ones.
func TestConnPauseDropsHeldFrames(t *testing.T) {
	c, ws := connPair(t, 64)
	c.share = shellMelodyFrames
	c.pause()
	for seq := 1; seq <= 10; seq++ {
		require.True(t, c.trySend(outputFrame(int64(seq), "x")))
	}
	c.hmu.Lock()
	held := len(c.held)
	c.hmu.Unlock()
	require.Equal(t, 10, held, "nothing goes to melody while paused")
	c.resume(func(frame []byte) bool {
		seq, ok := frameSeq(frame)
		return ok && seq <= 6
	})
	for want := int64(7); want <= 10; want++ {
		require.NoError(t, ws.SetReadDeadline(time.Now().Add(10*time.Second)))
		_, data, err := ws.ReadMessage()
		require.NoError(t, err)
		seq, ok := frameSeq(data)
		require.True(t, ok)
		require.Equal(t, want, seq)
	}
	require.Eventually(t, func() bool { return c.queued.Load() == 0 && c.qbytes.Load() == 0 }, 5*time.Second, time.Millisecond)
}

// TestSendOfALargeFrameWaits: a reply over half the queue's bytes waits
// for room enough for it, not for any room: it found the queue roomy at
// once, failed to fit, and spun on a core until the client read.
func TestSendOfALargeFrameWaits(t *testing.T) {
	c, ws := pacedPair(t, 64, 200*time.Millisecond, nil)
	c.byteLimit = 1000
	var retries atomic.Int64
	testHookSendRetry = func() { retries.Add(1) }
	t.Cleanup(func() { testHookSendRetry = nil })
	for range 3 {
		require.True(t, c.trySend([]byte(`"`+strings.Repeat("a", 98)+`"`)))
	}
	large := []byte(`"` + strings.Repeat("b", 898) + `"`)
	sent := make(chan bool, 1)
	go func() { sent <- c.send(large) }()
	for i := range 4 {
		require.NoError(t, ws.SetReadDeadline(time.Now().Add(10*time.Second)))
		_, data, err := ws.ReadMessage()
		require.NoError(t, err)
		if i == 3 {
			require.Equal(t, large, data)
		}
	}
	require.True(t, <-sent)
	// One retry per wake (a frame written, or 50 ms): a few dozen at most.
	require.Less(t, retries.Load(), int64(100), "send retried without waiting")
}
