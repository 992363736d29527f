package store

import (
	"cmp"
	"context"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/agentgate/agentgate/app"
)

// ShellMaxChunks caps a terminal's output stream (PROTOCOL §4).
const ShellMaxChunks = 5000

// Control types of terminals, sent to the worker that runs them. Shell and
// Gen of the Control name the terminal generation.
const (
	// ControlShellOpen starts a terminal; Data is an app.ShellSpec.
	ControlShellOpen = "shell-open"
	// ControlShellInput writes to a terminal; Data is a JSON string.
	ControlShellInput = "shell-input"
	// ControlShellResize resizes a terminal; Data is ShellSize.
	ControlShellResize = "shell-resize"
	// ControlShellKill kills a terminal's whole process session.
	ControlShellKill = "shell-kill"
	// ControlShellAck says a socket was sent the terminal's output up to
	// the seq in Data (a JSON number): the worker's flow control. Sent by
	// gateways before ControlShellAcks; workers still take it.
	ControlShellAck = "shell-ack"
	// ControlShellAcks carries the acks of many terminals of one worker,
	// a []ShellAck in Data; Shell and Gen of the Control are empty.
	ControlShellAcks = "shell-acks"
)

// ShellAck says a socket was sent the output of a terminal generation up
// to Seq.
type ShellAck struct {
	Shell string `json:"shell"`
	Gen   int64  `json:"gen"`
	Seq   int64  `json:"seq"`
}

// ShellSize is the Data of a resize control.
type ShellSize struct {
	Cols int `json:"cols"`
	Rows int `json:"rows"`
}

// Terminal states in the shell hash.
const (
	ShellStarting = "starting"
	ShellRunning  = "running"
	ShellExited   = "exited"
)

// Reasons of a terminal's end.
const (
	ShellExitNormal = "exit" // the process ended or was killed on its worker
	ShellExitLost   = "lost" // its worker died
	// ShellExitNotStarted ends a generation that stayed starting: its
	// open never reached a worker (the gateway died before queueing it,
	// or the queueing failed), or the worker dropped it. Recorded only
	// while the generation is still starting.
	ShellExitNotStarted = "not_started"
	// ShellExitGone is a gateway's own end of a terminal Redis no longer
	// has (ErrShellGone); it is told to that gateway's sockets, never
	// stored.
	ShellExitGone = "gone"
	// ShellExitEvicted ends the least recently watched terminal of a user
	// that no socket watches, to give its place to a terminal the user
	// opens at their limit (ShellLimit). Recorded only while the
	// generation is unwatched.
	ShellExitEvicted = "evicted"
)

// ShellLimit bounds the terminals an owner has open at once (ShellOpen).
type ShellLimit struct {
	// Max is the most terminals open at once; 0 means no limit.
	Max int
	// Stale is how long a terminal's watchedAt may go unrefreshed before
	// the terminal counts as unwatched, whatever its `attached` count says
	// (the gateway that held its sockets died). Zero means
	// DefaultShellUnwatched; negative means never (just after a Redis
	// outage, no gateway could refresh any).
	Stale time.Duration
}

// DefaultShellUnwatched is ShellLimit's default Stale: three of the
// longest refresh period of a gateway (5 s).
const DefaultShellUnwatched = 15 * time.Second

// shellEvictTries bounds how many times an open at the limit reads its
// owner's terminals again after its choice of one to end was overtaken
// (another open took the place, the terminal was watched again).
const shellEvictTries = 4

// The terminal scripts, one file each under lua/.
var (
	//go:embed lua/shell_prelude.lua
	shellPreludeLua string
	//go:embed lua/shell_open.lua
	shellOpenLua string
	//go:embed lua/shell_append.lua
	shellAppendLua string
	//go:embed lua/shell_exit.lua
	shellExitLua string
	//go:embed lua/shell_touch.lua
	shellTouchLua string
	//go:embed lua/shell_idle.lua
	shellIdleLua string
	//go:embed lua/shell_set.lua
	shellSetLua string
	//go:embed lua/shell_forget.lua
	shellForgetLua string
	//go:embed lua/shell_claim.lua
	shellClaimLua string
)

// What a user's ended terminals keep until their retention is over: the
// last endedOutputBytes of each one's output, and only the endedKept most
// recently ended (the older are deleted at once).
const (
	endedOutputBytes = 64 << 10
	endedKept        = 16
)

// shell is a terminal's hash `ag:shell:{KEY}`.
func (k keys) shell(key string) string { return k.prefix + ":shell:{" + key + "}" }

// shellOut is a terminal's output stream `ag:shell:{KEY}:out`.
func (k keys) shellOut(key string) string { return k.shell(key) + ":out" }

// shellSizes is the size of each chunk in the output stream, oldest first
// `ag:shell:{KEY}:sizes`, for trimming to the byte budget.
func (k keys) shellSizes(key string) string { return k.shell(key) + ":sizes" }

// shellLive is the pub/sub channel of a terminal's output.
func (k keys) shellLive(key string) string { return k.shell(key) + ":live" }

// shellOfLive returns the shell key of a terminal channel name.
func (k keys) shellOfLive(channel string) (string, bool) {
	rest, ok := strings.CutPrefix(channel, k.prefix+":shell:{")
	if !ok {
		return "", false
	}
	return strings.CutSuffix(rest, "}:live")
}

// ShellInfo is what a terminal's hash holds.
type ShellInfo struct {
	Key         string
	Gen         int64
	Owner       string
	ProjectPath string
	Provider    string
	Command     string
	Worker      string
	State       string
	Cols, Rows  int
	Seq         int64
	Attached    int
	ExitCode    int
	Signal      string
	ExitReason  string
}

// Shell reads a terminal's hash; ok is false when there is none.
func (s *Store) Shell(ctx context.Context, key string) (ShellInfo, bool, error) {
	m, err := s.rdb.HGetAll(ctx, s.k.shell(key)).Result()
	if err != nil {
		return ShellInfo{}, false, fmt.Errorf("store: read shell %s: %w", key, err)
	}
	if len(m) == 0 {
		return ShellInfo{}, false, nil
	}
	num := func(f string) int { n, _ := strconv.Atoi(m[f]); return n }
	return ShellInfo{
		Key: key, Gen: atoi64(m["gen"]), Owner: m["owner"], ProjectPath: m["projectPath"], Provider: m["provider"],
		Command: m["command"], Worker: m["worker"], State: m["state"], Cols: num("cols"), Rows: num("rows"),
		Seq: atoi64(m["seq"]), Attached: num("attached"), ExitCode: num("exitCode"), Signal: m["signal"],
		ExitReason: m["exitReason"],
	}, true, nil
}

// ShellOpen starts generation prevGen+1 of a terminal on worker, if the key
// is still at prevGen (0 for a key that does not exist): it resets the
// hash and the output, and queues the open control in the worker's inbox,
// atomically (shell_open.lua). ok is false when another caller opened the
// key first; the caller then reads it again and reattaches. A key with no
// hash (new, expired, or lost with Redis's data) starts at the time in
// milliseconds, not 1: a process of generation 1 may still run from before
// a loss, and a worker takes an open of a generation it runs for a repeat.
//
// limit bounds the terminals the owner has open at once. At it, the
// owner's least recently watched terminal that no socket watches is ended
// (ShellExitEvicted, its worker told to kill it) and its place taken
// (evictShell); when every one is watched ShellOpen returns an
// *app.LimitError. Reopening a key the owner has open always passes.
//
// When the open control cannot be queued, the generation taken is ended
// at once (ShellExitNotStarted) before the error is returned: a retry
// opens a fresh one.
func (s *Store) ShellOpen(ctx context.Context, key string, prevGen int64, worker, command string, spec app.ShellSpec, limit ShellLimit) (gen int64, ok bool, err error) {
	maxOpen := limit.Max
	gen = prevGen + 1
	if prevGen == 0 {
		gen = time.Now().UnixMilli()
	}
	data, err := json.Marshal(spec)
	if err != nil {
		return 0, false, fmt.Errorf("store: open shell %s: %w", key, err)
	}
	body, err := json.Marshal(Control{Type: ControlShellOpen, Shell: key, Gen: gen, Data: data, ID: app.NewID()})
	if err != nil {
		return 0, false, fmt.Errorf("store: open shell %s: %w", key, err)
	}
	if maxOpen > 0 {
		ok, _, err := s.reserve(ctx, s.k.userShells(spec.Owner), key, maxOpen, s.staleShells)
		if err == nil && !ok {
			ok, err = s.evictShell(ctx, spec.Owner, key, limit)
		}
		if err != nil {
			return 0, false, fmt.Errorf("store: open shell %s: reserve a terminal of %s: %w", key, spec.Owner, err)
		}
		if !ok {
			return 0, false, &app.LimitError{Limit: app.LimitTerminalsPerUser, Max: maxOpen}
		}
	} else if err := s.touch(ctx, s.k.userShells(spec.Owner), key, 0); err != nil {
		return 0, false, fmt.Errorf("store: open shell %s: index: %w", key, err)
	}
	// Written ahead, as the running set is: the reaper then finds every
	// terminal even if this process dies right after the open.
	if err := s.touch(ctx, s.k.shellsOpen(), key, 0); err != nil {
		return 0, false, fmt.Errorf("store: open shell %s: index: %w", key, err)
	}
	n, err := s.sc.shellOpen.Run(ctx, s.rdb,
		[]string{s.k.shell(key), s.k.shellOut(key), s.k.shellSizes(key)},
		prevGen, gen, worker, spec.Owner, spec.ProjectPath, string(spec.Provider), command,
		spec.Cols, spec.Rows).Int()
	if err != nil {
		return 0, false, fmt.Errorf("store: open shell %s: %w", key, err)
	}
	if n != 1 {
		// Another caller opened it: its place is that terminal's.
		return gen, false, nil
	}
	// The open control goes to the worker's inbox (another slot on a
	// cluster) once the generation is the key's, before the caller sends
	// any keystroke of it.
	if err := s.rdb.XAdd(ctx, &redis.XAddArgs{
		Stream: s.k.inbox(worker), MaxLen: inboxMaxLen, Approx: true, Values: []any{"msg", body},
	}).Err(); err != nil {
		// The generation is the key's but no worker will start it: end it
		// now (not_started ends only a generation still starting with no
		// output, so an open that did reach the worker despite the error
		// and already ran is left alone), which gives back its places, so
		// the user's retry opens a fresh generation instead of
		// reattaching to a blank terminal until the reaper ends it. No
		// retry of the XADD here: go-redis already retried it through
		// redirects and failovers, and the user waits on this open. If
		// this end fails too, the reaper ends the generation as before.
		// The XADD may have failed because ctx ended (the socket went):
		// the end is still due.
		endCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err2 := s.shellExit(endCtx, key, gen, 1, "", ShellExitNotStarted); err2 != nil {
			s.log.Warn("end a terminal whose open was not queued", "shell", key, "gen", gen, "err", err2)
		}
		return 0, false, fmt.Errorf("store: open shell %s: tell worker %s: %w", key, worker, err)
	}
	return gen, true, nil
}

// staleShells gives, for each terminal key of an owner's set, the highest
// score at which its entry may go (-1 while the terminal is open), for
// reserve. A terminal whose worker is gone (its heartbeat expired) is ended
// as lost here: a gateway ends it when a socket watches it, and the reaper
// (OpenShells) within a pass otherwise, but the owner need not wait.
func (s *Store) staleShells(ctx context.Context, keys []string) ([]int64, error) {
	rows, now, err := s.shellStates(ctx, keys)
	if err != nil {
		return nil, err
	}
	out := make([]int64, len(keys))
	alive := map[string]bool{}
	for i, r := range rows {
		switch r.state {
		case "":
			out[i] = staleAfter(now, 0)
		case ShellExited:
			out[i] = staleAfter(now, r.created)
		default:
			out[i] = -1
			if r.worker == "" {
				continue
			}
			ok, seen := alive[r.worker]
			if !seen {
				if ok, err = s.WorkerAlive(ctx, r.worker); err != nil {
					return nil, err
				}
				alive[r.worker] = ok
			}
			if ok {
				continue
			}
			if _, err := s.ShellExit(ctx, keys[i], r.gen, 1, "", ShellExitLost); err != nil {
				return nil, err
			}
			out[i] = staleAfter(now, r.created)
		}
	}
	return out, nil
}

// evictCandidate is an open terminal of a user's that no socket watches.
type evictCandidate struct {
	key, worker string
	gen         int64
	// score is the terminal's entry in its owner's index, watchedAt when
	// a socket last watched it (Redis time, ms).
	score, watchedAt int64
}

// evictShell takes a place for key among owner's open terminals, at
// limit.Max, from the least recently watched of them that no socket
// watches: the place is taken in the owner's slot (index_reserve.lua with a victim, which
// checks that the choice still holds there), then the terminal is ended
// in its own slot, only if still unwatched (shell_exit.lua, reason
// ShellExitEvicted; the place is given back if not), and its worker is
// told to kill its processes. Its sockets, if any reattach, are told why.
// ok is false when every terminal of owner is watched.
//
// The two steps touch two slots (a Redis Cluster): between them the place
// is the new terminal's and the old one still runs, until its worker
// kills it; the limit, which counts places, stays exact.
func (s *Store) evictShell(ctx context.Context, owner, key string, limit ShellLimit) (bool, error) {
	index := s.k.userShells(owner)
	for range shellEvictTries {
		cands, err := s.evictCandidates(ctx, index, key, limit)
		if err != nil || len(cands) == 0 {
			return false, err
		}
		c := cands[0]
		res, err := s.sc.indexReserve.Run(ctx, s.rdb, []string{index}, key, limit.Max, c.key, c.score).Int64Slice()
		if err != nil {
			return false, err
		}
		if len(res) != 2 {
			return false, fmt.Errorf("index_reserve.lua answered %v", res)
		}
		switch res[0] {
		case 1:
			return true, nil // a place was free, or key has one
		case 0:
			continue // overtaken: read again
		}
		swapped := res[1]
		if s.beforeEvictExit != nil {
			s.beforeEvictExit(c.key)
		}
		st, err := s.shellExit(ctx, c.key, c.gen, 1, "", ShellExitEvicted,
			staleMillis(limit.Stale), indexGrace.Milliseconds())
		if err != nil || st < 0 {
			// Watched again meanwhile (or not known to be ended): the
			// place goes back to it.
			if err2 := s.sc.indexSwapBack.Run(ctx, s.rdb, []string{index}, key, swapped, c.key, c.score).Err(); err2 != nil {
				s.log.Warn("give back a terminal's place", "shell", c.key, "err", err2)
			}
			if err != nil {
				return false, err
			}
			continue
		}
		if st == 1 {
			s.log.Info("terminal ended to give its place to a new one of its owner's",
				"shell", c.key, "gen", c.gen, "owner", owner, "for", key)
		}
		// Ended by this call, or already ended some other way: its place
		// is key's either way. Its worker kills it now rather than at its
		// next append or check of the terminal (up to 30 s later).
		if err := s.SendControl(ctx, c.worker, Control{Type: ControlShellKill, Shell: c.key, Gen: c.gen}); err != nil {
			s.log.Warn("tell a worker to kill an evicted terminal", "shell", c.key, "worker", c.worker, "err", err)
		}
		return true, nil
	}
	return false, nil
}

// staleMillis is ShellLimit.Stale for shell_exit.lua: -1 for never.
func staleMillis(d time.Duration) int64 {
	switch {
	case d == 0:
		return DefaultShellUnwatched.Milliseconds()
	case d < 0:
		return -1
	}
	return d.Milliseconds()
}

// evictCandidates lists the open terminals of an owner's index (but skip)
// that no socket watches by shell_exit.lua's rule for ShellExitEvicted,
// least recently watched first.
func (s *Store) evictCandidates(ctx context.Context, index, skip string, limit ShellLimit) ([]evictCandidate, error) {
	zs, err := s.rdb.ZRangeWithScores(ctx, index, 0, -1).Result()
	if err != nil || len(zs) == 0 {
		return nil, err
	}
	keys := make([]string, len(zs))
	for i, z := range zs {
		keys[i], _ = z.Member.(string)
	}
	rows, t, err := s.shellStates(ctx, keys)
	if err != nil {
		return nil, err
	}
	now, stale := t.UnixMilli(), staleMillis(limit.Stale)
	var out []evictCandidate
	for i, r := range rows {
		if keys[i] == skip || (r.state != ShellStarting && r.state != ShellRunning) {
			continue
		}
		// As shell_exit.lua decides: a generation no socket attached to
		// yet is left alone just after its open (its socket is
		// attaching); otherwise no socket now, or none refreshed for
		// stale. A terminal opened before `seen` existed has none, and is
		// judged by the same rule once past its first moments.
		unwatched := r.attached <= 0 || (stale >= 0 && r.watchedAt > 0 && now-r.watchedAt >= stale)
		if !r.seen && now-r.created < indexGrace.Milliseconds() {
			unwatched = false
		}
		if unwatched {
			out = append(out, evictCandidate{key: keys[i], worker: r.worker, gen: r.gen, score: int64(zs[i].Score), watchedAt: r.watchedAt})
		}
	}
	slices.SortStableFunc(out, func(a, b evictCandidate) int { return cmp.Compare(a.watchedAt, b.watchedAt) })
	return out, nil
}

// shellState is what the index cleaners and evictions read of a
// terminal's hash.
type shellState struct {
	state, worker     string
	gen, created, seq int64
	// attached counts the sockets watching it, watchedAt is when one last
	// did (Redis time, ms), seen whether one ever did.
	attached, watchedAt int64
	seen                bool
}

// shellStates reads the state of each terminal of keys in one round trip,
// and Redis's clock to compare their times with.
func (s *Store) shellStates(ctx context.Context, keys []string) ([]shellState, time.Time, error) {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.SliceCmd, len(keys))
	for i, k := range keys {
		cmds[i] = pipe.HMGet(ctx, s.k.shell(k), "state", "worker", "gen", "createdAt", "seq", "attached", "watchedAt", "seen")
	}
	if _, err := pipe.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
		return nil, time.Time{}, err
	}
	now, err := s.rdb.Time(ctx).Result()
	if err != nil {
		return nil, time.Time{}, err
	}
	rows := make([]shellState, len(keys))
	for i, c := range cmds {
		v := c.Val()
		str := func(j int) string { x, _ := v[j].(string); return x }
		rows[i] = shellState{
			state: str(0), worker: str(1),
			gen: atoi64(str(2)), created: atoi64(str(3)), seq: atoi64(str(4)),
			attached: atoi64(str(5)), watchedAt: atoi64(str(6)), seen: str(7) == "1",
		}
	}
	return rows, now, nil
}

// rebuildShellIndexes puts every open terminal (starting or running) back
// into its owner's open terminals and into the open terminals, from the
// terminal hashes, scanning every master: RebuildIndexes's share of the
// terminals. Those entries are written outside the terminal's slot (ahead
// of shell_open.lua, and by index_reserve.lua), so a failover can lose them,
// and a process can die between an eviction's index_reserve.lua and its
// shell_exit.lua; a lost entry would let its owner pass their limit and
// hide the terminal from the reaper (OpenShells). A user this puts past
// their limit does have that many terminals open: their next open at the
// limit is refused or evicts as usual.
//
// An entry is added only where there is none (ZADD NX), at the
// generation's createdAt: the Redis time of its open, which its lost entry
// held within a few milliseconds (written just before the open), on the
// terminal's own clock. While the terminal is open the score is never
// read (staleShells keeps an open terminal's entry whatever it is, and
// eviction goes by watchedAt); once it ends, shell_exit's unindexing
// (forget up to createdAt) removes it at once, as does a cleaner's
// (staleAfter), so an entry put back for a terminal that ended meanwhile
// lingers no longer than the next read. A later open of the key writes
// its own, later score over it. The rebuild time would instead outlive
// the generation's end by its grace and look like a newer open.
func (s *Store) rebuildShellIndexes(ctx context.Context) error {
	prefix := s.k.prefix + ":shell:{"
	var keys []string
	err := s.scanKeys(ctx, prefix+"*}", "hash", func(found []string) error {
		for _, k := range found {
			key, ok := strings.CutPrefix(k, prefix)
			if ok && strings.HasSuffix(key, "}") && !strings.Contains(key, "}:") {
				keys = append(keys, strings.TrimSuffix(key, "}"))
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("store: rebuild terminal indexes: %w", err)
	}
	for len(keys) > 0 {
		batch := keys[:min(len(keys), 500)]
		keys = keys[len(batch):]
		read := s.rdb.Pipeline()
		cmds := make([]*redis.SliceCmd, len(batch))
		for i, k := range batch {
			cmds[i] = read.HMGet(ctx, s.k.shell(k), "state", "owner", "createdAt")
		}
		if _, err := read.Exec(ctx); err != nil && !errors.Is(err, redis.Nil) {
			return fmt.Errorf("store: rebuild terminal indexes: %w", err)
		}
		write := s.rdb.Pipeline()
		for i, c := range cmds {
			v := c.Val()
			str := func(j int) string { x, _ := v[j].(string); return x }
			if state := str(0); state != ShellStarting && state != ShellRunning {
				continue
			}
			z := redis.Z{Score: float64(atoi64(str(2))), Member: batch[i]}
			write.ZAddNX(ctx, s.k.shellsOpen(), z)
			if owner := str(1); owner != "" {
				write.ZAddNX(ctx, s.k.userShells(owner), z)
			}
		}
		if write.Len() == 0 {
			continue
		}
		if _, err := write.Exec(ctx); err != nil {
			return fmt.Errorf("store: rebuild terminal indexes: %w", err)
		}
	}
	return nil
}

// OpenShell is an open terminal as OpenShells read it.
type OpenShell struct {
	Key, Worker string
	Gen         int64
	// Starting says no worker has started it yet (it is starting and has
	// no output); Age is how long ago the generation was opened, by
	// Redis's clock.
	Starting bool
	Age      time.Duration
}

// OpenShells lists the open terminals (starting or running) and drops the
// index entries of ended or deleted ones, for the reaper.
func (s *Store) OpenShells(ctx context.Context) ([]OpenShell, error) {
	keys, err := s.rdb.ZRange(ctx, s.k.shellsOpen(), 0, -1).Result()
	if err != nil || len(keys) == 0 {
		return nil, err
	}
	rows, now, err := s.shellStates(ctx, keys)
	if err != nil {
		return nil, fmt.Errorf("store: list open shells: %w", err)
	}
	var out []OpenShell
	for i, r := range rows {
		switch r.state {
		case ShellStarting, ShellRunning:
			out = append(out, OpenShell{Key: keys[i], Worker: r.worker, Gen: r.gen,
				Starting: r.state == ShellStarting && r.seq == 0, Age: now.Sub(time.UnixMilli(r.created))})
		default:
			if err := s.forget(ctx, s.k.shellsOpen(), keys[i], staleAfter(now, r.created)); err != nil {
				return nil, fmt.Errorf("store: list open shells: %w", err)
			}
		}
	}
	return out, nil
}

// ErrStaleShell means a terminal generation was replaced, ended elsewhere
// (a gateway took its worker for dead), or its key deleted: its process
// must stop. Appends, checks and field updates answer it.
var ErrStaleShell = errors.New("terminal generation replaced")

// ErrShellGone is the ErrStaleShell of a terminal whose hash is gone
// altogether: a Redis that restarted without its data lost it, and its
// sockets will hear nothing more of it.
var ErrShellGone = fmt.Errorf("terminal gone from the store: %w", ErrStaleShell)

// ErrShellExited is what a refresh (ShellTouch with delta 0) of a
// generation that has exited returns: its sockets may not have heard the
// exit (published while the gateway's subscription was down).
var ErrShellExited = errors.New("terminal exited")

// ShellAppend appends output chunks of a terminal generation and publishes
// them, in one script call (shell_append.lua). It returns the last seq.
func (s *Store) ShellAppend(ctx context.Context, key string, gen int64, chunks []string) (int64, error) {
	return s.ShellAppendBatch(ctx, key, gen, 0, chunks)
}

// ShellAppendBatch is ShellAppend for a writer that numbers its appends to
// a generation from 1: a batch already taken (the call retried after its
// reply was lost) is not taken again, and the terminal's last seq is
// returned. Batch 0 is ShellAppend, unnumbered.
func (s *Store) ShellAppendBatch(ctx context.Context, key string, gen, batch int64, chunks []string) (int64, error) {
	return s.shellAppend(ctx, key, gen, batch, 0, chunkArgs(chunks))
}

// ShellAppendBytes is ShellAppendBatch for output held as bytes (a PTY's),
// sent as it is: a flood then costs no copy into strings, and no garbage.
// Each chunk must be valid UTF-8. floor is the last seq the caller
// appended to the generation (0 for none): a Redis that lost its last
// writes goes on past it, so that new output never takes a seq the
// terminal's sockets already had (and would skip).
func (s *Store) ShellAppendBytes(ctx context.Context, key string, gen, batch, floor int64, chunks [][]byte) (int64, error) {
	return s.shellAppend(ctx, key, gen, batch, floor, chunkArgs(chunks))
}

// chunkArgs appends output chunks after shell_append.lua's six arguments.
func chunkArgs[T string | []byte](chunks []T) []any {
	args := make([]any, 6, 6+len(chunks))
	for _, c := range chunks {
		args = append(args, c)
	}
	return args
}

// shellAppend runs shell_append.lua; args holds six empty slots, then the
// chunks (chunkArgs).
func (s *Store) shellAppend(ctx context.Context, key string, gen, batch, floor int64, args []any) (int64, error) {
	args[0], args[1], args[2], args[3], args[4], args[5] = gen, ShellMaxChunks, s.k.shellLive(key), s.cfg.ShellOutputBytes, batch, floor
	seq, err := s.sc.shellAppend.Run(ctx, s.rdb, []string{s.k.shell(key), s.k.shellOut(key), s.k.shellSizes(key)}, args...).Int64()
	if err != nil {
		return 0, fmt.Errorf("store: append to shell %s: %w", key, err)
	}
	if seq < 0 {
		return 0, ErrStaleShell
	}
	return seq, nil
}

// ShellSet sets hash fields of a current terminal generation.
func (s *Store) ShellSet(ctx context.Context, key string, gen int64, fields ...string) error {
	args := make([]any, 0, 1+len(fields))
	args = append(args, gen)
	for _, f := range fields {
		args = append(args, f)
	}
	n, err := s.sc.shellSet.Run(ctx, s.rdb, []string{s.k.shell(key)}, args...).Int()
	if err != nil {
		return fmt.Errorf("store: update shell %s: %w", key, err)
	}
	if n == 0 {
		return ErrStaleShell
	}
	return nil
}

// ShellExit records the end of a terminal generation once and tells its
// watchers, after its last output; its hash and output then expire after
// the retention. signal is a name such as "SIGKILL", or
// "". It reports whether this call recorded the end.
func (s *Store) ShellExit(ctx context.Context, key string, gen int64, exitCode int, signal, reason string) (bool, error) {
	st, err := s.shellExit(ctx, key, gen, exitCode, signal, reason)
	return st == 1, err
}

// shellExit is ShellExit; extra are shell_exit.lua's arguments after the
// seventh (an eviction's). It returns 1 when this call recorded the end,
// -1 when an eviction found the generation watched, else 0.
func (s *Store) shellExit(ctx context.Context, key string, gen int64, exitCode int, signal, reason string, extra ...any) (int64, error) {
	args := append([]any{gen, s.k.shellLive(key), exitCode, signal, reason, int64(s.cfg.ShellRetention.Seconds()), endedOutputBytes}, extra...)
	res, err := s.sc.shellExit.Run(ctx, s.rdb, []string{s.k.shell(key), s.k.shellOut(key), s.k.shellSizes(key)}, args...).Slice()
	if err != nil {
		return 0, fmt.Errorf("store: end shell %s: %w", key, err)
	}
	if len(res) == 1 && res[0] == int64(-1) {
		return -1, nil
	}
	if len(res) < 4 || res[0] != int64(1) {
		return 0, nil
	}
	owner, _ := res[1].(string)
	created, _ := res[2].(string)
	ended, _ := res[3].(string)
	if owner != "" {
		// A later generation of the key has a later score and stays.
		if err := s.forget(ctx, s.k.userShells(owner), key, atoi64(created)); err != nil {
			s.log.Warn("unindex terminal", "shell", key, "err", err)
		}
		if err := s.forget(ctx, s.k.shellsOpen(), key, atoi64(created)); err != nil {
			s.log.Warn("unindex terminal", "shell", key, "err", err)
		}
		if err := s.keepEnded(ctx, owner, key, atoi64(ended)); err != nil {
			s.log.Warn("index ended terminal", "shell", key, "err", err)
		}
	}
	return 1, nil
}

// keepEnded lists key among owner's ended terminals, by the Redis time it
// ended (ms), and deletes the ended terminals past the newest endedKept:
// each keeps its output for the retention, and a user who opens and ends
// terminals by the hundred must not keep a hundred.
func (s *Store) keepEnded(ctx context.Context, owner, key string, ended int64) error {
	index := s.k.userEnded(owner)
	pipe := s.rdb.Pipeline()
	pipe.ZAdd(ctx, index, redis.Z{Score: float64(ended), Member: key})
	pipe.Expire(ctx, index, s.cfg.ShellRetention)
	old := pipe.ZRange(ctx, index, 0, -endedKept-1)
	if _, err := pipe.Exec(ctx); err != nil {
		return err
	}
	for _, k := range old.Val() {
		if err := s.sc.shellForget.Run(ctx, s.rdb, []string{s.k.shell(k), s.k.shellOut(k), s.k.shellSizes(k)}).Err(); err != nil {
			return err
		}
		if err := s.rdb.ZRem(ctx, index, k).Err(); err != nil {
			return err
		}
	}
	return nil
}

// ShellTouch records sockets attaching (+1), detaching (-1) or staying (0)
// on a terminal generation. It returns the attached count, ErrStaleShell,
// ErrShellGone, or (staying only) ErrShellExited.
func (s *Store) ShellTouch(ctx context.Context, key string, gen int64, delta int) (int, error) {
	n, _, err := s.shellTouch(ctx, key, gen, delta)
	return n, err
}

// ShellRefresh records that sockets still watch a terminal generation, as
// ShellTouch with 0 does, and returns the number of the terminal's last
// claim (ShellTaken; 0 for none).
func (s *Store) ShellRefresh(ctx context.Context, key string, gen int64) (int64, error) {
	_, claims, err := s.shellTouch(ctx, key, gen, 0)
	return claims, err
}

// shellTouch runs shell_touch.lua: the attached count and the last claim.
func (s *Store) shellTouch(ctx context.Context, key string, gen int64, delta int) (int, int64, error) {
	res, err := s.sc.shellTouch.Run(ctx, s.rdb, []string{s.k.shell(key)}, gen, delta).Result()
	if err != nil {
		return 0, 0, fmt.Errorf("store: touch shell %s: %w", key, err)
	}
	if code, ok := res.(int64); ok {
		switch code {
		case -2:
			return 0, 0, ErrShellGone
		case -3:
			return 0, 0, ErrShellExited
		}
		return 0, 0, ErrStaleShell
	}
	pair, ok := res.([]any)
	if !ok || len(pair) != 2 {
		return 0, 0, fmt.Errorf("store: touch shell %s: unexpected reply %v", key, res)
	}
	n, _ := pair[0].(int64)
	claims, _ := pair[1].(int64)
	return int(n), claims, nil
}

// ShellIdle returns how many milliseconds a terminal generation has gone
// unwatched, or ErrStaleShell.
func (s *Store) ShellIdle(ctx context.Context, key string, gen int64) (int64, error) {
	n, err := s.sc.shellIdle.Run(ctx, s.rdb, []string{s.k.shell(key)}, gen).Int64()
	if err != nil {
		return 0, fmt.Errorf("store: check shell %s: %w", key, err)
	}
	if n < 0 {
		return 0, ErrStaleShell
	}
	return n, nil
}

// ShellChunk is one stored output chunk.
type ShellChunk struct {
	Seq  int64
	Data string
}

// ShellOutput returns up to limit stored chunks with seq > after, in order.
// Trimmed chunks are absent: compare the first seq with after+1.
func (s *Store) ShellOutput(ctx context.Context, key string, after int64, limit int) ([]ShellChunk, error) {
	if after < 0 {
		after = 0
	}
	msgs, err := s.rdb.XRangeN(ctx, s.k.shellOut(key), strconv.FormatInt(after+1, 10)+"-0", "+", int64(limit)).Result()
	if err != nil {
		return nil, fmt.Errorf("store: read output of shell %s: %w", key, err)
	}
	out := make([]ShellChunk, 0, len(msgs))
	for _, m := range msgs {
		data, _ := m.Values["data"].(string)
		out = append(out, ShellChunk{Seq: entrySeq(m), Data: data})
	}
	return out, nil
}

// ShellOutputLen is the number of chunks a terminal's stream holds.
func (s *Store) ShellOutputLen(ctx context.Context, key string) (int64, error) {
	n, err := s.rdb.XLen(ctx, s.k.shellOut(key)).Result()
	if err != nil {
		return 0, fmt.Errorf("store: count output of shell %s: %w", key, err)
	}
	return n, nil
}

// Scope names the Redis database and key prefix this store works in,
// without credentials: processes that share a scope share workers, so a
// worker may clean up after another worker of its scope only.
func (s *Store) Scope() string {
	host, db := s.cfg.URL, ""
	if opts, err := redis.ParseURL(s.cfg.URL); err == nil {
		host, db = opts.Addr, strconv.Itoa(opts.DB)
	}
	if s.cluster != nil {
		// The seed nodes named: processes given other seeds of the same
		// cluster get another scope, so they leave each other's terminals
		// alone rather than take another cluster's for their own.
		if u, err := url.Parse(s.cfg.URL); err == nil {
			u.Path = ""
			if opts, err := redis.ParseClusterURL(u.String()); err == nil {
				addrs := slices.Sorted(slices.Values(opts.Addrs))
				host, db = strings.Join(addrs, ","), "cluster"
			}
		}
	}
	sum := sha256.Sum256([]byte(host + "/" + db + "/" + s.cfg.Prefix))
	return hex.EncodeToString(sum[:8])
}

// ShellLive is a message published on a terminal's channel.
type ShellLive struct {
	// Kind is 'o' (output chunk), 'e' (exit), 'u' (auth URL), 's' (a
	// typed signal key handled) or 't' (taken by a socket).
	Kind byte
	// Gen is the terminal generation the message belongs to.
	Gen int64
	// Seq is the chunk's seq (o), the last seq before the exit (e), the
	// last seq stored before the signal key was written (s), or the
	// claim's number (t).
	Seq  int64
	Data string // the chunk (o) or the URL (u)
	// ExitCode, Signal and Reason describe an exit.
	ExitCode int
	Signal   string
	Reason   string
	AutoOpen bool // u
	// Flushed (s) is set when the key raised a signal that threw away the
	// terminal's queued output: output through Seq was queued before it.
	Flushed bool
}

// ParseShellLive decodes a terminal channel message:
// "o GEN SEQ DATA", "e GEN SEQ CODE SIGNAL|- REASON", "u GEN 0|1 URL",
// "s GEN SEQ 0|1" or "t GEN N".
func ParseShellLive(payload string) (ShellLive, bool) {
	if len(payload) < 2 || payload[1] != ' ' {
		return ShellLive{}, false
	}
	num, rest, ok := strings.Cut(payload[2:], " ")
	gen, err := strconv.ParseInt(num, 10, 64)
	if !ok || err != nil {
		return ShellLive{}, false
	}
	switch payload[0] {
	case 'o':
		num, data, ok := strings.Cut(rest, " ")
		seq, err := strconv.ParseInt(num, 10, 64)
		if !ok || err != nil {
			return ShellLive{}, false
		}
		return ShellLive{Kind: 'o', Gen: gen, Seq: seq, Data: data}, true
	case 'e':
		f := strings.Fields(rest)
		if len(f) != 4 {
			return ShellLive{}, false
		}
		seq, err1 := strconv.ParseInt(f[0], 10, 64)
		code, err2 := strconv.Atoi(f[1])
		if err1 != nil || err2 != nil {
			return ShellLive{}, false
		}
		sig := f[2]
		if sig == "-" {
			sig = ""
		}
		return ShellLive{Kind: 'e', Gen: gen, Seq: seq, ExitCode: code, Signal: sig, Reason: f[3]}, true
	case 'u':
		auto, url, ok := strings.Cut(rest, " ")
		if !ok {
			return ShellLive{}, false
		}
		return ShellLive{Kind: 'u', Gen: gen, Data: url, AutoOpen: auto == "1"}, true
	case 's':
		num, flag, ok := strings.Cut(rest, " ")
		seq, err := strconv.ParseInt(num, 10, 64)
		if !ok || err != nil || (flag != "0" && flag != "1") {
			return ShellLive{}, false
		}
		return ShellLive{Kind: 's', Gen: gen, Seq: seq, Flushed: flag == "1"}, true
	case 't':
		n, err := strconv.ParseInt(rest, 10, 64)
		if err != nil || n <= 0 {
			return ShellLive{}, false
		}
		return ShellLive{Kind: 't', Gen: gen, Seq: n}, true
	}
	return ShellLive{}, false
}

// ShellTaken records that a socket took a terminal (an init without
// shellId) and tells its watchers on every gateway: the sockets that took
// it before, whose claims have lower numbers, no longer get its output. It
// is how a client that names no shellId (Claude Code UI's frontend) sees
// its terminal, as the reference server serves it: the socket of the last
// init of a terminal gets its output, the ones before it nothing more. It
// returns the claim's number, or ErrShellGone.
func (s *Store) ShellTaken(ctx context.Context, key string, gen int64) (int64, error) {
	n, err := s.sc.shellClaim.Run(ctx, s.rdb, []string{s.k.shell(key)}, gen, s.k.shellLive(key)).Int64()
	switch {
	case err != nil:
		return 0, fmt.Errorf("store: claim shell %s: %w", key, err)
	case n == 0:
		return 0, ErrShellGone
	}
	return n, nil
}

// ShellSignal tells a terminal's watchers that a typed signal key (see
// app.HasSignalKey) was written to it after the output through seq was
// stored, and whether the key threw away the terminal's queued output.
func (s *Store) ShellSignal(ctx context.Context, key string, gen, seq int64, flushed bool) error {
	flag := " 0"
	if flushed {
		flag = " 1"
	}
	msg := "s " + strconv.FormatInt(gen, 10) + " " + strconv.FormatInt(seq, 10) + flag
	if err := s.publish(ctx, s.k.shellLive(key), msg); err != nil {
		return fmt.Errorf("store: announce signal key of shell %s: %w", key, err)
	}
	return nil
}

// ShellAuthURL tells a terminal's watchers about a login URL in its output.
func (s *Store) ShellAuthURL(ctx context.Context, key string, gen int64, url string, autoOpen bool) error {
	flag := "0"
	if autoOpen {
		flag = "1"
	}
	msg := "u " + strconv.FormatInt(gen, 10) + " " + flag + " " + url
	if err := s.publish(ctx, s.k.shellLive(key), msg); err != nil {
		return fmt.Errorf("store: announce URL of shell %s: %w", key, err)
	}
	return nil
}
