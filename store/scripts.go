package store

import (
	_ "embed"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
)

// The Lua scripts, one file each under lua/. Run scripts share prelude.lua
// (and the terminal scripts that trim output share shell_prelude.lua),
// prepended here, because Redis scripts cannot include one another.
var (
	//go:embed lua/prelude.lua
	preludeLua string
	//go:embed lua/run_accept.lua
	runAcceptLua string
	//go:embed lua/run_append.lua
	runAppendLua string
	//go:embed lua/run_complete.lua
	runCompleteLua string
	//go:embed lua/permission_ask.lua
	permissionAskLua string
	//go:embed lua/permission_settle.lua
	permissionSettleLua string
	//go:embed lua/run_claim.lua
	runClaimLua string
	//go:embed lua/lease_acquire.lua
	leaseAcquireLua string
	//go:embed lua/lease_release.lua
	leaseReleaseLua string
	//go:embed lua/index_reserve.lua
	indexReserveLua string
	//go:embed lua/index_forget.lua
	indexForgetLua string
	//go:embed lua/index_touch.lua
	indexTouchLua string
	//go:embed lua/index_unlink.lua
	indexUnlinkLua string
	//go:embed lua/index_swap_back.lua
	indexSwapBackLua string
	//go:embed lua/session_forget.lua
	sessionForgetLua string
	//go:embed lua/events_within.lua
	eventsWithinLua string
	//go:embed lua/worker_beat.lua
	workerBeatLua string
	//go:embed lua/worker_register.lua
	workerRegisterLua string
	//go:embed lua/inbox_send.lua
	inboxSendLua string
	//go:embed lua/worker_forget.lua
	workerForgetLua string
	//go:embed lua/jobs_consumer_drop.lua
	jobsConsumerDropLua string
	//go:embed lua/history_read.lua
	historyReadLua string
)

// scriptSet holds every script of a store. Each script touches the keys of
// one hash slot only, so that it runs on a Redis Cluster too.
type scriptSet struct {
	runAccept, runAppend, runComplete, runClaim        *redis.Script
	permissionAsk, permissionSettle                    *redis.Script
	leaseAcquire, leaseRelease                         *redis.Script
	indexReserve, indexForget, indexTouch, indexUnlink *redis.Script
	indexSwapBack                                      *redis.Script
	shellOpen, shellAppend, shellExit, shellTouch      *redis.Script
	shellIdle, shellSet, shellForget, shellClaim       *redis.Script
	accountUID                                         *redis.Script
	sessionForget, eventsWithin                        *redis.Script
	workerBeat, workerRegister, inboxSend              *redis.Script
	workerForget, jobsConsumerDrop, historyRead        *redis.Script
	publish                                            string // PUBLISH or SPUBLISH
}

// newScriptSet wraps the scripts. sharded makes them publish with SPUBLISH
// (Redis 7 sharded pub/sub, for a cluster: the message stays on the shard
// that owns the channel's slot) instead of PUBLISH (which a cluster copies
// to every node, and the only one miniredis has).
func newScriptSet(sharded bool) *scriptSet {
	pub := "PUBLISH"
	if sharded {
		pub = "SPUBLISH"
	}
	mk := func(src string) *redis.Script {
		if sharded {
			src = strings.ReplaceAll(src, "redis.call('PUBLISH'", "redis.call('SPUBLISH'")
		}
		return redis.NewScript(src)
	}
	return &scriptSet{
		runAccept:        mk(preludeLua + runAcceptLua),
		runAppend:        mk(preludeLua + runAppendLua),
		runComplete:      mk(preludeLua + runCompleteLua),
		runClaim:         mk(runClaimLua),
		permissionAsk:    mk(preludeLua + permissionAskLua),
		permissionSettle: mk(preludeLua + permissionSettleLua),
		leaseAcquire:     mk(leaseAcquireLua),
		leaseRelease:     mk(leaseReleaseLua),
		indexReserve:     mk(indexReserveLua),
		indexForget:      mk(indexForgetLua),
		indexTouch:       mk(indexTouchLua),
		indexUnlink:      mk(indexUnlinkLua),
		indexSwapBack:    mk(indexSwapBackLua),
		shellOpen:        mk(shellOpenLua),
		shellAppend:      mk(shellPreludeLua + shellAppendLua),
		shellExit:        mk(shellPreludeLua + shellExitLua),
		shellTouch:       mk(shellTouchLua),
		shellIdle:        mk(shellIdleLua),
		shellSet:         mk(shellSetLua),
		shellForget:      mk(shellForgetLua),
		shellClaim:       mk(shellClaimLua),
		sessionForget:    mk(sessionForgetLua),
		eventsWithin:     mk(eventsWithinLua),
		accountUID:       mk(accountUIDLua),
		workerBeat:       mk(workerBeatLua),
		workerRegister:   mk(workerRegisterLua),
		inboxSend:        mk(inboxSendLua),
		workerForget:     mk(workerForgetLua),
		jobsConsumerDrop: mk(jobsConsumerDropLua),
		historyRead:      mk(historyReadLua),
		publish:          pub,
	}
}

// The two script sets: plain pub/sub (a single Redis, miniredis) and
// sharded pub/sub (a Redis Cluster). Each is made when a store first needs
// it, not at start-up: a process uses one, and hashing both was a tenth of
// a gateway's package initialization.
var (
	plainScripts   = sync.OnceValue(func() *scriptSet { return newScriptSet(false) })
	shardedScripts = sync.OnceValue(func() *scriptSet { return newScriptSet(true) })
)
