package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"
)

// floodLoop prints numbered lines without pause ("n=1", "n=2", …), so that
// a client can tell a lost, repeated or reordered line from a cut one.
const floodLoop = "i=0; while :; do i=$((i+1)); echo n=$i; done"

// floodClient is a quiet /shell socket for floods: it keeps the output
// frames (by seq, and their data in order) and logs none.
type floodClient struct {
	t  *testing.T
	ws *websocket.Conn

	mu      sync.Mutex
	out     strings.Builder // the data of the frames with a seq
	notices strings.Builder // and of those without (the gateway's own)
	seqs    []int64
	bySeq   map[int64]string
	done    chan struct{}
}

func (sc *shellCluster) dialFlood(gw *proc, user string) *floodClient {
	sc.t.Helper()
	ws, resp, err := dialer.Dial("ws://"+gw.addr+"/shell?token="+sc.token(user), nil)
	require.NoError(sc.t, err)
	resp.Body.Close()
	c := &floodClient{t: sc.t, ws: ws, bySeq: map[int64]string{}, done: make(chan struct{})}
	go c.read()
	sc.t.Cleanup(func() {
		_ = ws.Close()
		<-c.done
	})
	return c
}

// startFlood opens a terminal of user under shellID through gw on a quiet
// socket, starts floodLoop in it and waits for its first 256 KiB.
func (sc *shellCluster) startFlood(gw *proc, user, shellID string) *floodClient {
	sc.t.Helper()
	c := sc.dialFlood(gw, user)
	c.send(sc.plainInit(shellID))
	eventually(sc.t, 20*time.Second, "the terminal's start", func() bool { return c.contains("Starting terminal in:") })
	c.send(map[string]any{"type": "input", "data": floodLoop + "\r"})
	c.waitMore(256 << 10)
	return c
}

// waitMore waits until n more bytes of output arrived.
func (c *floodClient) waitMore(n int) {
	c.t.Helper()
	at := c.received()
	eventually(c.t, 60*time.Second, fmt.Sprintf("%d KiB more of the flood", n>>10), func() bool { return c.received() > at+n })
}

// interrupt stops the flood with a Ctrl-C and waits for the prompt after
// it.
func (c *floodClient) interrupt() {
	c.t.Helper()
	c.send(map[string]any{"type": "input", "data": "\x03"})
	c.send(map[string]any{"type": "input", "data": "echo done-$((3+3))\r"})
	eventually(c.t, 30*time.Second, "the prompt after Ctrl-C", func() bool { return c.contains("done-6\r\n") })
}

// requireIncreasing checks that each seq came once, in order.
func requireIncreasing(t *testing.T, seqs []int64) {
	t.Helper()
	for i := 1; i < len(seqs); i++ {
		require.Greater(t, seqs[i], seqs[i-1], "seqs in order, each once (frame %d)", i)
	}
}

func (c *floodClient) read() {
	defer close(c.done)
	for {
		_, data, err := c.ws.ReadMessage()
		if err != nil {
			return
		}
		var f struct {
			Type string `json:"type"`
			Data string `json:"data"`
			Seq  *int64 `json:"seq"`
		}
		if json.Unmarshal(data, &f) != nil || f.Type != "output" {
			continue
		}
		c.mu.Lock()
		if f.Seq != nil {
			c.seqs = append(c.seqs, *f.Seq)
			c.bySeq[*f.Seq] = f.Data
			c.out.WriteString(f.Data)
		} else {
			c.notices.WriteString(f.Data)
		}
		c.mu.Unlock()
	}
}

func (c *floodClient) send(v any) {
	c.t.Helper()
	b, err := json.Marshal(v)
	require.NoError(c.t, err)
	require.NoError(c.t, c.ws.WriteMessage(websocket.TextMessage, b))
}

// received is how many bytes of output with a seq arrived so far.
func (c *floodClient) received() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.Len()
}

// contains reports whether the output so far, notices included, holds s.
func (c *floodClient) contains(s string) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return strings.Contains(c.out.String(), s) || strings.Contains(c.notices.String(), s)
}

// snapshot returns the output with a seq, the seqs in arrival order and
// the gateway's notices.
func (c *floodClient) snapshot() (string, []int64, string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.out.String(), append([]int64(nil), c.seqs...), c.notices.String()
}

// requireStored checks that each frame whose seq the terminal's output
// stream still holds carries the chunk stored under it.
func (c *floodClient) requireStored(sc *shellCluster, user string) {
	c.t.Helper()
	key, _ := sc.shellHash(user)
	stored, err := sc.rdb.XRange(context.Background(), key+":out", "-", "+").Result()
	require.NoError(c.t, err)
	c.mu.Lock()
	defer c.mu.Unlock()
	for _, e := range stored {
		seq, _ := strconv.ParseInt(e.Values["seq"].(string), 10, 64)
		if data, ok := c.bySeq[seq]; ok {
			require.Equal(c.t, e.Values["data"], data, "the frame of seq %d", seq)
		}
	}
}

// requireSeqsBut checks that seqs run from from on, each once and in
// order, missing no more and no fewer than the chunks the gateway's trim
// notices (in notices) said were no longer stored when the socket got
// there: a socket more than --shell-history behind a flood (a loaded
// machine, a reattach after seconds) skips those, and is told. It returns
// how many gaps the notices announced, each of which may cut two lines
// (requireFloodLines).
func requireSeqsBut(t *testing.T, seqs []int64, from int64, notices string) (gaps int) {
	t.Helper()
	require.NotEmpty(t, seqs)
	trimmed := int64(0)
	for _, m := range trimNoticeRE.FindAllStringSubmatch(notices, -1) {
		n, _ := strconv.ParseInt(m[1], 10, 64)
		trimmed += n
		gaps++
	}
	missing, want := int64(0), from
	for i, s := range seqs {
		require.GreaterOrEqual(t, s, want, "seq %d of %v: repeated or out of order", i, seqs)
		missing += s - want
		want = s + 1
	}
	require.Equal(t, trimmed, missing, "seqs missing beyond what the trim notices announced (%q)", notices)
	if gaps > 0 {
		t.Logf("%d chunks trimmed before the socket got them, in %d gaps", trimmed, gaps)
	}
	return gaps
}

// requireFloodLines checks the flood's lines in text, from its first line
// to the last whole one before the Ctrl-C's echo: nothing but the loop's
// bytes, each line the one after the last, except at most maxOdd lines
// around gaps where output was dropped (the line before a gap lost its
// end and the one after it its start: "n=35125" then "487258" or "", or
// the two run together, "n=351" and "89", or a line break cut in two,
// "\nn=12", "n=351\rn=6464").
func requireFloodLines(t *testing.T, text string, maxOdd int) {
	t.Helper()
	start := strings.Index(text, "n=1\r\n")
	require.GreaterOrEqual(t, start, 0, "the flood's first line")
	end := strings.Index(text[start:], "^C")
	require.Positive(t, end, "the Ctrl-C's echo")
	lines := strings.Split(text[start:start+end], "\r\n")
	lines = lines[:len(lines)-1] // cut short by the Ctrl-C
	whole, ours := regexp.MustCompile(`^n=[0-9]+$`), regexp.MustCompile(`^[n=0-9\r\n]*$`)
	odd, prev := 0, int64(0)
	for i, l := range lines {
		require.Regexp(t, ours, l, "line %d of the flood is only the terminal's output", i)
		if !whole.MatchString(l) {
			odd++
			t.Logf("line %d: %q", i, l)
			prev = 0
			continue
		}
		n, err := strconv.ParseInt(l[2:], 10, 64)
		require.NoError(t, err)
		if prev != 0 && n != prev+1 {
			odd++
			t.Logf("line %d: n=%d after n=%d", i, n, prev)
		}
		prev = n
	}
	t.Logf("%d lines of the flood, %d out of order", len(lines), odd)
	require.LessOrEqual(t, odd, maxOdd, "output dropped only where expected, nothing repeated or reordered")
}
