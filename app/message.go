package app

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
)

// ClientMessage is a frame a client sends on /ws (PROTOCOL §3.1). Only the
// fields of its type are meaningful.
type ClientMessage struct {
	Type string `json:"type"`
	// Command is the prompt of a *-command.
	Command string `json:"command"`
	// RequestID is the client's correlation id, echoed as sent (a JSON
	// string or number).
	RequestID json.RawMessage `json:"requestId"`
	SessionID string          `json:"sessionId"`
	Provider  string          `json:"provider"`
	// LastSeq is the last seq the client holds; nil means "live only".
	LastSeq  *int64           `json:"lastSeq"`
	Sessions []SubscribeEntry `json:"sessions"`
	Options  CommandOptions   `json:"options"`

	// Fields of claude-permission-response.
	Allow         *bool           `json:"allow"`
	UpdatedInput  json.RawMessage `json:"updatedInput"`
	Message       string          `json:"message"`
	RememberEntry json.RawMessage `json:"rememberEntry"`
}

// SubscribeEntry is one session of a `subscribe` message.
type SubscribeEntry struct {
	SessionID string `json:"sessionId"`
	LastSeq   *int64 `json:"lastSeq"`
}

// CommandOptions are the `options` of a *-command.
type CommandOptions struct {
	ProjectPath    string        `json:"projectPath"`
	Cwd            string        `json:"cwd"`
	SessionID      string        `json:"sessionId"`
	Resume         bool          `json:"resume"`
	Model          string        `json:"model"`
	PermissionMode string        `json:"permissionMode"`
	ToolsSettings  ToolsSettings `json:"toolsSettings"`
	Images         []Image       `json:"images"`
}

// Wire error texts of PROTOCOL §3 that clients match on.
const (
	ErrTextInvalidPayload = "Invalid websocket payload"
	ErrTextTypeRequired   = "Message type is required"
	ErrTextNoActiveRun    = "No active run"
)

// WireError is an error whose text is sent to the client as is.
type WireError string

func (e WireError) Error() string { return string(e) }

// ParseClientMessage decodes one /ws frame. A nil error means the message
// has a non-empty type; the returned error's text is what the client is told.
// The message is returned by pointer: it is 360 bytes, and the handlers that
// take it run on goroutines whose stacks it would grow.
func ParseClientMessage(data []byte) (*ClientMessage, error) {
	trimmed := bytes.TrimSpace(data)
	if len(trimmed) == 0 || trimmed[0] != '{' || !json.Valid(trimmed) {
		return nil, WireError(ErrTextInvalidPayload)
	}
	var head struct {
		Type      json.RawMessage `json:"type"`
		RequestID json.RawMessage `json:"requestId"`
		SessionID json.RawMessage `json:"sessionId"`
	}
	if err := json.Unmarshal(trimmed, &head); err != nil {
		return nil, WireError(ErrTextInvalidPayload)
	}
	var typ string
	if len(head.Type) == 0 || json.Unmarshal(head.Type, &typ) != nil || typ == "" {
		return nil, WireError(ErrTextTypeRequired)
	}
	msg := new(ClientMessage)
	if err := json.Unmarshal(trimmed, msg); err != nil {
		var typeErr *json.UnmarshalTypeError
		if errors.As(err, &typeErr) && typeErr.Field != "" {
			text := WireError(fmt.Sprintf("Invalid field %s: expected %s", typeErr.Field, jsonKind(typeErr.Type)))
			// The answer names the request, when it can, so that the client
			// knows which of its requests was refused.
			reqErr := &RequestError{Text: text}
			if validRequestID(head.RequestID) {
				reqErr.RequestID = head.RequestID
			}
			_ = json.Unmarshal(head.SessionID, &reqErr.SessionID)
			reqErr.SessionID = Clip(reqErr.SessionID, MaxSessionIDLen)
			return nil, reqErr
		}
		return nil, WireError(ErrTextInvalidPayload)
	}
	if !validRequestID(msg.RequestID) {
		return nil, WireError("Invalid field requestId: expected a string or a number")
	}
	return msg, nil
}

// RequestError is a message refused for a field of the wrong type, with
// the requestId and sessionId it carried (either may be empty).
type RequestError struct {
	Text      WireError
	RequestID json.RawMessage
	SessionID string
}

func (e *RequestError) Error() string { return string(e.Text) }
func (e *RequestError) Unwrap() error { return e.Text }

// jsonKind names a Go type as the JSON a client should have sent.
func jsonKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Pointer:
		return jsonKind(t.Elem())
	}
	return "an object"
}

func validRequestID(raw json.RawMessage) bool {
	if len(raw) == 0 || string(raw) == "null" {
		return true
	}
	switch raw[0] {
	case '"':
		return len(raw) <= 256
	case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
		return len(raw) <= 32
	}
	return false
}

// Reply frames (PROTOCOL §3.2: replies carry `type`, never `kind`).

// ErrorReply is `{type:"error", error, requestId?, sessionId?, retryable?}`.
type ErrorReply struct {
	Type      string          `json:"type"`
	Error     string          `json:"error"`
	RequestID json.RawMessage `json:"requestId,omitempty"`
	SessionID string          `json:"sessionId,omitempty"`
	// Retryable marks an error that says nothing about the request, only
	// that the gateway could not answer it now (Redis down or loading): the
	// same request may succeed later.
	Retryable bool `json:"retryable,omitempty"`
}

// StoreUnavailableError is the text of a reply the gateway could not give
// because Redis did not answer.
const StoreUnavailableError = "Session store unavailable (Redis is down or restarting); try again"

// StoreFullError is the text of a reply to a request that needed Redis to
// grow when it was at its maxmemory: it may succeed once keys expire or an
// operator makes room.
const StoreFullError = "Session store full (Redis reached its maxmemory); try again later"

// StoreRefusedError is the text of a reply to a request that needed a
// write Redis refused because it cannot persist its data (MISCONF: its
// last background save failed, as on a full disk).
const StoreRefusedError = "Session store refuses writes (Redis cannot save its data); try again later"

// NewErrorReply builds an error reply.
func NewErrorReply(text string) ErrorReply { return ErrorReply{Type: "error", Error: text} }

// SessionAccepted tells the sender its command started a run.
type SessionAccepted struct {
	Type         string          `json:"type"`
	Provider     Provider        `json:"provider"`
	SessionID    string          `json:"sessionId"`
	RequestID    json.RawMessage `json:"requestId,omitempty"`
	RequestType  string          `json:"requestType"`
	AcceptedAt   int64           `json:"acceptedAt"`
	StartedAt    int64           `json:"startedAt"`
	IsNewSession bool            `json:"isNewSession"`
}

// SessionBusy tells the sender its command started nothing because the
// session is running.
type SessionBusy struct {
	Type         string          `json:"type"`
	Provider     Provider        `json:"provider"`
	SessionID    string          `json:"sessionId"`
	RequestID    json.RawMessage `json:"requestId,omitempty"`
	RequestType  string          `json:"requestType"`
	ProjectPath  string          `json:"projectPath"`
	IsProcessing bool            `json:"isProcessing"`
	Reason       string          `json:"reason"`
	Message      string          `json:"message"`
	ReportedAt   int64           `json:"reportedAt"`
	StartedAt    int64           `json:"startedAt"`
}

// SessionStatus answers check-session-status and subscribe (PROTOCOL §3.5).
type SessionStatus struct {
	Type         string   `json:"type"`
	SessionID    string   `json:"sessionId"`
	Provider     Provider `json:"provider"`
	IsProcessing bool     `json:"isProcessing"`
	State        State    `json:"state"`
	StartedAt    int64    `json:"startedAt"`
	StatusText   string   `json:"statusText"`
	CanInterrupt bool     `json:"canInterrupt"`
	LastSeq      int64    `json:"lastSeq"`
	// Recovered is false when the requested replay was no longer stored.
	Recovered *bool `json:"recovered,omitempty"`
	// PendingPermissions are the run's tool requests still waiting for an
	// answer, as in pending-permissions-response.
	PendingPermissions []json.RawMessage `json:"pendingPermissions,omitempty"`
}

// StatusOf builds the session-status reply for a session the caller may see.
func StatusOf(s Session) SessionStatus {
	state := s.State
	if state == "" {
		state = StateIdle
	}
	return SessionStatus{
		Type: "session-status", SessionID: s.ID, Provider: s.Provider,
		IsProcessing: s.Running(), State: state, StartedAt: s.StartedAt,
		StatusText: s.StatusText, CanInterrupt: s.Running() && s.CanInterrupt, LastSeq: s.LastSeq,
	}
}

// UnknownStatus is the session-status of a session the caller may not see:
// indistinguishable from one that does not exist.
func UnknownStatus(sessionID string, provider Provider) *SessionStatus {
	if provider == "" {
		provider = Claude
	}
	return &SessionStatus{Type: "session-status", SessionID: sessionID, Provider: provider, State: StateIdle}
}

// ActiveSessions answers get-active-sessions.
type ActiveSessions struct {
	Type     string                `json:"type"`
	Sessions map[Provider][]string `json:"sessions"`
}

// PendingPermissions answers get-pending-permissions.
type PendingPermissions struct {
	Type      string            `json:"type"`
	SessionID string            `json:"sessionId"`
	Data      []json.RawMessage `json:"data"`
}
