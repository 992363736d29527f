package link

import (
	"bufio"
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store"
)

// proxy stands on the path from gateways to a worker: it passes the hello
// (rewritten by hello, if set) and then each frame the gateway sends
// through frames, if set, which returns what to send on in its place.
type proxy struct {
	addr   string
	target string
	hello  func(line []byte) []byte
	frames func(conn, i int, frame []byte) [][]byte

	mu    sync.Mutex
	conns int
	wire  bytes.Buffer // the frames that passed, as they went on
	proof []string     // the workers' first answers
}

func startProxy(t *testing.T, target string, configure func(*proxy)) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	require.NoError(t, err)
	p := &proxy{addr: ln.Addr().String(), target: target}
	if configure != nil {
		configure(p)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Go(func() {
		for {
			gw, err := ln.Accept()
			if err != nil {
				return
			}
			p.mu.Lock()
			n := p.conns
			p.conns++
			p.mu.Unlock()
			wg.Go(func() { p.serve(n, gw) })
		}
	})
	return p
}

// serve carries one gateway's connection, number n.
func (p *proxy) serve(n int, gw net.Conn) {
	defer gw.Close()
	wk, err := net.Dial("tcp", p.target)
	if err != nil {
		return
	}
	defer wk.Close()
	go func() {
		// The worker's side: its proof and ok, then only its end.
		r := bufio.NewReader(wk)
		if line, err := r.ReadString('\n'); err == nil {
			p.mu.Lock()
			p.proof = append(p.proof, line)
			p.mu.Unlock()
			_, _ = io.WriteString(gw, line)
		}
		_, _ = io.Copy(gw, r)
		gw.Close()
		wk.Close()
	}()
	r := bufio.NewReader(gw)
	// The gateway's side: its hello and its MAC, then frames.
	for i := range 2 {
		line, err := r.ReadBytes('\n')
		if err != nil {
			return
		}
		if i == 0 && p.hello != nil {
			line = p.hello(line)
		}
		if _, err := wk.Write(line); err != nil {
			return
		}
	}
	for i := 0; ; i++ {
		var hdr [4]byte
		if _, err := io.ReadFull(r, hdr[:]); err != nil {
			return
		}
		frame := make([]byte, 4+binary.BigEndian.Uint32(hdr[:]))
		copy(frame, hdr[:])
		if _, err := io.ReadFull(r, frame[4:]); err != nil {
			return
		}
		out := [][]byte{frame}
		if p.frames != nil {
			out = p.frames(n, i, frame)
		}
		for _, f := range out {
			p.mu.Lock()
			p.wire.Write(f)
			p.mu.Unlock()
			if _, err := wk.Write(f); err != nil {
				return
			}
		}
	}
}

// clientVia is a client whose links to w go through p.
func clientVia(p *proxy, w *worker) *Client {
	return NewClient(func(context.Context, string) (string, string, error) { return p.addr, w.token, nil }, nil)
}

// secret is a keystroke the tests look for on the wire.
func secret(i int) store.Control {
	data, _ := json.Marshal(fmt.Sprintf("hunter2-password-%d\r", i))
	return store.Control{Type: store.ControlShellInput, Shell: "s", Gen: 1, Data: data}
}

// TestSealedLinkCarriesFrames: a gateway's link is version 3, its
// controls arrive in order, and none of their bytes is on the wire in
// clear: each frame is the control sealed, its tag longer. Before,
// frames went in clear after the hello.
func TestSealedLinkCarriesFrames(t *testing.T) {
	w := startWorker(t)
	p := startProxy(t, w.addr, nil)
	c := clientVia(p, w)
	defer c.Close()
	linkUp(t, c, "w1")
	const n = 50
	for i := range n {
		require.NoError(t, c.Send(context.Background(), "w1", secret(i)))
	}
	got := w.waitControls(t, n)
	for i, ctl := range got {
		require.Equal(t, secret(i), ctl)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	require.Len(t, p.proof, 1)
	wire := p.wire.String()
	for _, clear := range []string{"hunter2", "password", "shell-input", `"type"`, `"data"`} {
		require.NotContains(t, wire, clear)
	}
	// Each frame is its control's JSON and a 16-byte tag, no longer.
	b := p.wire.Bytes()
	for i := range n {
		body, _ := json.Marshal(secret(i))
		size := int(binary.BigEndian.Uint32(b))
		require.Equal(t, len(body)+sealOverhead, size, "frame %d", i)
		b = b[4+size:]
	}
	require.Empty(t, b)
}

// logLines records the messages logged through it.
type logLines struct {
	mu    *sync.Mutex
	lines *[]string
}

func (h logLines) Enabled(context.Context, slog.Level) bool { return true }
func (h logLines) Handle(_ context.Context, r slog.Record) error {
	h.mu.Lock()
	*h.lines = append(*h.lines, r.Message)
	h.mu.Unlock()
	return nil
}
func (h logLines) WithAttrs([]slog.Attr) slog.Handler { return h }
func (h logLines) WithGroup(string) slog.Handler      { return h }

// TestSealedFrameTampered: one bit flipped on the way in a sealed frame
// (its length, its ciphertext or its tag) ends the link: the worker hands
// on nothing of that frame nor of any after it, and logs why. Before, a
// flipped bit in a keystroke was typed.
func TestSealedFrameTampered(t *testing.T) {
	for name, at := range map[string]func(frame []byte) int{
		"length":     func([]byte) int { return 3 },
		"ciphertext": func(f []byte) int { return 4 + (len(f)-4-sealOverhead)/2 },
		"tag":        func(f []byte) int { return len(f) - 1 },
	} {
		t.Run(name, func(t *testing.T) {
			var mu sync.Mutex
			var lines []string
			w := startWorkerLog(t, slog.New(logLines{&mu, &lines}))
			p := startProxy(t, w.addr, func(p *proxy) {
				p.frames = func(conn, i int, f []byte) [][]byte {
					if conn == 0 && i == 1 {
						f[at(f)] ^= 1
					}
					return [][]byte{f}
				}
			})
			c := clientVia(p, w)
			defer c.Close()
			linkUp(t, c, "w1")
			ctx := context.Background()
			require.NoError(t, c.Send(ctx, "w1", secret(0)))
			require.Equal(t, []store.Control{secret(0)}, w.waitControls(t, 1))
			require.NoError(t, c.Send(ctx, "w1", secret(1)))
			// A length one longer waits for a byte: the next frame's.
			_ = c.Send(ctx, "w1", secret(2))
			require.Eventually(t, func() bool { return !linked(c, "w1") }, 5*time.Second, time.Millisecond, "the link ends")
			require.Equal(t, []store.Control{secret(0)}, w.controls())
			mu.Lock()
			defer mu.Unlock()
			require.Len(t, lines, 1)
			require.Contains(t, lines[0], "sealed frame")
		})
	}
}

// TestSealedFrameOutOfPlace: a sealed frame replayed, dropped, moved, or
// taken from another link does not open where it is put: the link ends
// there.
func TestSealedFrameOutOfPlace(t *testing.T) {
	for name, tc := range map[string]struct {
		frames func(i int, f []byte, held *[]byte) [][]byte
		want   []int // the controls the worker hands on
	}{
		"replayed": {
			frames: func(i int, f []byte, _ *[]byte) [][]byte {
				if i == 1 {
					return [][]byte{f, f}
				}
				return [][]byte{f}
			},
			want: []int{0, 1},
		},
		"dropped": {
			frames: func(i int, f []byte, _ *[]byte) [][]byte {
				if i == 1 {
					return nil
				}
				return [][]byte{f}
			},
			want: []int{0},
		},
		"reordered": {
			frames: func(i int, f []byte, held *[]byte) [][]byte {
				switch i {
				case 1:
					*held = f
					return nil
				case 2:
					return [][]byte{f, *held}
				}
				return [][]byte{f}
			},
			want: []int{0},
		},
	} {
		t.Run(name, func(t *testing.T) {
			w := startWorker(t)
			var held []byte
			p := startProxy(t, w.addr, func(p *proxy) {
				p.frames = func(conn, i int, f []byte) [][]byte {
					if conn != 0 {
						return [][]byte{f}
					}
					return tc.frames(i, f, &held)
				}
			})
			c := clientVia(p, w)
			defer c.Close()
			linkUp(t, c, "w1")
			ctx := context.Background()
			require.NoError(t, c.Send(ctx, "w1", secret(0)))
			require.NoError(t, c.Send(ctx, "w1", secret(1)))
			// The link may have ended already (a replay of frame 1).
			_ = c.Send(ctx, "w1", secret(2))
			require.Eventually(t, func() bool { return !linked(c, "w1") }, 5*time.Second, time.Millisecond, "the link ends")
			var want []store.Control
			for _, i := range tc.want {
				want = append(want, secret(i))
			}
			require.Equal(t, want, w.controls())
		})
	}
	t.Run("another link's", func(t *testing.T) {
		w := startWorker(t)
		a, fa := rawV3(t, w)
		b, _ := rawV3(t, w)
		body, _ := json.Marshal(secret(0))
		frame, err := fa.frame(body)
		require.NoError(t, err)
		_, err = b.Write(frame)
		require.NoError(t, err)
		require.True(t, ended(b), "the link stays open")
		require.Empty(t, w.controls())
		_, err = a.Write(frame)
		require.NoError(t, err)
		require.Equal(t, []store.Control{secret(0)}, w.waitControls(t, 1), "on its own link it opens")
	})
}

// rawV3 dials w and says the version-3 hello.
func rawV3(t *testing.T, w *worker) (net.Conn, *frameWriter) {
	t.Helper()
	conn, err := net.Dial("tcp", w.addr)
	require.NoError(t, err)
	t.Cleanup(func() { conn.Close() })
	key, err := clientHello(conn, w.token)
	require.NoError(t, err)
	aead, err := newAEAD(key)
	require.NoError(t, err)
	return conn, &frameWriter{aead: aead}
}

// TestSealedFrameSizes: MaxFrame bounds the control, not the sealed
// frame; a sealed frame with no control in it, or too large, ends the
// link.
func TestSealedFrameSizes(t *testing.T) {
	w := startWorker(t)
	ctl := store.Control{Type: store.ControlShellInput, Shell: "s", Gen: 1}
	base, _ := json.Marshal(ctl)
	ctl.Data, _ = json.Marshal(strings.Repeat("a", MaxFrame-len(base)-len(`,"data":""`)))
	body, _ := json.Marshal(ctl)
	require.Len(t, body, MaxFrame)
	conn, fw := rawV3(t, w)
	frame, err := fw.frame(body)
	require.NoError(t, err)
	_, err = conn.Write(frame)
	require.NoError(t, err)
	require.Equal(t, ctl, w.waitControls(t, 1)[0], "a control of MaxFrame bytes")

	for name, size := range map[string]uint32{"empty": sealOverhead, "over": MaxFrame + sealOverhead + 1} {
		t.Run(name, func(t *testing.T) {
			conn, _ := rawV3(t, w)
			_, _ = conn.Write(binary.BigEndian.AppendUint32(nil, size))
			require.True(t, ended(conn), "the link stays open")
		})
	}
	require.Len(t, w.controls(), 1)
}

// clientHelloV2 is the hello of the gateways before version 3.
func clientHelloV2(conn net.Conn, token string) error {
	gn := make([]byte, nonceLen)
	if _, err := io.WriteString(conn, helloV2+hex.EncodeToString(gn)+"\n"); err != nil {
		return err
	}
	r := bufio.NewReader(conn)
	line, err := r.ReadString('\n')
	if err != nil {
		return err
	}
	wnHex, macHex, _ := strings.Cut(strings.TrimSpace(line), " ")
	wn, _ := hex.DecodeString(wnHex)
	if macHex != hex.EncodeToString(helloMAC(token, roleWorkerV2, gn, wn)) {
		return errHelloRefused
	}
	if _, err := io.WriteString(conn, hex.EncodeToString(helloMAC(token, roleGatewayV2, gn, wn))+"\n"); err != nil {
		return err
	}
	ok, err := r.ReadString('\n')
	if err != nil || ok != helloOK {
		return errHelloRefused
	}
	return nil
}

// TestV2GatewayStillLinks: a gateway of the version before (the hello
// with bare roles, frames in clear) still links to a worker.
func TestV2GatewayStillLinks(t *testing.T) {
	w := startWorker(t)
	conn, err := net.Dial("tcp", w.addr)
	require.NoError(t, err)
	defer conn.Close()
	require.NoError(t, clientHelloV2(conn, w.token))
	var buf []byte
	for i := range 3 {
		body, _ := json.Marshal(secret(i))
		buf = appendFrame(buf, body)
	}
	_, err = conn.Write(buf)
	require.NoError(t, err)
	require.Equal(t, []store.Control{secret(0), secret(1), secret(2)}, w.waitControls(t, 3))
}

// TestDowngradeRefused: a hello rewritten on the way from version 3 to 2
// (which would send frames in clear) gets the worker's version-2 proof,
// which the gateway refuses: no link, nothing sent, the controls take the
// inbox. Before, gateways said version 2 themselves.
func TestDowngradeRefused(t *testing.T) {
	w := startWorker(t)
	p := startProxy(t, w.addr, func(p *proxy) {
		p.hello = func(line []byte) []byte {
			return bytes.Replace(line, []byte("agentgate-link/3 "), []byte("agentgate-link/2 "), 1)
		}
	})
	conn, err := net.Dial("tcp", p.addr)
	require.NoError(t, err)
	defer conn.Close()
	_, err = clientHello(conn, w.token)
	require.ErrorIs(t, err, errHelloRefused)
	p.mu.Lock()
	require.Len(t, p.proof, 1, "the worker took the rewritten hello and answered")
	p.mu.Unlock()

	c := clientVia(p, w)
	defer c.Close()
	for range 3 {
		require.ErrorIs(t, c.Send(context.Background(), "w1", secret(0)), ErrNoLink)
		time.Sleep(switchQuiet)
	}
	require.False(t, linked(c, "w1"))
	require.Empty(t, w.controls())
	p.mu.Lock()
	defer p.mu.Unlock()
	require.Zero(t, p.wire.Len(), "no frame")
}

// BenchmarkLinkFrame: one keystroke's frame made by a gateway and read by
// a worker, in clear (version 2) and sealed (version 3).
func BenchmarkLinkFrame(b *testing.B) {
	body, _ := json.Marshal(secret(0))
	aead, err := newAEAD(bytes.Repeat([]byte{1}, 32))
	require.NoError(b, err)
	aead2, err := newAEAD(bytes.Repeat([]byte{1}, 32))
	require.NoError(b, err)
	for _, bc := range []struct {
		name   string
		fw     *frameWriter
		reader *frameReader
	}{
		{"v2-plain", &frameWriter{}, &frameReader{}},
		{"v3-sealed", &frameWriter{aead: aead}, &frameReader{aead: aead2}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			var r bytes.Reader
			bc.reader.r = &r
			b.SetBytes(int64(len(body)))
			b.ReportAllocs()
			for b.Loop() {
				frame, err := bc.fw.frame(body)
				if err != nil {
					b.Fatal(err)
				}
				r.Reset(frame)
				if _, err := bc.reader.next(); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
