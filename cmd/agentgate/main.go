// Command agentgate runs the agentgate gateway and workers, and administers
// them. See `agentgate help`.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

const usage = `agentgate: a gateway between web chat clients and AI coding-agent CLIs.

Usage:
  agentgate serve                 gateway and worker in one process; embedded store when --redis is empty
  agentgate gateway               gateway only (needs --redis)
  agentgate worker                worker only (needs --redis)
  agentgate token --user NAME [--admin] [--ttl 24h]
                                  print a signed token (needs only --jwt-secret)
  agentgate sessions ls [--running] | show ID | abort ID
                                  admin view of the sessions in Redis
  agentgate plugins add NAME HOST:PORT | rm NAME | ls
                                  the registry of /plugin-ws/NAME relays
  agentgate migrate               apply key-schema migrations
  agentgate broadcast --user NAME < FRAME.json
                                  publish a projects_updated, loading_progress or taskmaster-… frame to
                                  one user's chat sockets on every gateway
  agentgate healthcheck [--url URL | --metrics]
                                  exit 0 when the gateway's /readyz answers 200, or with --metrics the
                                  /healthz of --metrics-listen (a worker's; for container probes)
  agentgate help [COMMAND]        show the flags of a command

Every flag has an environment variable (AGENTGATE_…); run 'agentgate help serve'.
`

func main() {
	useSmallHostProcs()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	// A second signal ends the process at once (the default action): an
	// operator (or systemd) who asks again does not wait for the drain.
	go func() { <-ctx.Done(); stop() }()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "agentgate:", err)
		}
		os.Exit(2)
	}
}

// run dispatches a command line. Tests call it directly.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return flag.ErrHelp
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "serve", "gateway", "worker":
		return runServer(ctx, cmd, rest, stdout, stderr)
	case "token":
		return runToken(rest, stdout, stderr)
	case "sessions":
		return runSessions(ctx, rest, stdout, stderr)
	case "plugins":
		return runPlugins(ctx, rest, stdout, stderr)
	case "migrate":
		return runMigrate(ctx, rest, stdout, stderr)
	case "broadcast":
		return runBroadcast(ctx, rest, os.Stdin, stderr)
	case "healthcheck":
		return runHealthcheck(ctx, rest, stdout, stderr)
	case "help", "-h", "--help":
		if len(rest) > 0 {
			// Help asked for is an answer, not a usage error (exit 0).
			if err := run(ctx, []string{rest[0], "-h"}, stdout, stderr); !errors.Is(err, flag.ErrHelp) {
				return err
			}
			return nil
		}
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", cmd)
}

// parseInterspersed parses flags wherever they stand among the positional
// arguments (`sessions show ID --redis URL`), which flag.Parse alone stops
// at, and returns the positional arguments.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var positional []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		rest := fs.Args()
		if len(rest) == 0 {
			return positional, nil
		}
		positional = append(positional, rest[0])
		args = rest[1:]
	}
}

// newFlags returns a flag set bound to the configuration table.
func newFlags(name string, stderr io.Writer, c *config) (*flag.FlagSet, func() error) {
	fs := flag.NewFlagSet("agentgate "+name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	return fs, bindOptions(fs, c)
}
