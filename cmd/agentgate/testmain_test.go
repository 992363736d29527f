package main

import (
	"os"
	"testing"

	"github.com/agentgate/agentgate/store/storetest"
)

// TestMain stops the Redis Cluster the tests share once they are done.
func TestMain(m *testing.M) { os.Exit(storetest.RunMain(m)) }
