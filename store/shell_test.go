package store_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

// plainSpec is the spec of the plain terminal the store's tests open.
var plainSpec = app.ShellSpec{Owner: "alice", ProjectPath: "/w/p", Provider: app.PlainShell, Plain: true, Cols: 80, Rows: 24}

// TestShellLifecycle runs the terminal scripts on both backends: an open
// that lost the race changes nothing, appends take consecutive seqs and
// are published, a stale generation writes nothing, the exit is recorded
// once, and the stream is capped.
func TestShellLifecycle(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) {
			url := storetest.Start(t, b)
			st := storetest.New(t, url)
			ctx := context.Background()
			rdb := redisClient(t, url)
			prefix := st.Prefix()

			messages := storetest.ShellMessages(t, st, "k1")

			spec := plainSpec
			gen, ok, err := st.ShellOpen(ctx, "k1", 0, "w1", "bash", spec, store.ShellLimit{})
			require.NoError(t, err)
			require.True(t, ok)
			require.InDelta(t, time.Now().UnixMilli(), gen, 60_000, "a new key starts at the time in ms")
			g1 := gen
			_, ok, err = st.ShellOpen(ctx, "k1", 0, "w2", "bash", spec, store.ShellLimit{})
			require.NoError(t, err)
			require.False(t, ok, "a second open from the same generation loses")

			// The open control is in w1's inbox, and nothing in w2's.
			in, err := st.ReadInbox(ctx, "w1", "0", time.Millisecond)
			require.NoError(t, err)
			require.Len(t, in, 1)
			require.Equal(t, store.ControlShellOpen, in[0].Control.Type)
			require.Equal(t, g1, in[0].Control.Gen)
			var back app.ShellSpec
			require.NoError(t, json.Unmarshal(in[0].Control.Data, &back))
			require.Equal(t, spec, back)
			in, err = st.ReadInbox(ctx, "w2", "0", time.Millisecond)
			require.NoError(t, err)
			require.Empty(t, in)

			seq, err := st.ShellAppend(ctx, "k1", g1, []string{"a", "b c", "é"})
			require.NoError(t, err)
			require.Equal(t, int64(3), seq)
			_, err = st.ShellAppend(ctx, "k1", 7, []string{"stale"})
			require.ErrorIs(t, err, store.ErrStaleShell)
			chunks, err := st.ShellOutput(ctx, "k1", 1, 10)
			require.NoError(t, err)
			require.Equal(t, []store.ShellChunk{{Seq: 2, Data: "b c"}, {Seq: 3, Data: "é"}}, chunks)
			// Plain fields an admin reads with redis-cli.
			h, err := rdb.HGetAll(ctx, prefix+":shell:{k1}").Result()
			require.NoError(t, err)
			require.Equal(t, "alice", h["owner"])
			require.Equal(t, "w1", h["worker"])
			require.Equal(t, "3", h["seq"])

			n, err := st.ShellTouch(ctx, "k1", g1, +1)
			require.NoError(t, err)
			require.Equal(t, 1, n)
			n, err = st.ShellTouch(ctx, "k1", g1, -1)
			require.NoError(t, err)
			require.Equal(t, 0, n)
			_, err = st.ShellTouch(ctx, "k1", g1+1, 0)
			require.ErrorIs(t, err, store.ErrStaleShell)
			idle, err := st.ShellIdle(ctx, "k1", g1)
			require.NoError(t, err)
			require.GreaterOrEqual(t, idle, int64(0))
			_, err = st.ShellIdle(ctx, "k1", g1+1)
			require.ErrorIs(t, err, store.ErrStaleShell)

			require.NoError(t, st.ShellSignal(ctx, "k1", g1, 3, true))
			first, err := st.ShellExit(ctx, "k1", g1, 130, "SIGINT", store.ShellExitNormal)
			require.NoError(t, err)
			require.True(t, first)
			again, err := st.ShellExit(ctx, "k1", g1, 1, "", store.ShellExitLost)
			require.NoError(t, err)
			require.False(t, again, "the exit is recorded once")
			info, ok, err := st.Shell(ctx, "k1")
			require.NoError(t, err)
			require.True(t, ok)
			require.Equal(t, store.ShellExited, info.State)
			require.Equal(t, 130, info.ExitCode)
			require.Equal(t, "SIGINT", info.Signal)
			for _, key := range []string{prefix + ":shell:{k1}", prefix + ":shell:{k1}:out"} {
				ttl, err := rdb.TTL(ctx, key).Result()
				require.NoError(t, err)
				require.InDelta(t, store.DefaultShellRetention.Seconds(), ttl.Seconds(), 5, "an ended terminal expires: %s", key)
			}

			require.Eventually(t, func() bool { return len(messages()) == 5 }, 5*time.Second, 5*time.Millisecond)
			got := messages()
			require.Equal(t, store.ShellLive{Kind: 'o', Gen: g1, Seq: 1, Data: "a"}, got[0])
			require.Equal(t, store.ShellLive{Kind: 'o', Gen: g1, Seq: 2, Data: "b c"}, got[1])
			require.Equal(t, store.ShellLive{Kind: 'o', Gen: g1, Seq: 3, Data: "é"}, got[2])
			require.Equal(t, store.ShellLive{Kind: 's', Gen: g1, Seq: 3, Flushed: true}, got[3])
			require.Equal(t, store.ShellLive{Kind: 'e', Gen: g1, Seq: 3, ExitCode: 130, Signal: "SIGINT", Reason: "exit"}, got[4])

			// Reopen: a new generation starts from seq 1 with no old output.
			gen, ok, err = st.ShellOpen(ctx, "k1", g1, "w1", "bash", spec, store.ShellLimit{})
			require.NoError(t, err)
			require.True(t, ok)
			require.Equal(t, g1+1, gen)
			ttl, err := rdb.TTL(ctx, prefix+":shell:{k1}").Result()
			require.NoError(t, err)
			require.Equal(t, time.Duration(-1), ttl, "a new generation does not expire")
			chunks, err = st.ShellOutput(ctx, "k1", 0, 10)
			require.NoError(t, err)
			require.Empty(t, chunks)
			_, err = st.ShellAppend(ctx, "k1", g1, []string{"old generation"})
			require.ErrorIs(t, err, store.ErrStaleShell)

			// The cap: 5000 chunks kept, the newest ones.
			batch := make([]string, 100)
			for i := 0; i < 52; i++ {
				for j := range batch {
					batch[j] = fmt.Sprintf("c%d", i*100+j+1)
				}
				_, err := st.ShellAppend(ctx, "k1", gen, batch)
				require.NoError(t, err)
			}
			l, err := st.ShellOutputLen(ctx, "k1")
			require.NoError(t, err)
			require.Equal(t, int64(store.ShellMaxChunks), l)
			chunks, err = st.ShellOutput(ctx, "k1", 0, 1)
			require.NoError(t, err)
			require.Equal(t, store.ShellChunk{Seq: 201, Data: "c201"}, chunks[0])
		})
	}
}

// TestShellOutputLikeAMessage: a terminal's output is published as it is,
// after a group header, so output that reads like a channel message (a
// header, an exit) is delivered as output with its own seq.
func TestShellOutputLikeAMessage(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) {
			st := storetest.New(t, storetest.Start(t, b))
			ctx := context.Background()
			messages := storetest.ShellMessages(t, st, "k3")
			spec := plainSpec
			gen, ok, err := st.ShellOpen(ctx, "k3", 0, "w1", "bash", spec, store.ShellLimit{})
			require.NoError(t, err)
			require.True(t, ok)
			out := []string{"O 1 5 5", "o 1 9 x", "e 1 1 0 - exit", "s 1 2 0"}
			_, err = st.ShellAppend(ctx, "k3", gen, out[:3])
			require.NoError(t, err)
			_, err = st.ShellAppend(ctx, "k3", gen, out[3:])
			require.NoError(t, err)
			require.Eventually(t, func() bool { return len(messages()) == len(out) }, 5*time.Second, 5*time.Millisecond)
			for i, m := range messages() {
				require.Equal(t, store.ShellLive{Kind: 'o', Gen: gen, Seq: int64(i + 1), Data: out[i]}, m)
			}
		})
	}
}

func TestParseShellLive(t *testing.T) {
	for _, bad := range []string{"", "o", "o 1", "o x 1 a", "o 1 x a", "e 1 2 3", "u 1", "z 1 2 3", "o1 1 a", "s 1 2", "s 1 2 2", "s 1 x 1", "s 1 2 1 x", "t 1", "t 1 ", "t x c", "t 1 9f3a", "t 1 0", "t 1 -2"} {
		_, ok := store.ParseShellLive(bad)
		require.False(t, ok, bad)
	}
	m, ok := store.ParseShellLive("o 2 5 a b\r\n")
	require.True(t, ok)
	require.Equal(t, store.ShellLive{Kind: 'o', Gen: 2, Seq: 5, Data: "a b\r\n"}, m)
	m, ok = store.ParseShellLive("u 1 1 https://x.test/a b")
	require.True(t, ok)
	require.Equal(t, store.ShellLive{Kind: 'u', Gen: 1, Data: "https://x.test/a b", AutoOpen: true}, m)
	m, ok = store.ParseShellLive("e 3 9 0 - lost")
	require.True(t, ok)
	require.Equal(t, store.ShellLive{Kind: 'e', Gen: 3, Seq: 9, Reason: "lost"}, m)
	m, ok = store.ParseShellLive("s 4 17 0")
	require.True(t, ok)
	require.Equal(t, store.ShellLive{Kind: 's', Gen: 4, Seq: 17}, m)
	m, ok = store.ParseShellLive("t 5 12")
	require.True(t, ok)
	require.Equal(t, store.ShellLive{Kind: 't', Gen: 5, Seq: 12}, m)
}

// TestShellTakenNumbersClaims: each claim of a terminal gets the next
// number, published on its channel with the generation it names, and a
// refresh reads the last; a terminal Redis lost is ErrShellGone, and
// nothing is published for it.
func TestShellTakenNumbersClaims(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) {
			st := storetest.New(t, storetest.Start(t, b))
			ctx := context.Background()
			messages := storetest.ShellMessages(t, st, "k1")
			gen, ok, err := st.ShellOpen(ctx, "k1", 0, "w1", "bash", plainSpec, store.ShellLimit{})
			require.NoError(t, err)
			require.True(t, ok)
			last, err := st.ShellRefresh(ctx, "k1", gen)
			require.NoError(t, err)
			require.Zero(t, last, "no claim yet")
			for want := int64(1); want <= 3; want++ {
				n, err := st.ShellTaken(ctx, "k1", gen)
				require.NoError(t, err)
				require.Equal(t, want, n)
			}
			require.Eventually(t, func() bool { return len(messages()) == 3 }, 5*time.Second, 5*time.Millisecond)
			for i, m := range messages()[:3] {
				require.Equal(t, store.ShellLive{Kind: 't', Gen: gen, Seq: int64(i + 1)}, m)
			}
			last, err = st.ShellRefresh(ctx, "k1", gen)
			require.NoError(t, err)
			require.EqualValues(t, 3, last)
			// A new generation (a restart) goes on counting: the
			// sockets that took the terminal before keep their numbers.
			gen2, ok, err := st.ShellOpen(ctx, "k1", gen, "w1", "bash", plainSpec, store.ShellLimit{})
			require.NoError(t, err)
			require.True(t, ok)
			n, err := st.ShellTaken(ctx, "k1", gen2)
			require.NoError(t, err)
			require.EqualValues(t, 4, n)
			_, err = st.ShellTaken(ctx, "k2", gen)
			require.ErrorIs(t, err, store.ErrShellGone)
			require.Eventually(t, func() bool { return len(messages()) == 4 }, 5*time.Second, 5*time.Millisecond)
			require.Never(t, func() bool { return len(messages()) > 4 }, 200*time.Millisecond, 20*time.Millisecond)
		})
	}
}

// budgetedTerminal opens terminal k1 on backend b, on a store whose
// terminals keep budget bytes of output, and returns the store, a raw
// client and the terminal's generation.
func budgetedTerminal(t *testing.T, b storetest.Backend, budget int) (*store.Store, redis.UniversalClient, int64) {
	t.Helper()
	url := storetest.Start(t, b)
	st := storetest.New(t, url, store.Config{ShellOutputBytes: budget})
	gen, _, err := st.ShellOpen(context.Background(), "k1", 0, "w1", "bash", plainSpec, store.ShellLimit{})
	require.NoError(t, err)
	return st, redisClient(t, url), gen
}

// TestShellOutputBudget: a terminal's stream holds at most the byte budget
// (oldest chunks trimmed, the newest always kept), outBytes says what it
// holds, and seqs go on without a gap in what remains.
func TestShellOutputBudget(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) {
			st, rdb, gen := budgetedTerminal(t, b, 10_000)
			ctx := context.Background()
			chunk := string(make([]byte, 3000))
			for i := 0; i < 10; i++ {
				_, err := st.ShellAppend(ctx, "k1", gen, []string{chunk, chunk})
				require.NoError(t, err)
			}
			out := st.Prefix() + ":shell:{k1}:out"
			entries, err := rdb.XRange(ctx, out, "-", "+").Result()
			require.NoError(t, err)
			require.Len(t, entries, 3, "3 chunks of 3000 bytes fit in 10000")
			for i, e := range entries {
				require.Equal(t, fmt.Sprint(18+i), e.Values["seq"])
			}
			held, err := rdb.HGet(ctx, st.Prefix()+":shell:{k1}", "outBytes").Int()
			require.NoError(t, err)
			require.Equal(t, 9000, held)

			// One chunk over the budget alone is still kept.
			_, err = st.ShellAppend(ctx, "k1", gen, []string{string(make([]byte, 12_000))})
			require.NoError(t, err)
			n, err := rdb.XLen(ctx, out).Result()
			require.NoError(t, err)
			require.EqualValues(t, 1, n)
		})
	}
}

// TestShellAppendPastLostWrites: a Redis that lost a terminal's last
// appends (a failover's replica, an older AOF) has a lower seq in the hash
// than the worker appended. With its last seq as the floor, the worker's
// next chunk goes on past it rather than under a seq the sockets already
// had (and would skip). The stream, its seqs now with a hole, is still
// trimmed to its byte budget, outBytes and the sizes list right.
func TestShellAppendPastLostWrites(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) {
			st, rdb, gen := budgetedTerminal(t, b, 10_000)
			ctx := context.Background()
			chunk := make([]byte, 3000)
			var last int64
			var err error
			for i := range 3 {
				last, err = st.ShellAppendBytes(ctx, "k1", gen, int64(i+1), last, [][]byte{chunk})
				require.NoError(t, err)
			}
			require.EqualValues(t, 3, last)

			// The last two appends lost, as on a replica that never got them.
			hash := st.Prefix() + ":shell:{k1}"
			require.NoError(t, rdb.XDel(ctx, hash+":out", "2-0", "3-0").Err())
			require.NoError(t, rdb.LTrim(ctx, hash+":sizes", 0, 0).Err())
			require.NoError(t, rdb.HSet(ctx, hash, "seq", 1, "outBytes", 3000, "appendBatch", 1).Err())

			last, err = st.ShellAppendBytes(ctx, "k1", gen, 4, last, [][]byte{chunk})
			require.NoError(t, err)
			require.EqualValues(t, 4, last, "past the floor, not seq 2 again")
			for i := range 3 {
				last, err = st.ShellAppendBytes(ctx, "k1", gen, int64(5+i), last, [][]byte{chunk})
				require.NoError(t, err)
			}
			require.EqualValues(t, 7, last)
			entries, err := rdb.XRange(ctx, hash+":out", "-", "+").Result()
			require.NoError(t, err)
			var seqs []string
			for _, e := range entries {
				seqs = append(seqs, e.Values["seq"].(string))
			}
			require.Equal(t, []string{"5", "6", "7"}, seqs, "the newest 9000 bytes of 10000, across the hole")
			held, err := rdb.HGet(ctx, hash, "outBytes").Int()
			require.NoError(t, err)
			require.Equal(t, 9000, held)
			sizes, err := rdb.LLen(ctx, hash+":sizes").Result()
			require.NoError(t, err)
			require.EqualValues(t, 3, sizes)
		})
	}
}

// TestShellTouchTellsGone: a touch of a generation that was replaced is
// ErrStaleShell; a refresh of one that exited ErrShellExited; of a terminal
// whose hash is gone altogether (Redis lost its data) ErrShellGone, which
// is also ErrStaleShell to the callers that only stop.
func TestShellTouchTellsGone(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) {
			st, rdb, gen := budgetedTerminal(t, b, store.DefaultShellOutputBytes)
			ctx := context.Background()
			_, err := st.ShellTouch(ctx, "k1", gen, 0)
			require.NoError(t, err)
			_, err = st.ShellTouch(ctx, "k1", gen+1, 0)
			require.ErrorIs(t, err, store.ErrStaleShell)
			require.NotErrorIs(t, err, store.ErrShellGone)

			// An exit its gateway may not have heard: a refresh says so;
			// a socket's attach or detach still counts.
			_, err = st.ShellExit(ctx, "k1", gen, 3, "", store.ShellExitNormal)
			require.NoError(t, err)
			_, err = st.ShellTouch(ctx, "k1", gen, 0)
			require.ErrorIs(t, err, store.ErrShellExited)
			n, err := st.ShellTouch(ctx, "k1", gen, +1)
			require.NoError(t, err)
			require.Equal(t, 1, n)

			require.NoError(t, rdb.Del(ctx, st.Prefix()+":shell:{k1}").Err())
			_, err = st.ShellTouch(ctx, "k1", gen, 0)
			require.ErrorIs(t, err, store.ErrShellGone)
			require.ErrorIs(t, err, store.ErrStaleShell)
		})
	}
}

// TestShellEndedRefusesWrites: a generation a gateway ended as lost (its
// worker's heartbeat expired while the worker only stalled) takes no more
// output, watch checks or field updates from that worker: each answers
// ErrStaleShell, on which the worker kills the terminal.
func TestShellEndedRefusesWrites(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) {
			st, _, gen := budgetedTerminal(t, b, store.DefaultShellOutputBytes)
			ctx := context.Background()
			last, err := st.ShellAppend(ctx, "k1", gen, []string{"before"})
			require.NoError(t, err)
			_, err = st.ShellIdle(ctx, "k1", gen)
			require.NoError(t, err)
			require.NoError(t, st.ShellSet(ctx, "k1", gen, "cols", "100"))

			ok, err := st.ShellExit(ctx, "k1", gen, 1, "", store.ShellExitLost)
			require.NoError(t, err)
			require.True(t, ok)
			_, err = st.ShellAppend(ctx, "k1", gen, []string{"after"})
			require.ErrorIs(t, err, store.ErrStaleShell)
			_, err = st.ShellIdle(ctx, "k1", gen)
			require.ErrorIs(t, err, store.ErrStaleShell)
			require.ErrorIs(t, st.ShellSet(ctx, "k1", gen, "state", store.ShellRunning), store.ErrStaleShell)

			chunks, err := st.ShellOutput(ctx, "k1", 0, 100)
			require.NoError(t, err)
			require.Equal(t, last, chunks[len(chunks)-1].Seq, "nothing appended after the end")
			info, ok, err := st.Shell(ctx, "k1")
			require.NoError(t, err)
			require.True(t, ok)
			require.Equal(t, "exited", info.State)
		})
	}
}

// TestShellFloodMemoryIsBounded: 100 terminals flooded with 8 times their
// output budget each leave Redis holding about the budgets, not the flood.
func TestShellFloodMemoryIsBounded(t *testing.T) {
	url := storetest.Start(t, storetest.Real)
	const budget, terminals = 256 << 10, 100
	st := storetest.New(t, url, store.Config{ShellOutputBytes: budget})
	ctx := context.Background()
	rdb := redisClient(t, url)
	used := func() int64 { return storetest.UsedMemory(t, rdb) }
	before := used()
	chunk := strings.Repeat("y\r\n", 32<<10/3)
	batch := []string{chunk, chunk, chunk, chunk, chunk, chunk, chunk, chunk}
	for i := 0; i < terminals; i++ {
		key := fmt.Sprintf("flood%d", i)
		spec := plainSpec
		gen, _, err := st.ShellOpen(ctx, key, 0, "w1", "bash", spec, store.ShellLimit{})
		require.NoError(t, err)
		for j := 0; j < 8; j++ { // 8 x 256 KiB
			_, err := st.ShellAppend(ctx, key, gen, batch)
			require.NoError(t, err)
		}
	}
	grown := used() - before
	t.Logf("%d terminals, %d KiB appended to each: Redis grew %d KiB (budget %d KiB each)", terminals, 8*len(batch)*len(chunk)>>10, grown>>10, budget>>10)
	require.Less(t, grown, int64(terminals*budget*3/2), "Redis holds more than the budgets")
}

// TestEndedTerminalsKeepLittle: a user who opens and ends terminals by the
// dozen keeps the last 64 KiB of output of their 16 most recently ended
// terminals, not each one's whole budget for the retention; a key opened
// again, or one a socket still reads, is not touched by the deletion of
// the older ones.
func TestEndedTerminalsKeepLittle(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) {
			url := storetest.Start(t, b)
			st := storetest.New(t, url, store.Config{ShellOutputBytes: 1 << 20})
			ctx := context.Background()
			rdb := redisClient(t, url)
			spec := plainSpec
			chunk := strings.Repeat("z", 30<<10)
			const ended = 24
			for i := range ended {
				key := fmt.Sprintf("t%d", i)
				gen, _, err := st.ShellOpen(ctx, key, 0, "w1", "bash", spec, store.ShellLimit{})
				require.NoError(t, err)
				_, err = st.ShellAppend(ctx, key, gen, []string{chunk, chunk, chunk, chunk, chunk, chunk, "end"})
				require.NoError(t, err)
				if i == 1 {
					// A socket still reads t1's output: it stays.
					_, err = st.ShellTouch(ctx, key, gen, 1)
					require.NoError(t, err)
				}
				recorded, err := st.ShellExit(ctx, key, gen, 0, "", store.ShellExitNormal)
				require.NoError(t, err)
				require.True(t, recorded)
				if i == 0 {
					// t0 is opened again: it runs when its old end is
					// pushed out of the ended terminals.
					_, ok, err := st.ShellOpen(ctx, key, gen, "w1", "bash", spec, store.ShellLimit{})
					require.NoError(t, err)
					require.True(t, ok)
				}
			}
			for i := range ended {
				hash := fmt.Sprintf("%s:shell:{t%d}", st.Prefix(), i)
				h := rdb.HMGet(ctx, hash, "state", "outBytes").Val()
				switch {
				case i == 0:
					require.Equal(t, store.ShellStarting, h[0], "a key opened again stays")
				case i == 1:
					require.Equal(t, store.ShellExited, h[0], "an ended terminal a socket reads stays")
				case i < ended-16:
					require.Nil(t, h[0], "t%d: an older ended terminal is deleted", i)
					require.Zero(t, rdb.Exists(ctx, hash+":out", hash+":sizes").Val())
				default:
					require.Equal(t, store.ShellExited, h[0])
					entries, err := rdb.XRange(ctx, hash+":out", "-", "+").Result()
					require.NoError(t, err)
					held := 0
					for _, e := range entries {
						held += len(e.Values["data"].(string))
					}
					require.Equal(t, fmt.Sprint(held), h[1], "outBytes is what the stream holds")
					require.LessOrEqual(t, held, 64<<10)
					require.Equal(t, "end", entries[len(entries)-1].Values["data"], "the end is kept")
				}
			}
		})
	}
}

// TestShellOpenInboxFailEnds: an open whose control cannot be queued in
// the worker's inbox (another slot on a cluster, its master failing over)
// ends the generation it took at once, as not_started, and gives back its
// place: the user's retry opens a fresh generation rather than reattaching
// to a terminal no worker will ever start.
func TestShellOpenInboxFailEnds(t *testing.T) {
	for _, b := range storetest.AllBackends {
		t.Run(string(b), func(t *testing.T) {
			url := storetest.Start(t, b)
			st := storetest.New(t, url)
			raw := redisClient(t, url)
			ctx := context.Background()
			p := st.Prefix()
			one := store.ShellLimit{Max: 1}
			inbox := p + ":worker:w1:inbox"
			require.NoError(t, raw.Set(ctx, inbox, "x", 0).Err()) // XADD fails (WRONGTYPE)
			_, _, err := st.ShellOpen(ctx, "k1", 0, "w1", "bash", plainSpec, one)
			require.ErrorContains(t, err, "tell worker w1")
			info, ok, err := st.Shell(ctx, "k1")
			require.NoError(t, err)
			require.True(t, ok)
			require.Equal(t, store.ShellExited, info.State, "no generation left starting with nothing queued")
			require.Equal(t, store.ShellExitNotStarted, info.ExitReason)
			for _, index := range []string{p + ":user:{alice}:shells", p + ":shells:open"} {
				_, err := raw.ZScore(ctx, index, "k1").Result()
				require.ErrorIs(t, err, redis.Nil, "its place given back in %s", index)
			}

			require.NoError(t, raw.Del(ctx, inbox).Err())
			gen, ok, err := st.ShellOpen(ctx, "k1", info.Gen, "w1", "bash", plainSpec, one)
			require.NoError(t, err, "the retry opens a fresh generation, within the limit")
			require.True(t, ok)
			require.Equal(t, info.Gen+1, gen)
			info, _, err = st.Shell(ctx, "k1")
			require.NoError(t, err)
			require.Equal(t, store.ShellStarting, info.State)
			in, err := st.ReadInbox(ctx, "w1", "0", time.Millisecond)
			require.NoError(t, err)
			require.Len(t, in, 1)
			require.Equal(t, store.ControlShellOpen, in[0].Control.Type)
			require.Equal(t, gen, in[0].Control.Gen)
		})
	}
}
