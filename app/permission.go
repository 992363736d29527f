package app

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Reasons of a permission_cancelled event. PermissionAnswered tells the
// other tabs that show the request that a user answered it: Claude Code
// UI's frontend removes a prompt on permission_cancelled only, and kept
// one answered elsewhere until the run ended (its composer hidden, for a
// question).
const (
	PermissionTimeout   = "timeout"
	PermissionCancelled = "cancelled"
	PermissionAnswered  = "answered"
)

// Deny messages the provider receives when no one answered.
const (
	DenyTimedOut  = "Permission request timed out"
	DenyCancelled = "Permission request cancelled"
	DenyByUser    = "User denied tool use"
	DenyBySetting = "Tool disallowed by settings"
	DenyTooMany   = "Too many permission requests are waiting for an answer"
	DenyTooLarge  = "This tool call is too large to ask permission for (over 1 MiB of input)"
	// DenyNameTooLong answers a request whose tool name is over 256 bytes.
	DenyNameTooLong = "This tool's name is too long to ask permission for (over 256 bytes)"
)

// DefaultPermissionTimeout is how long a tool waits for an answer
// (PROTOCOL §3.6, AGENTGATE_PERMISSION_TIMEOUT).
const DefaultPermissionTimeout = 55 * time.Second

// interactiveTools ask the user something and are pointless to answer
// automatically: they always wait for the user, without a timeout.
var interactiveTools = map[string]bool{"AskUserQuestion": true, "ExitPlanMode": true}

// InteractiveTool reports whether a tool is a question to the user: it is
// always asked, whatever the settings, and never times out.
func InteractiveTool(name string) bool { return interactiveTools[name] }

// ValidPermissionID reports whether id can name a permission request: the
// alphabet and length of a session id, so it can sit in a Redis key and in
// a JSON string without escaping.
func ValidPermissionID(id string) bool { return ValidSessionID(id) }

// PendingPermission is a permission request waiting for an answer, as
// stored in `ag:session:{ID}:perms` and sent in pending-permissions-response.
type PendingPermission struct {
	RequestID  string          `json:"requestId"`
	ToolName   string          `json:"toolName"`
	Input      json.RawMessage `json:"input"`
	SessionID  string          `json:"sessionId"`
	ReceivedAt int64           `json:"receivedAt"`
}

// PermissionRequest is the `permission_request` event of a pending request.
func PermissionRequest(p PendingPermission) Event {
	return NewEvent(KindPermissionRequest, map[string]any{
		"requestId": p.RequestID, "toolName": p.ToolName, "input": ObjectOrEmpty(p.Input),
	})
}

// PermissionCancelledEvent is the `permission_cancelled` event of a request
// that waits no more, for one of the reasons above.
func PermissionCancelledEvent(requestID, reason string) Event {
	return NewEvent(KindPermissionCancelled, map[string]any{"requestId": requestID, "reason": reason})
}

// PermissionAnswer is a user's answer to a permission request
// (claude-permission-response), as it travels to the worker.
type PermissionAnswer struct {
	RequestID     string          `json:"requestId"`
	Allow         bool            `json:"allow"`
	UpdatedInput  json.RawMessage `json:"updatedInput,omitempty"`
	Message       string          `json:"message,omitempty"`
	RememberEntry string          `json:"rememberEntry,omitempty"`
}

// maxRememberEntry bounds a rememberEntry: a tool name or a Bash prefix rule.
const maxRememberEntry = 1024

// AnswerOf validates a claude-permission-response frame. A malformed one is
// answered with the returned error; an unknown request id is not an error
// here (like the reference, it is ignored later).
func AnswerOf(msg *ClientMessage) (PermissionAnswer, error) {
	var id string
	if json.Unmarshal(msg.RequestID, &id) != nil || !ValidPermissionID(id) {
		return PermissionAnswer{}, WireError(fmt.Sprintf("claude-permission-response needs a requestId: letters, digits and \"_.-:\", at most %d", MaxSessionIDLen))
	}
	a := PermissionAnswer{RequestID: id, Allow: msg.Allow != nil && *msg.Allow, Message: msg.Message}
	if len(msg.UpdatedInput) > 0 && string(msg.UpdatedInput) != "null" {
		if msg.UpdatedInput[0] != '{' {
			return PermissionAnswer{}, WireError("updatedInput must be an object")
		}
		a.UpdatedInput = msg.UpdatedInput
	}
	if len(msg.RememberEntry) > 0 && string(msg.RememberEntry) != "null" {
		var entry string
		if json.Unmarshal(msg.RememberEntry, &entry) != nil || len(entry) > maxRememberEntry {
			return PermissionAnswer{}, WireError("rememberEntry must be a tool name string")
		}
		a.RememberEntry = entry
	}
	return a, nil
}

// Decision is what the tool rules say about one tool use.
type Decision int

// Decisions of ToolRules.Decide.
const (
	Ask Decision = iota
	Allow
	Deny
)

// ToolRules decide a tool use without asking the user: the run's
// bypassPermissions mode and its allowed and disallowed tool lists.
type ToolRules struct {
	Bypass     bool
	Allowed    []string
	Disallowed []string
}

// RulesOf returns the tool rules of a run's options.
func RulesOf(o RunOptions) ToolRules {
	return ToolRules{
		Bypass:     o.Mode() == "bypassPermissions",
		Allowed:    append([]string(nil), o.Tools.AllowedTools...),
		Disallowed: append([]string(nil), o.Tools.DisallowedTools...),
	}
}

// Decide says whether a tool use is allowed, denied or must be asked.
// Questions to the user are always asked; then bypass allows, a disallowed
// rule denies, an allowed rule allows.
func (r ToolRules) Decide(tool string, input json.RawMessage) Decision {
	switch {
	case InteractiveTool(tool):
		return Ask
	case r.Bypass:
		return Allow
	case matchesAny(r.Disallowed, tool, input, true):
		return Deny
	case matchesAny(r.Allowed, tool, input, false):
		return Allow
	}
	return Ask
}

// Remember allows entry for the rest of the run (rememberEntry).
func (r *ToolRules) Remember(entry string) {
	if entry == "" {
		return
	}
	r.Disallowed = removeString(r.Disallowed, entry)
	r.Allowed = append(removeString(r.Allowed, entry), entry)
}

func matchesAny(rules []string, tool string, input json.RawMessage, deny bool) bool {
	for _, rule := range rules {
		if ruleMatches(rule, tool, input, deny) {
			return true
		}
	}
	return false
}

// ruleMatches matches one rule: an exact tool name, or `Bash(prefix:*)`,
// which matches a Bash command that starts with prefix as a whole word
// (`git` is not `gitk`). An allowing prefix rule allows one simple command
// only: a command that chains, pipes, redirects or substitutes another
// (`git log; curl … | sh`) is asked instead, as the Claude CLI asks unless
// every part of such a command is allowed; a prefix matched the start of
// the whole string, and let a model run anything after an allowed word. A
// disallowing one (deny) matches when any part of the command starts with
// prefix.
func ruleMatches(rule, tool string, input json.RawMessage, deny bool) bool {
	rule = strings.TrimSpace(rule)
	if rule == tool {
		return true
	}
	name, arg, ok := strings.Cut(rule, "(")
	if !ok || name != tool || tool != "Bash" || !strings.HasSuffix(arg, ":*)") {
		return false
	}
	prefix := strings.TrimSuffix(arg, ":*)")
	var in struct {
		Command string `json:"command"`
	}
	if prefix == "" || json.Unmarshal(input, &in) != nil {
		return false
	}
	command := strings.TrimSpace(in.Command)
	if !deny {
		return !compoundCommand(command) && startsWithWord(command, prefix)
	}
	for _, part := range strings.FieldsFunc(command, isCommandSeparator) {
		if startsWithWord(strings.TrimSpace(part), prefix) {
			return true
		}
	}
	return false
}

// compoundCommand reports whether a shell command may run more than the
// command it starts with: a list or pipeline (`;`, `&`, `|`, a line
// break), a redirection, or a command or process substitution. Quotes are
// not parsed: a quoted `;` counts too, which asks rather than allows.
func compoundCommand(command string) bool {
	return strings.ContainsAny(command, ";&|<>`\n\r") || strings.Contains(command, "$(")
}

// isCommandSeparator reports whether c may end one command of a shell
// line and start another: the list and pipeline operators, a line break,
// and the parentheses and backquote of a subshell or substitution.
func isCommandSeparator(c rune) bool {
	return strings.ContainsRune(";&|\n\r()`", c)
}

// startsWithWord reports whether command starts with prefix, followed by
// its end or a blank unless prefix ends in a character that cannot go on
// a word (`curl https://example.com/` goes on with a path).
func startsWithWord(command, prefix string) bool {
	if !strings.HasPrefix(command, prefix) {
		return false
	}
	if len(command) == len(prefix) || command[len(prefix)] == ' ' || command[len(prefix)] == '\t' {
		return true
	}
	// A rule's prefix may end in any letter (`./скрипт:*`), not only an
	// ASCII one: `./скрипт` must not allow `./скриптx`.
	last, _ := utf8.DecodeLastRuneInString(prefix)
	wordChar := last == '_' || last == '-' || last == '.' || unicode.IsLetter(last) || unicode.IsDigit(last) || unicode.IsMark(last)
	return !wordChar
}

func removeString(list []string, s string) []string {
	out := list[:0]
	for _, v := range list {
		if v != s {
			out = append(out, v)
		}
	}
	return out
}
