package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// TestShellMemoryBound: 100 terminals each print 1 MB while Redis keeps at
// most --shell-history bytes of each (64 KiB here): Redis's memory grows
// by about 100 × 64 KiB, not by the 100 MB printed, and every terminal's
// stored output is within the budget. Once they ended, the user keeps at
// least the 16 most recent.
func TestShellMemoryBound(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("100 MB through 100 terminals")
	}
	const (
		terminals = 100
		budget    = 64 << 10
		printed   = 1_000_000
	)
	cl := newCluster(t, "/bin/false")
	limits := []string{
		"AGENTGATE_SHELL_HISTORY=" + strconv.Itoa(budget), "AGENTGATE_MAX_TERMINALS=128",
		"AGENTGATE_MAX_TERMINALS_PER_USER=0", "AGENTGATE_MAX_SOCKETS_PER_USER=256", "AGENTGATE_MAX_FRAME_RATE=1000",
		// The other tests' 1 s: a hundred floods beside CI's parallel
		// tests made a heartbeat late, and the gateway ended terminals
		// of a live worker as lost. Not what this test is about.
		"AGENTGATE_HEARTBEAT_TTL=10s",
	}
	addr := freeAddr(t)
	gw := startProc(t, "gw", append(append(cl.baseEnv(), limits...), "AGENTGATE_LISTEN="+addr), "gateway")
	gw.addr = addr
	waitReady(t, gw)
	w := startProc(t, "worker", append(cl.workerEnv(), limits...), "worker")
	cl.waitWorker(w)

	ctx := context.Background()
	used := func() int64 { return storetest.UsedMemory(t, cl.rdb) }
	before := used()

	var wg sync.WaitGroup
	for i := range terminals {
		ws, resp, err := dialer.Dial("ws://"+gw.addr+"/shell?token="+cl.token("alice"), nil)
		require.NoError(t, err)
		resp.Body.Close()
		t.Cleanup(func() { ws.Close() })
		init := map[string]any{
			"type": "init", "projectPath": cl.project, "provider": "plain-shell", "isPlainShell": true,
			"shellId": fmt.Sprintf("flood-%d", i), "cols": 100, "rows": 24,
			"initialCommand": fmt.Sprintf("head -c %d /dev/zero | tr '\\0' a | fold -w 100; echo END-$((6*7))", printed),
		}
		require.NoError(t, ws.WriteJSON(init))
		wg.Add(1)
		go func() {
			defer wg.Done()
			// The output's text, joined from the frames' data: a chunk
			// may end inside "END-42".
			var text, notices string
			retries, frames := 0, 0
			_ = ws.SetReadDeadline(time.Now().Add(3 * time.Minute))
			for !strings.Contains(text, "END-42") {
				_, data, err := ws.ReadMessage()
				if err != nil {
					t.Errorf("terminal %d: %v after %d frames; notices %q; last: %q", i, err, frames, notices, text)
					return
				}
				frames++
				var m struct {
					Type, Message, Data string
					Seq                 *int64
				}
				if json.Unmarshal(data, &m) != nil {
					t.Errorf("terminal %d: frame %q", i, data)
					return
				}
				switch {
				case m.Type == "error":
					// A refused init (100 of them at once load the
					// machine) is answered with an error; a user tries
					// again.
					retries++
					t.Logf("terminal %d: %s", i, m.Message)
					if retries > 3 || ws.WriteJSON(init) != nil {
						t.Errorf("terminal %d: refused %d times: %s", i, retries, m.Message)
						return
					}
				case m.Type == "exit":
					// Its exit came and its last line did not: lost, or
					// ended by someone else (the notices say).
					t.Errorf("terminal %d: exit %s after %d frames without END-42; notices %q; last: %q",
						i, data, frames, notices, text)
					return
				case m.Type == "output" && m.Seq == nil:
					notices = notices[max(0, len(notices)-512):] + m.Data
				default:
					text = text[max(0, len(text)-64):] + m.Data
				}
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		// Which terminals did not end as their command did, and how: a
		// worker taken for dead (lost), its output (seq, outBytes).
		for _, k := range cl.keys(ctx, keyPrefix+":shell:*") {
			if !strings.HasSuffix(k, "}") {
				continue
			}
			h := cl.rdb.HGetAll(ctx, k).Val()
			if h["exitReason"] != store.ShellExitNormal || h["exitCode"] != "0" {
				t.Logf("%s: state %s, exitReason %s, exitCode %s, seq %s, outBytes %s",
					k, h["state"], h["exitReason"], h["exitCode"], h["seq"], h["outBytes"])
			}
		}
		// A terminal that never ended: what was the worker doing? (The
		// cluster pass of CI saw the worker stop starting terminals.)
		w.dumpGoroutines()
		return
	}

	grown := used() - before
	t.Logf("Redis used_memory grew by %.1f MB for %d terminals that printed %.0f MB (budget %d KiB each)",
		float64(grown)/1e6, terminals, float64(terminals*printed)/1e6, budget>>10)
	// Stream entries and the sizes list cost more than the bytes they
	// hold, and a cluster's masters keep replication buffers: three times
	// the budget per terminal, plus the keys' own overhead, is still a
	// fifth of what was printed.
	require.Less(t, grown, int64(terminals*(3*budget+16<<10)), "Redis keeps more than the byte budget")
	// Every terminal ended (its command did). The user keeps their 16 most
	// recently ended, and those a socket still read when a later one ended.
	held := 0
	for _, k := range cl.keys(ctx, keyPrefix+":shell:*") {
		if !strings.HasSuffix(k, "}") {
			continue // the output stream and sizes of a terminal, read through its hash
		}
		h := cl.rdb.HMGet(ctx, k, "state", "outBytes").Val()
		if h[0] == nil {
			continue // deleted since it was listed
		}
		held++
		outBytes, _ := strconv.Atoi(fmt.Sprint(h[1]))
		require.LessOrEqual(t, outBytes, budget+32<<10, "%s holds more than the budget (one chunk may pass it)", k)
	}
	t.Logf("%d ended terminals kept", held)
	require.GreaterOrEqual(t, held, 16)
}
