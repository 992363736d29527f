package app

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
