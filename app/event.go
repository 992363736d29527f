package app

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"
)

// Kind names a session event (the `kind` field of PROTOCOL §3.2).
type Kind string

// The session event kinds of PROTOCOL §3.2.
const (
	KindText                Kind = "text"
	KindStreamDelta         Kind = "stream_delta"
	KindStreamEnd           Kind = "stream_end"
	KindThinking            Kind = "thinking"
	KindToolUse             Kind = "tool_use"
	KindToolResult          Kind = "tool_result"
	KindError               Kind = "error"
	KindStatus              Kind = "status"
	KindPermissionRequest   Kind = "permission_request"
	KindPermissionCancelled Kind = "permission_cancelled"
	KindSessionCreated      Kind = "session_created"
	KindComplete            Kind = "complete"
	KindStateChanged        Kind = "session-state-changed"
)

// Event is one session event before the store has placed it in its
// session's stream. The store adds the envelope fields it owns (`seq`,
// `runId`, and for lifecycle events `startedAt`/`changedAt`), so they are not
// here.
type Event struct {
	ID        string
	SessionID string
	Provider  Provider
	Kind      Kind
	Timestamp time.Time
	// Fields are the kind's own fields, flattened into the event object.
	Fields map[string]any
}

// NewEvent returns an event of kind k with a fresh id and the current time.
func NewEvent(k Kind, fields map[string]any) Event {
	return Event{ID: string(k) + "_" + NewID(), Kind: k, Timestamp: time.Now(), Fields: fields}
}

// Text is a `text` event: a message of role "assistant" or "user".
func Text(role, content string) Event {
	return NewEvent(KindText, map[string]any{"role": role, "content": content})
}

// Thinking is a `thinking` event.
func Thinking(content string) Event {
	return NewEvent(KindThinking, map[string]any{"content": content})
}

// ToolUse is a `tool_use` event.
func ToolUse(toolID, name string, input any) Event {
	return NewEvent(KindToolUse, map[string]any{"toolName": name, "toolInput": input, "toolId": toolID})
}

// ToolResult is a `tool_result` event.
func ToolResult(toolID string, content any, isError bool) Event {
	return NewEvent(KindToolResult, map[string]any{"toolId": toolID, "content": content, "isError": isError})
}

// ObjectOrEmpty is a provider's JSON value for an event field, or {} when
// the provider sent none, so that clients always get an object to render.
func ObjectOrEmpty(raw json.RawMessage) any {
	if len(raw) == 0 {
		return map[string]any{}
	}
	return raw
}

// ErrorRow is an `error` event: an informational row, never the end of a run.
func ErrorRow(content string) Event {
	return NewEvent(KindError, map[string]any{"content": content})
}

// TokenBudget is a `status` event with text "token_budget".
func TokenBudget(budget map[string]any) Event {
	return NewEvent(KindStatus, map[string]any{"text": "token_budget", "tokenBudget": budget})
}

// SessionCreated is the `session_created` event of a new session.
func SessionCreated(sessionID, providerSessionID string) Event {
	f := map[string]any{"newSessionId": sessionID}
	if providerSessionID != "" {
		f["providerSessionId"] = providerSessionID
	}
	return NewEvent(KindSessionCreated, f)
}

// CompleteEvent is the single `complete` event that ends a run.
func CompleteEvent(sessionID string, o Outcome) Event {
	return NewEvent(KindComplete, map[string]any{
		"actualSessionId": sessionID,
		"exitCode":        o.ExitCode,
		"success":         o.Success(),
		"aborted":         o.Aborted,
	})
}

// StateChanged is a `session-state-changed` event. The store adds its
// `changedAt` and `startedAt` from Redis time.
func StateChanged(state State, reason string) Event {
	return NewEvent(KindStateChanged, map[string]any{"state": state, "reason": reason})
}

// RunStarted is the `session-state-changed{running}` that starts a run,
// with the prompt the run was given: the CLIs do not print it back, and
// without it a session's stored events hold only the answers (a chat's
// history after a reload, another tab that follows the run).
func RunStarted(prompt string) Event {
	ev := StateChanged(StateRunning, ReasonCommandAccepted)
	if prompt != "" {
		ev.Fields["prompt"] = prompt
	}
	return ev
}

// MaxEventBytes bounds an encoded event: a provider line of up to 16 MiB
// whose characters all need escaping (control bytes, invalid UTF-8) encodes
// to six times that, more than a session's whole history budget.
const MaxEventBytes = 16 << 20

// ErrEventTooLarge is Body's error for an event over MaxEventBytes.
var ErrEventTooLarge = errors.New("event too large")

// Body encodes e as a JSON object in a stable field order: the envelope
// first, then the kind's fields sorted by name. Keys of Fields that collide
// with envelope names are an error, so a provider line cannot forge an
// envelope field such as seq.
func (e Event) Body() ([]byte, error) {
	var b bytes.Buffer
	b.Grow(128)
	b.WriteString(`{"id":`)
	writeJSONString(&b, e.ID)
	b.WriteString(`,"sessionId":`)
	writeJSONString(&b, e.SessionID)
	b.WriteString(`,"timestamp":`)
	writeJSONString(&b, e.Timestamp.UTC().Format(time.RFC3339Nano))
	b.WriteString(`,"provider":`)
	writeJSONString(&b, string(e.Provider))
	b.WriteString(`,"kind":`)
	writeJSONString(&b, string(e.Kind))
	keys := make([]string, 0, len(e.Fields))
	for k := range e.Fields {
		if reservedField(k) {
			return nil, fmt.Errorf("event %s: field %q is part of the envelope", e.Kind, k)
		}
		keys = append(keys, k)
	}
	slices.Sort(keys)
	// Not HTML-escaped: json.Marshal writes each <, > and & as six bytes,
	// which made code and markup in a tool result up to six times its size
	// (and a line of 16 MiB an event of 96 MiB). Clients parse JSON.
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	for _, k := range keys {
		b.WriteByte(',')
		writeJSONString(&b, k)
		b.WriteByte(':')
		if err := enc.Encode(e.Fields[k]); err != nil {
			return nil, fmt.Errorf("event %s: encode field %s: %w", e.Kind, k, err)
		}
		b.Truncate(b.Len() - 1) // Encode ends a value with a newline
	}
	b.WriteByte('}')
	if b.Len() > MaxEventBytes {
		return nil, fmt.Errorf("%w: %d MiB", ErrEventTooLarge, b.Len()>>20)
	}
	return b.Bytes(), nil
}

func reservedField(k string) bool {
	switch k {
	case "id", "sessionId", "timestamp", "provider", "kind", "seq", "runId", "type":
		return true
	}
	return false
}

func writeJSONString(b *bytes.Buffer, s string) {
	if plainASCII(s) {
		b.WriteByte('"')
		b.WriteString(s)
		b.WriteByte('"')
		return
	}
	v, _ := json.Marshal(s) // a string always encodes
	b.Write(v)
}

// plainASCII reports whether s can be written between quotes as is, which
// holds for ids, kinds and timestamps and saves an allocation on the hot path.
func plainASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c >= 0x7f || c == '"' || c == '\\' || c == '<' || c == '>' || c == '&' {
			return false
		}
	}
	return true
}

// seqPrefix is how every stored event starts: the store writes seq first so
// that a gateway can order frames without decoding them.
const seqPrefix = `{"seq":`

// FrameSeq returns the seq of a stored event frame, reading only its prefix.
func FrameSeq(frame []byte) (int64, bool) {
	if !bytes.HasPrefix(frame, []byte(seqPrefix)) {
		return 0, false
	}
	rest := frame[len(seqPrefix):]
	end := bytes.IndexByte(rest, ',')
	if end <= 0 || end > 19 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(rest[:end]), 10, 64)
	if err != nil || n <= 0 {
		return 0, false
	}
	return n, true
}

// StoredOnlySeq reads the seq of what Redis publishes in place of a frame
// too large to publish (`{"seq":N}`, prelude.lua): a gateway reads that
// frame from the session's stream.
func StoredOnlySeq(frame []byte) (int64, bool) {
	if !bytes.HasPrefix(frame, []byte(seqPrefix)) || !bytes.HasSuffix(frame, []byte("}")) {
		return 0, false
	}
	digits := frame[len(seqPrefix) : len(frame)-1]
	if len(digits) == 0 || len(digits) > 19 {
		return 0, false
	}
	n, err := strconv.ParseInt(string(digits), 10, 64)
	if err != nil || n <= 0 {
		return 0, false
	}
	return n, true
}
