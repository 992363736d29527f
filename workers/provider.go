package workers

import (
	"encoding/json"

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
	// fields to set with them (providerSessionId, statusText). line is the
	// run's read buffer, overwritten by the next line: what Line keeps, in
	// its result or its own state, it copies.
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
	// Ask is a tool the provider asks permission to use; the run decides or
	// asks the user, and answers through the Conversational provider.
	Ask *ToolAsk
	// Withdrawn is the id of a request the provider stopped waiting for.
	Withdrawn string
	// Reply is a line to write to the provider's stdin at once (an answer
	// to a control request the run need not decide).
	Reply []byte
	// EndInput says the provider has finished its turn: its stdin is
	// closed, which lets it exit.
	EndInput bool
	// Finished says the provider printed its result: a CLI still running
	// lingerGrace later is stopped (cursor-agent sometimes never exits
	// after its result, `claude -p` waits for the tasks it ran in the
	// background, and their runs would stay running for good). A CLI so
	// stopped counts as exited 0: the run's outcome is its result's.
	Finished bool
}

// providerSession is what a parser sets for the provider's own session id
// printed by its CLI: nothing for an id a client could not send either, as
// the id reaches the next run's command line.
func providerSession(id string) map[string]string {
	if !app.ValidSessionID(id) {
		return nil
	}
	return map[string]string{providerSessionField: id}
}

// What a parser holds across lines is bounded: a CLI's output is the
// user's (a process of theirs can write into it, and their own model
// endpoint can make it say anything), and the worker runs everyone's runs.
const (
	// maxHeldText is the text of message or thinking deltas held before
	// it goes out as an event of its own (a stream of deltas with no line
	// of another kind between them once held half a gigabyte).
	maxHeldText = 1 << 20
	// maxToolID and maxToolsStarted bound the tool calls a run remembers
	// as started (toolsStarted).
	maxToolID       = 256
	maxToolsStarted = 4096
)

// toolsStarted holds the tool calls of a run whose tool_use was sent, so
// that their completion does not send it again. Past its bounds a call is
// not remembered, and its completion sends its tool_use once more.
type toolsStarted map[string]bool

// add remembers id, within the bounds.
func (t toolsStarted) add(id string) {
	if len(id) <= maxToolID && len(t) < maxToolsStarted {
		t[id] = true
	}
}

// ToolAsk is a provider's request to use a tool.
type ToolAsk struct {
	// ID is the provider's own request id, echoed in the answer.
	ID    string
	Tool  string
	Input json.RawMessage
}

// Conversational is a Provider whose stdin stays open for the whole run:
// it asks there whether a tool may run, and can be interrupted there.
type Conversational interface {
	// Answer encodes the answer to ask as one stdin line: allow with the
	// (possibly edited) input, or deny with a message for the model.
	Answer(ask ToolAsk, allow bool, input json.RawMessage, message string) []byte
	// Interrupt encodes a request to stop the current turn.
	Interrupt() []byte
}
