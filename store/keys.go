package store

import (
	"strings"

	"github.com/agentgate/agentgate/app"
)

// keys builds every Redis key and channel name from the configured prefix.
// Session and user parts sit in braces (hash tags) so that one session's
// keys share a Redis Cluster slot; the braces are literal in the key names.
type keys struct {
	prefix string
}

// session is the session hash `ag:session:{ID}`.
func (k keys) session(id string) string { return k.prefix + ":session:{" + id + "}" }

// events is the session's event stream `ag:session:{ID}:events`.
func (k keys) events(id string) string { return k.session(id) + ":events" }

// perms is the session's pending permissions hash `ag:session:{ID}:perms`.
func (k keys) perms(id string) string { return k.session(id) + ":perms" }

// historyRead is the note of how far a user's client read the session's
// history `ag:session:{ID}:read:USER` (HistoryRead).
func (k keys) historyRead(id, user string) string { return k.session(id) + ":read:" + user }

// job is the job of the session's current run `ag:session:{ID}:job`, kept
// until the run ends so that a job the jobs stream lost can be queued again.
func (k keys) job(id string) string { return k.session(id) + ":job" }

// writable is `ag:writable`, a key never set: CheckWritable deletes it.
func (k keys) writable() string { return k.prefix + ":writable" }

// live is the pub/sub channel of a session's events.
func (k keys) live(id string) string { return k.session(id) + ":live" }

// sessionOfLive returns the session id of a live channel name.
func (k keys) sessionOfLive(channel string) (string, bool) {
	rest, ok := strings.CutPrefix(channel, k.prefix+":session:{")
	if !ok {
		return "", false
	}
	return strings.CutSuffix(rest, "}:live")
}

// running is the sorted set of running session ids by startedAt.
func (k keys) running() string { return k.prefix + ":sessions:running" }

// shellsOpen is the sorted set of open terminal keys by the time they were
// opened, so that the reaper finds the terminals of a dead worker that no
// socket watches (may lag and hold stale entries, as running does).
func (k keys) shellsOpen() string { return k.prefix + ":shells:open" }

// userSessions is a user's sorted set of session ids by last activity.
func (k keys) userSessions(user string) string { return k.prefix + ":user:{" + user + "}:sessions" }

// userRunning is a user's sorted set of running session ids by startedAt,
// which bounds how many runs a user has at once.
func (k keys) userRunning(user string) string { return k.prefix + ":user:{" + user + "}:running" }

// userShells is a user's sorted set of open terminal keys by opening time,
// which bounds how many terminals a user has at once.
func (k keys) userShells(user string) string { return k.prefix + ":user:{" + user + "}:shells" }

// userEnded is a user's sorted set of ended terminal keys by the time they
// ended, so that only the most recent keep their output (store.keepEnded).
func (k keys) userEnded(user string) string { return k.prefix + ":user:{" + user + "}:ended" }

// providerSessions maps a provider's own session ids to agentgate session
// ids, so a resume by provider id finds its session and its owner.
func (k keys) providerSessions(p app.Provider) string {
	return k.prefix + ":provider:{" + string(p) + "}:sessions"
}

// jobs is the stream of runs waiting for a worker (group "workers").
func (k keys) jobs() string { return k.prefix + ":jobs" }

// worker is a live worker's heartbeat hash, with a TTL.
func (k keys) worker(id string) string { return k.prefix + ":worker:" + id }

// workers is the registry of worker ids by last heartbeat, so live workers
// can be listed without SCAN.
func (k keys) workers() string { return k.prefix + ":workers" }

// inbox is a worker's control stream (aborts, permission answers, shell input).
func (k keys) inbox(id string) string { return k.worker(id) + ":inbox" }

// lease is a named lease held by one process at a time.
func (k keys) lease(name string) string { return k.prefix + ":lease:" + name }

// schema holds the key-schema version.
func (k keys) schema() string { return k.prefix + ":schema" }

// permissions indexes every pending permission request: request id ->
// session id, so an answer can be routed from its request id alone.
func (k keys) permissions() string { return k.prefix + ":permissions" }

// plugin is a plugin's address `ag:plugin:NAME` (PROTOCOL §5).
func (k keys) plugin(name string) string { return k.prefix + ":plugin:" + name }

// accounts maps users to the uids of their OS accounts on worker hosts
// `ag:{accounts}` (hash user -> uid), beside its counter `ag:{accounts}:next`.
func (k keys) accounts() string { return k.prefix + ":{accounts}" }

// broadcast is the pub/sub channel of frames for one user's chat sockets
// on every gateway (Store.Broadcast).
func (k keys) broadcast() string { return k.prefix + ":broadcast" }
