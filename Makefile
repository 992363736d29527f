# make run   - the gateway on the embedded default (agentgate serve)
# make test  - installs what the tests need, then runs every test
# make bench - the benchmarks reported in the README
# make container-test - the images and deploy/compose with podman (root)

GO ?= go

.PHONY: run test test-deps lint bench build container-test

build:
	$(GO) build -o bin/agentgate ./cmd/agentgate

run:
	$(GO) run ./cmd/agentgate serve

test-deps:
	./scripts/test-deps.sh

test: test-deps
	$(GO) vet ./...
	$(GO) test -race -count=1 -timeout 30m ./...
	# Allocation counts, which the race detector's sync.Pool does not keep.
	$(GO) test -count=1 -run Allocates ./handlers/
	# The end-to-end suite again, every process on a six-node Redis Cluster.
	AGENTGATE_E2E_REDIS=cluster $(GO) test -race -count=1 -timeout 30m ./e2e/

lint:
	gofmt -l . | (! grep .)
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

bench: test-deps
	$(GO) test -run XXX -bench . -count 2 -timeout 30m ./bench/

container-test:
	./scripts/containers/test.sh
