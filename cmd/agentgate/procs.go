package main

import (
	"os"
	"runtime"
)

// smallHostCPUs is the most CPUs on which agentgate runs its goroutines on
// one P by default. On such a host a gateway or a worker shares its cores
// with Redis, the CLIs or terminals, a proxy and the other agentgate
// process, and a second P costs more than it gives: each goroutine made
// ready (a pub/sub message, a PTY read, a socket's frame) wakes a second
// thread, which spins looking for work on a core another process needed.
// Measured on a 2-vCPU machine (bench/RESULTS.md, 2026-12-06): a terminal's
// CPU per MB a sixth to a third less, an event's CPU 7–10% less, the most
// events a second the same or more. A larger host keeps Go's default.
const smallHostCPUs = 2

// procsFor returns the GOMAXPROCS a process sets for itself, or 0 to keep
// the runtime's: set tells whether the operator set GOMAXPROCS, and
// runtimeDefault is what the runtime chose (the CPUs, or the container's
// CPU limit).
func procsFor(set bool, runtimeDefault int) int {
	if set || runtimeDefault <= 1 || runtimeDefault > smallHostCPUs {
		return 0
	}
	return 1
}

// useSmallHostProcs applies procsFor to this process. It is called by main
// only, so that tests running commands in their own process keep theirs.
func useSmallHostProcs() {
	if n := procsFor(os.Getenv("GOMAXPROCS") != "", runtime.GOMAXPROCS(0)); n > 0 {
		runtime.GOMAXPROCS(n)
	}
}
