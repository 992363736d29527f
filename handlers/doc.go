// Package handlers is the gateway: the Echo routes, authentication, the /ws
// chat sockets and the hub that feeds them from Redis, the REST API and the
// bundled web client. It holds sockets and nothing else; everything that
// crosses to a worker goes through the store.
package handlers
