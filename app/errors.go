package app

import "errors"

// Domain errors shared by the store, the gateway and the workers.
var (
	// ErrNotFound means the session does not exist or the caller may not see it.
	ErrNotFound = errors.New("session not found")
	// ErrSessionBusy means the session already has a run in progress.
	ErrSessionBusy = errors.New("session already active")
	// ErrStaleRun means a write named a run that is no longer the session's
	// current running run; the write changed nothing.
	ErrStaleRun = errors.New("run is no longer current")
	// ErrNoActiveRun means an abort found no run in progress.
	ErrNoActiveRun = errors.New("no active run")
	// ErrNoWorker means no worker is alive to take a run.
	ErrNoWorker = errors.New("no worker available")
	// ErrInvalidPath means a project path does not exist, is not a directory
	// or lies outside every workspace root.
	ErrInvalidPath = errors.New("invalid project path")
)

// WebSocket close codes the gateway uses (RFC 6455 range 4000-4999 is ours).
const (
	CloseMessageTooBig = 1009 // a frame over the size limit
	CloseGoingAway     = 1001 // the gateway is shutting down
	CloseStoreRestart  = 1012 // Redis restarted without the socket's last events; resume from lastSeq
	CloseSlowConsumer  = 4008 // the outgoing queue is full; resume from lastSeq
	CloseTokenExpired  = 4401 // the token the socket opened with expired; open again with a new one
)
