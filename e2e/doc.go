// Package e2e holds the end-to-end tests of agentgate: real agentgate
// processes (serve, gateway, worker) built from ./cmd/agentgate, a real
// redis-server, the real Claude Code CLI pointed at the scripted Anthropic
// mock, and real WebSocket clients; browser_test.go also drives the bundled
// page in headless Chromium (the Node tests in browser/). The tests live in
// the _test.go files; run them with `go test ./e2e/`.
package e2e
