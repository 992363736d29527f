// Package workers runs the provider CLIs: the job loop that takes accepted
// runs from the jobs stream, one adapter per provider that builds the
// command line and maps its output lines to session events, the worker's
// inbox (aborts), its heartbeat, and the reaper that completes the runs of
// workers that died. Everything it tells a gateway goes through the store.
package workers
