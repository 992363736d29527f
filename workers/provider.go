package workers

import (
	"github.com/agentgate/agentgate/app"
)

// Provider is one agent CLI: the command line it is run with and the mapping
// of its output lines to session events.
type Provider interface {
	// Name is the provider this adapter runs.
	Name() app.Provider
	// Command returns the arguments (after the binary) for a job and what
	// to write to the process' stdin before closing it (nil for nothing).
	// env is the environment the process will have.
	Command(job app.Job, env []string) (args []string, stdin []byte)
	// NewParser returns the parser of one run's output.
	NewParser(job app.Job) Parser
	// InstallHint tells a user how to install the CLI when it is missing.
	InstallHint() string
}

// Parser maps the stdout lines of one run to events. It is used from one
// goroutine.
type Parser interface {
	// Line maps one line (without its newline) to events and session hash
	// fields to set with them (providerSessionId, statusText).
	Line(line []byte) Output
	// End is called once the process has exited with exitCode. It returns
	// the final events before complete (error rows) and the exit code the
	// run reports, which may differ when the output said the run failed.
	End(exitCode int) ([]app.Event, int)
}

// Output is what one line produced.
type Output struct {
	Events []app.Event
	Set    map[string]string
}
