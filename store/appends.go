package store

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/redis/go-redis/v9"

	"github.com/agentgate/agentgate/app"
)

// AppendReq is one run's append, for AppendMany.
type AppendReq struct {
	Run    RunRef
	Batch  int64 // see AppendBatch; 0 for none
	Events []app.Event
	Set    map[string]string
}

// AppendResult is the answer to one AppendReq: the seq of its last event,
// or the error AppendBatch would have returned.
type AppendResult struct {
	Seq int64
	Err error
}

// AppendMany sends the appends of many runs in one pipeline: one write and
// one read for all of them instead of a round trip each, which is what an
// event costs a worker whose runs each print a line at a time. Each append
// is its own atomic step, as AppendBatch; on a cluster go-redis splits the
// pipeline by node. The results are in the order of reqs.
func (s *Store) AppendMany(ctx context.Context, reqs []AppendReq) []AppendResult {
	out := make([]AppendResult, len(reqs))
	cmds := make([]*redis.Cmd, len(reqs))
	keys := make([][]string, len(reqs))
	args := make([][]any, len(reqs))
	pipe := s.rdb.Pipeline()
	for i, r := range reqs {
		var err error
		if keys[i], args[i], err = s.prepareAppend(ctx, r); err != nil {
			out[i].Err = err
			continue
		}
		cmds[i] = s.sc.runAppend.EvalSha(ctx, pipe, keys[i], args[i]...)
	}
	if pipe.Len() > 0 {
		_, _ = pipe.Exec(ctx) // each command's error is read below
	}
	for i, cmd := range cmds {
		if cmd == nil {
			continue
		}
		seq, err := cmd.Int64()
		if err != nil && strings.HasPrefix(err.Error(), "NOSCRIPT") {
			// Redis restarted (or a failover reached a node) without the
			// script: loaded by Run, which sends it whole when needed.
			seq, err = s.sc.runAppend.Run(ctx, s.rdb, keys[i], args[i]...).Int64()
		}
		if err != nil {
			out[i].Err = fmt.Errorf("store: append %s: %w", reqs[i].Run.SessionID, scriptError(err))
			continue
		}
		s.floors.note(reqs[i].Run.SessionID, seq)
		out[i].Seq = seq
	}
	return out
}

// prepareAppend builds the keys and arguments of run_append.lua, and writes
// the provider session index ahead of the script when the append names
// the provider's own id.
func (s *Store) prepareAppend(ctx context.Context, r AppendReq) ([]string, []any, error) {
	run := r.Run
	args := make([]any, 0, 7+2*len(r.Events)+2*len(r.Set))
	args = append(args, run.RunID, s.limits, s.k.live(run.SessionID), len(r.Events), s.floors.get(run.SessionID), r.Batch, run.Worker)
	for _, ev := range r.Events {
		kind, body, err := s.outputBody(run.SessionID, run.Provider, ev)
		if err != nil {
			return nil, nil, fmt.Errorf("store: append %s: %w", run.SessionID, err)
		}
		args = append(args, string(kind), body)
	}
	for k, v := range r.Set {
		args = append(args, k, v)
	}
	if psid := r.Set["providerSessionId"]; psid != "" {
		ids, err := s.indexProviderID(ctx, run, psid)
		if err != nil {
			return nil, nil, fmt.Errorf("store: append %s: index provider session: %w", run.SessionID, err)
		}
		args = append(args, "providerIds", ids)
	}
	return []string{s.k.session(run.SessionID), s.k.events(run.SessionID)}, args, nil
}

// providerIDsKept is how many provider ids a session stays indexed under:
// a CLI may print a new one each run, and each is an entry of the
// provider's index until the session is forgotten.
const providerIDsKept = 8

// indexProviderID writes psid into the provider's index ahead of the
// append (the id belongs to this session from the moment its CLI printed
// it, even if the run turns out stale) and returns the session's new
// providerIds field: the ids it is indexed under, oldest first, at most
// providerIDsKept (the oldest past them leave the index). Forgetting a
// session removes them all (keepSessions).
func (s *Store) indexProviderID(ctx context.Context, run RunRef, psid string) (string, error) {
	index := s.k.providerSessions(run.Provider)
	if err := s.rdb.HSetNX(ctx, index, psid, run.SessionID).Err(); err != nil {
		return "", err
	}
	cur, err := s.rdb.HGet(ctx, s.k.session(run.SessionID), "providerIds").Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return "", err
	}
	ids := slices.DeleteFunc(strings.Fields(cur), func(id string) bool { return id == psid })
	ids = append(ids, psid)
	if drop := len(ids) - providerIDsKept; drop > 0 {
		args := []any{run.SessionID}
		for _, id := range ids[:drop] {
			args = append(args, id)
		}
		if err := s.sc.indexUnlink.Run(ctx, s.rdb, []string{index}, args...).Err(); err != nil {
			return "", err
		}
		ids = ids[drop:]
	}
	return strings.Join(ids, " "), nil
}
