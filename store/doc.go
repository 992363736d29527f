// Package store is everything agentgate keeps in Redis: the key schema of
// PROTOCOL §7, the Lua scripts that run the session lifecycle atomically,
// event streams and their replay, pub/sub for live delivery, the jobs stream
// and worker inboxes, heartbeats and leases, and the embedded miniredis used
// when no Redis is configured. It runs on a single Redis and on a Redis
// Cluster (every script touches one hash slot; see the README's "Redis
// Cluster"). It is the only package that imports go-redis and miniredis. A
// *Store is safe for concurrent use.
package store
