// Package link is the direct path from gateways to a worker for the
// controls a user waits on: terminal keystrokes, resizes and output acks.
// Through the worker's inbox each of them crosses Redis twice (a gateway's
// XADD, then the worker's XREAD waking); over a link it is one TCP write
// the worker reads at once. The inbox stays the path of everything else,
// and of these controls too whenever a worker has no link or its link
// fails.
//
// The wire: a gateway connects to the address a worker advertises in its
// heartbeat, proves in a hello that it holds the worker's token (also in
// the heartbeat, so only a process that can read Redis can connect) and
// checks that the worker holds it too (handshake.go), waits for "ok", then
// sends frames: a 4-byte big-endian length and a JSON store.Control,
// sealed with AES-256-GCM under a key of that connection (wire.go). The
// worker never sends after "ok"; a gateway's read of the connection only
// notices its end. Workers still take the hellos of older gateways, whose
// frames are in clear.
package link
