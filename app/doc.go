// Package app holds agentgate's domain: sessions, runs, events, client
// messages and the rules that tie them together. It is pure Go with no I/O so
// that the gateway (handlers), the workers and the store all share one
// definition of what a session event or a run outcome is.
package app
