package store

import (
	_ "embed"

	"github.com/redis/go-redis/v9"
)

// The Lua scripts, one file each under lua/. Run scripts share prelude.lua,
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
)

var (
	runAcceptScript    = redis.NewScript(preludeLua + runAcceptLua)
	runAppendScript    = redis.NewScript(preludeLua + runAppendLua)
	runCompleteScript  = redis.NewScript(preludeLua + runCompleteLua)
	runClaimScript     = redis.NewScript(runClaimLua)
	permissionAsk      = redis.NewScript(preludeLua + permissionAskLua)
	permissionSettle   = redis.NewScript(preludeLua + permissionSettleLua)
	leaseAcquireScript = redis.NewScript(leaseAcquireLua)
	leaseReleaseScript = redis.NewScript(leaseReleaseLua)
)
