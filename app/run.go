package app

import (
	"fmt"
	"regexp"
	"strings"
	"sync"
	"unicode"
	"unicode/utf8"
)

// Job is the work a gateway hands to the workers for one accepted run: what
// a worker needs to start the provider without asking anything else.
type Job struct {
	SessionID string   `json:"sessionId"`
	RunID     string   `json:"runId"`
	Owner     string   `json:"owner"`
	Provider  Provider `json:"provider"`
	Command   string   `json:"command"`
	// ProjectPath is the resolved working directory of the run.
	ProjectPath string `json:"projectPath"`
	// ProviderSessionID is the provider's own conversation id to resume; empty
	// for a new conversation.
	ProviderSessionID string `json:"providerSessionId,omitempty"`
	// NewSession is true for the first run of a session the gateway minted.
	NewSession bool `json:"newSession"`
	// ResumeDenied marks a resume of a conversation that belongs to another
	// user: the worker fails the run as if the conversation did not exist.
	ResumeDenied bool `json:"resumeDenied,omitempty"`
	// ResumeUnrecorded marks a resume of a conversation id agentgate has
	// not recorded for anyone: only a worker whose users cannot see each
	// other's conversations (per-user accounts, or a single user) runs it.
	ResumeUnrecorded bool       `json:"resumeUnrecorded,omitempty"`
	Options          RunOptions `json:"options"`
	// ImageFiles are the paths of Options.Images once the worker has
	// written them to its private folder for the run; never sent.
	ImageFiles []string `json:"-"`
}

// RunOptions are the options of a command that reach the provider.
type RunOptions struct {
	Model          string        `json:"model,omitempty"`
	PermissionMode string        `json:"permissionMode,omitempty"`
	Tools          ToolsSettings `json:"toolsSettings"`
	Images         []Image       `json:"images,omitempty"`
}

// ToolsSettings are the client's tool permission settings.
type ToolsSettings struct {
	AllowedTools    []string `json:"allowedTools,omitempty"`
	DisallowedTools []string `json:"disallowedTools,omitempty"`
	SkipPermissions bool     `json:"skipPermissions,omitempty"`
}

// Image is an image attached to a command, as a data URL.
type Image struct {
	Data string `json:"data"`
	Name string `json:"name,omitempty"`
}

// A model, the value of an option that reaches a CLI's argument list,
// starts with a letter or digit, so that none can be read as a flag
// (`--yolo`, `--version`), whichever CLI and argument form gets it.
var (
	// Compiled on first use: its counted repetition makes a large
	// program, which would cost every process's start.
	modelPattern = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:/\[\]@-]{0,99}$`) })
)

// Bounds of toolsSettings: maxTools rules in allowedTools and
// disallowedTools together, each at most maxToolRule bytes, and
// maxToolBytes in all. Gemini gets its list as one argument, which Linux
// caps at 128 KiB (MAX_ARG_STRLEN): maxToolBytes keeps it well under.
const (
	maxTools     = 200
	maxToolRule  = 1024
	maxToolBytes = 64 << 10
)

// Check refuses options that could reach a CLI's command line as a flag
// or smuggle an argument, with an error a client is shown: the gateway
// checks a command's, and the worker its job's again (a job is only as
// trustworthy as whoever could write to Redis).
func (o RunOptions) Check() error {
	if o.Model != "" && !modelPattern().MatchString(o.Model) {
		return WireError("Invalid model name")
	}
	if !ValidPermissionMode(o.PermissionMode) {
		return WireError(fmt.Sprintf("Invalid permissionMode: expected one of %s", strings.Join(PermissionModes, ", ")))
	}
	if len(o.Tools.AllowedTools)+len(o.Tools.DisallowedTools) > maxTools {
		return WireError(fmt.Sprintf("Too many tools in toolsSettings: at most %d", maxTools))
	}
	total := 0
	for _, list := range [][]string{o.Tools.AllowedTools, o.Tools.DisallowedTools} {
		for _, t := range list {
			if err := checkToolRule(t); err != nil {
				return err
			}
			total += len(t)
		}
	}
	if total > maxToolBytes {
		return WireError(fmt.Sprintf("toolsSettings too large: at most %d bytes of tool rules", maxToolBytes))
	}
	return CheckImages(o.Images)
}

// checkToolRule checks one allowedTools or disallowedTools entry. Rules
// are what Claude Code UI's frontend saves for "Allow & remember": a tool
// name or `Tool(argument)`, whose argument is whatever the tool was given
// (`Bash(~/bin/deploy.sh:*)`, `Read(~/.zshrc)`, `Bash($HOME/bin/x:*)`,
// `Bash(./скрипт.sh:*)`). A rule reaches a CLI only as the value of
// `--allowedTools=RULE` (or of Gemini's `--allowed-tools=`, joined with
// ','), never through a shell, so any text is safe there but for what an
// argument cannot hold or a parser could misread: NUL and other control
// characters, invalid UTF-8, and a first character a CLI could take for a
// flag's dash or drop as a blank. A ',' outside parentheses is refused
// too: the CLIs split their tool lists there (Claude also on blanks
// outside parentheses, which only splits a rule into the names it lists),
// so `Read,Write` would be two rules to the CLI and none to the worker's
// own matching.
func checkToolRule(t string) error {
	invalid := func(why string) error {
		return WireError(fmt.Sprintf("Invalid tool name %q%s", Clip(t, 60), why))
	}
	if t == "" {
		return invalid(": empty")
	}
	if len(t) > maxToolRule {
		return invalid(fmt.Sprintf("…: longer than %d bytes", maxToolRule))
	}
	if !utf8.ValidString(t) {
		return invalid(": not UTF-8")
	}
	first, _ := utf8.DecodeRuneInString(t)
	if first == '-' || unicode.Is(unicode.Pd, first) || first == '\u2212' || unicode.IsSpace(first) {
		return invalid("")
	}
	depth := 0
	for _, r := range t {
		switch {
		case unicode.IsControl(r) || r == '\u2028' || r == '\u2029':
			return invalid(": control characters are not allowed")
		case r == '(':
			depth++
		case r == ')' && depth > 0:
			depth--
		case r == ',' && depth == 0:
			return invalid(": a ',' outside parentheses would split it in two")
		}
	}
	return nil
}

// MaxArgLen is the longest argument Linux passes to a program
// (MAX_ARG_STRLEN: 128 KiB with its terminating NUL); a longer one fails
// the exec with E2BIG.
const MaxArgLen = 128<<10 - 1

// MaxCursorPrompt bounds a Cursor prompt at the gateway: the CLI takes the
// prompt as one argument, followed there by the paths of the run's images
// (at most 10), for which 4 KiB is kept.
const MaxCursorPrompt = MaxArgLen - 4<<10

// CheckPrompt refuses, before a run is accepted, a prompt that provider p
// could not be started with: a Cursor prompt over MaxCursorPrompt, which
// would be accepted and then fail at exec.
func CheckPrompt(p Provider, prompt string) error {
	if p == Cursor && len(prompt) > MaxCursorPrompt {
		return WireError(fmt.Sprintf("Prompt too long for Cursor: at most %d bytes (%d sent); its CLI takes the prompt as one command-line argument", MaxCursorPrompt, len(prompt)))
	}
	return nil
}

// CheckArgs refuses a command line of provider p that the kernel would
// not start: an argument over MaxArgLen (a prompt, with its images'
// paths, passed as one).
func CheckArgs(p Provider, args []string) error {
	for _, a := range args {
		if len(a) > MaxArgLen {
			return WireError(fmt.Sprintf("Prompt too long for %s: a command-line argument of %d bytes, over the %d a program can be given", p, len(a), MaxArgLen))
		}
	}
	return nil
}

// Mode is the permission mode a run gets: skipPermissions means
// bypassPermissions, except in plan mode, as in the reference.
func (o RunOptions) Mode() string {
	if o.Tools.SkipPermissions && o.PermissionMode != "plan" {
		return "bypassPermissions"
	}
	return o.PermissionMode
}

// PermissionModes are the values of options.permissionMode the CLIs accept.
var PermissionModes = []string{"default", "acceptEdits", "bypassPermissions", "plan", "dontAsk", "auto"}

// ValidPermissionMode reports whether m is empty or a known permission mode.
func ValidPermissionMode(m string) bool {
	if m == "" {
		return true
	}
	for _, known := range PermissionModes {
		if m == known {
			return true
		}
	}
	return false
}

// Outcome is how a run ended.
type Outcome struct {
	ExitCode int
	Aborted  bool
	// Reason explains the terminal state in `session-state-changed`.
	Reason string
}

// Success is the rule of PROTOCOL §3.3: exit code 0 and not aborted.
func (o Outcome) Success() bool { return o.ExitCode == 0 && !o.Aborted }

// State is the session state a run with this outcome ends in.
func (o Outcome) State() State {
	switch {
	case o.Aborted:
		return StateAborted
	case o.Success():
		return StateCompleted
	default:
		return StateFailed
	}
}

// StateReason is the reason a terminal session-state-changed carries.
func (o Outcome) StateReason() string {
	if o.Reason != "" {
		return o.Reason
	}
	switch o.State() {
	case StateAborted:
		return "session-aborted"
	case StateCompleted:
		return "run-completed"
	default:
		return "run-failed"
	}
}

// Reasons for lifecycle transitions.
const (
	ReasonCommandAccepted = "command-accepted"
	ReasonWorkerLost      = "worker-lost"
	ReasonNoWorker        = "no-worker"
	ReasonWorkerShutdown  = "worker-shutdown"
	// ReasonStoreUnavailable: the worker stopped the run because Redis
	// could not record its output for too long.
	ReasonStoreUnavailable = "store-unavailable"
)
