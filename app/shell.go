package app

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"unicode/utf8"
)

// Bounds of /shell frames (PROTOCOL §4): what each constant says it does
// past it (a size past MaxShellCols or MaxShellRows is taken as the
// largest, an input past MaxShellInput is sent in pieces).
const (
	DefaultShellCols = 80
	DefaultShellRows = 24
	MaxShellCols     = 1000
	MaxShellRows     = 500
	// MaxShellInput bounds the data of one input control to a worker: a
	// larger input frame (a large paste; its size is bounded by the
	// socket's frame limit) is sent as several, in order.
	MaxShellInput = 256 << 10
	// MaxShellCommand bounds initialCommand.
	MaxShellCommand = 4096
	// MaxShellPath bounds projectPath.
	MaxShellPath = 4096
)

// PlainShell is the provider value of a terminal that runs initialCommand
// (or an interactive bash) rather than an agent CLI.
const PlainShell Provider = "plain-shell"

// OpenCode is a terminal that runs the opencode CLI, as Claude Code UI's
// own server does for it (its Shell offers OpenCode); agentgate runs no
// OpenCode chat, so it is a terminal provider only. The CLI must be on the
// worker's PATH.
const OpenCode Provider = "opencode"

// Wire texts of /shell errors that clients show (the reference's wording).
const (
	ShellErrInvalidPath      = "Invalid project path"
	ShellErrInvalidSessionID = "Invalid session ID"
	ShellErrInvalidShellID   = "Invalid shell ID"
	ShellErrNoTerminal       = "No terminal: send init first"
	ShellErrNoWorker         = "No worker available to run the terminal"
)

// ShellMessage is a frame a client sends on /shell. Only the fields of its
// type are meaningful; ParseShellMessage fills defaults and checks bounds.
type ShellMessage struct {
	Type string `json:"type"`

	// init
	ProjectPath    string `json:"projectPath"`
	SessionID      string `json:"sessionId"`
	Provider       string `json:"provider"`
	HasSession     bool   `json:"hasSession"`
	InitialCommand string `json:"initialCommand"`
	IsPlainShell   bool   `json:"isPlainShell"`
	ForceRestart   bool   `json:"forceRestart"`
	ShellID        string `json:"shellId"`
	// LastSeq asks for a replay of only the chunks after it; nil replays
	// all that is stored. LastGen, when given, is the terminal generation
	// LastSeq is of (the gen of the notice that began it): a terminal
	// restarted since replays from its start instead.
	LastSeq *int64 `json:"lastSeq"`
	LastGen *int64 `json:"lastGen"`

	// init and resize
	Cols int `json:"cols"`
	Rows int `json:"rows"`
	// SizeGiven reports whether the frame gave both cols and rows (not 0):
	// an init without them opens a terminal of the default size but does
	// not resize one it reattaches.
	SizeGiven bool `json:"-"`

	// input
	Data string `json:"data"`

	// ack: the client has rendered the output up to Seq (optional flow
	// control; see the README's /shell section)
	Seq *int64 `json:"seq"`
}

// ParseShellMessage decodes and checks one /shell frame. The error's text
// is meant for the client as is.
func ParseShellMessage(data []byte) (ShellMessage, error) {
	var probe map[string]json.RawMessage
	if err := decodeStrict(data, &probe); err != nil || probe == nil {
		return ShellMessage{}, WireError(ErrTextInvalidPayload)
	}
	var typ string
	if raw, ok := probe["type"]; !ok || json.Unmarshal(raw, &typ) != nil || typ == "" {
		return ShellMessage{}, WireError(ErrTextTypeRequired)
	}
	var m ShellMessage
	switch typ {
	case "ack":
		var ack struct {
			Seq *int64 `json:"seq"`
		}
		if err := json.Unmarshal(data, &ack); err != nil || ack.Seq == nil || *ack.Seq < 0 {
			return ShellMessage{}, WireError("Invalid ack message: seq must be a whole number, 0 or more")
		}
		return ShellMessage{Type: typ, Seq: ack.Seq}, nil
	case "init", "input", "resize":
	default:
		return ShellMessage{}, WireError("Unknown message type: " + Clip(typ, 100))
	}
	// Numbers may arrive as floats from JavaScript (cols: 80.0); anything
	// that is not a whole number is refused below.
	var loose struct {
		ShellMessage
		Cols *float64 `json:"cols"`
		Rows *float64 `json:"rows"`
	}
	if err := json.Unmarshal(data, &loose); err != nil {
		return ShellMessage{}, WireError(fmt.Sprintf("Invalid %s message: %s", typ, fieldOf(err)))
	}
	m = loose.ShellMessage
	m.Type = typ
	cols, err := dimension(loose.Cols, DefaultShellCols, MaxShellCols, "cols", typ == "resize")
	if err != nil {
		return ShellMessage{}, err
	}
	rows, err := dimension(loose.Rows, DefaultShellRows, MaxShellRows, "rows", typ == "resize")
	if err != nil {
		return ShellMessage{}, err
	}
	m.Cols, m.Rows = cols, rows
	m.SizeGiven = loose.Cols != nil && *loose.Cols != 0 && loose.Rows != nil && *loose.Rows != 0
	switch typ {
	case "input":
		if _, ok := probe["data"]; !ok {
			return ShellMessage{}, WireError("Invalid input message: data is required")
		}
	case "init":
		if m.Provider == "" {
			m.Provider = string(Claude)
		}
		if !validShellProvider(Provider(m.Provider)) {
			return ShellMessage{}, WireError("Unknown provider: " + Clip(m.Provider, 100))
		}
		if len(m.InitialCommand) > MaxShellCommand {
			return ShellMessage{}, WireError(fmt.Sprintf("initialCommand too long: at most %d bytes", MaxShellCommand))
		}
		if len(m.ProjectPath) > MaxShellPath {
			return ShellMessage{}, WireError(ShellErrInvalidPath)
		}
		if m.SessionID != "" && !ValidSessionID(m.SessionID) {
			return ShellMessage{}, WireError(ShellErrInvalidSessionID)
		}
		if m.ShellID != "" && !ValidSessionID(m.ShellID) {
			return ShellMessage{}, WireError(ShellErrInvalidShellID)
		}
		if m.LastSeq != nil && *m.LastSeq < 0 {
			return ShellMessage{}, WireError("Invalid init message: lastSeq must not be negative")
		}
	}
	return m, nil
}

// decodeStrict decodes exactly one JSON value.
func decodeStrict(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data")
	}
	return nil
}

// fieldOf names the field of a JSON type error, for the client.
func fieldOf(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) && te.Field != "" {
		field := te.Field[strings.LastIndexByte(te.Field, '.')+1:]
		return fmt.Sprintf("%s must be %s", field, jsonKind(te.Type))
	}
	return "bad field type"
}

// dimension checks cols or rows: missing or 0 takes the default (init);
// a resize must give both. A whole number past limit is taken as limit, as
// the worker does with a PTY's size: a client on a very wide screen gets
// the widest terminal, not a refusal it may not show (Claude Code UI's
// shows no error frame).
func dimension(v *float64, def, limit int, name string, required bool) (int, error) {
	if v == nil || *v == 0 {
		if required {
			return 0, WireError(fmt.Sprintf("Invalid resize message: %s is required", name))
		}
		return def, nil
	}
	if *v != math.Trunc(*v) || *v < 1 {
		return 0, WireError(fmt.Sprintf("Invalid %s: must be a whole number, 1 or more", name))
	}
	if *v > float64(limit) {
		return limit, nil
	}
	return int(*v), nil
}

func validShellProvider(p Provider) bool {
	switch p {
	case Claude, Cursor, Codex, Gemini, PlainShell, OpenCode:
		return true
	}
	return false
}

// HasSignalKey reports whether typed input holds a character that a
// terminal's line discipline turns into a signal under its default
// settings: ^C (interrupt), ^\ (quit) or ^Z (suspend). A gateway holds a
// socket's output after sending one, and the worker answers each with
// whether the terminal threw its queued output away (PROTOCOL §4, the
// agentgate notes in the README).
func HasSignalKey[T string | []byte](data T) bool {
	for i := 0; i < len(data); i++ {
		switch data[i] {
		case 0x03, 0x1c, 0x1a:
			return true
		}
	}
	return false
}

// Clip cuts s to at most n bytes, for echoing bad input in an error
// without echoing all of it. It cuts before a UTF-8 character that would
// not fit whole (a cut one would be echoed as \xNN escapes), looking back
// at most 3 bytes: a string that is not UTF-8 is cut at n.
func Clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for i := n; i > 0 && i > n-utf8.UTFMax; i-- {
		if utf8.RuneStart(s[i]) {
			return s[:i]
		}
	}
	return s[:n]
}

// Plain reports whether an init runs its initialCommand rather than a
// provider CLI (the reference's rule).
func (m ShellMessage) Plain() bool {
	return m.IsPlainShell || (m.InitialCommand != "" && !m.HasSession) || Provider(m.Provider) == PlainShell
}

// LoginReset reports whether an init must replace an existing terminal: a
// login command (a fresh login must not reattach to an old prompt), or an
// explicit forceRestart.
func (m ShellMessage) LoginReset() bool {
	if m.ForceRestart {
		return true
	}
	for _, s := range []string{"setup-token", "cursor-agent login", "auth login"} {
		if strings.Contains(m.InitialCommand, s) {
			return true
		}
	}
	return false
}

// ShellKey names the terminal of an init by owner, resolved project path,
// what runs and the provider session id, else shellId, else "default".
// Two users, two tabs with different shellIds, or two providers never
// share a terminal, and neither do two inits that run different commands:
// what runs is a plain shell and a hash of its command (as Claude Code
// UI's server keys a plain shell by its initialCommand), or the provider,
// whether it resumes the session, and a hash of initialCommand, which a
// provider terminal runs too (claude or opencode without a session to
// resume, gemini always) where the reference, keying it by path and id
// only, reattached an init running vim to the htop of another. The parts
// are hashed so the key is short, fixed and safe in a Redis key.
func ShellKey(owner, projectPath string, m ShellMessage) string {
	id := m.SessionID
	if id == "" {
		id = m.ShellID
	}
	if id == "" {
		id = "default"
	}
	parts := []string{owner, projectPath, "", id}
	if m.Plain() {
		parts[2] = "plain:" + sha256Hex(m.InitialCommand)
	} else {
		// The id part is the session id whenever Command uses one (to
		// resume), so equal keys then mean the same id.
		resume := m.HasSession && m.SessionID != ""
		parts[2] = "provider:" + m.Provider
		parts = append(parts, fmt.Sprintf("resume:%t", resume), "command:"+sha256Hex(m.InitialCommand))
	}
	h := sha256.New()
	for _, part := range parts {
		// Length-prefixed, so no two part lists hash the same input.
		fmt.Fprintf(h, "%d:%s;", len(part), part)
	}
	return hex.EncodeToString(h.Sum(nil)[:16])
}

func sha256Hex(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:])
}

// ShellSpec is what a worker needs to start a terminal.
type ShellSpec struct {
	Owner          string   `json:"owner"`
	ProjectPath    string   `json:"projectPath"`
	Provider       Provider `json:"provider"`
	SessionID      string   `json:"sessionId,omitempty"`
	HasSession     bool     `json:"hasSession,omitempty"`
	InitialCommand string   `json:"initialCommand,omitempty"`
	Plain          bool     `json:"plain,omitempty"`
	Cols           int      `json:"cols"`
	Rows           int      `json:"rows"`
}

// Spec is the ShellSpec of an init by owner in the resolved projectPath.
func (m ShellMessage) Spec(owner, projectPath string) ShellSpec {
	p := Provider(m.Provider)
	if m.Plain() {
		p = PlainShell
	}
	return ShellSpec{
		Owner: owner, ProjectPath: projectPath, Provider: p, SessionID: m.SessionID, HasSession: m.HasSession,
		InitialCommand: m.InitialCommand, Plain: m.Plain(), Cols: m.Cols, Rows: m.Rows,
	}
}

// Command is the bash command line of a terminal (run as `bash -c`), with
// the provider CLIs named by bins; "" means an interactive bash. Session ids
// were checked by ValidSessionID, so they can neither break the quoting nor
// start with '-'; they are passed as `--resume="ID"` all the same, and to
// Codex, whose id is a positional argument, after `--`, so that no CLI
// could read one as a flag.
func (s ShellSpec) Command(bins map[Provider]string) string {
	if s.Plain {
		return s.InitialCommand
	}
	bin := func(p Provider, def string) string {
		if b := bins[p]; b != "" {
			return shellQuote(b)
		}
		return def
	}
	resume := s.HasSession && s.SessionID != ""
	switch s.Provider {
	case Cursor:
		if resume {
			return fmt.Sprintf(`%s --resume="%s"`, bin(Cursor, "cursor-agent"), s.SessionID)
		}
		return bin(Cursor, "cursor-agent")
	case Codex:
		if resume {
			return fmt.Sprintf(`%[1]s resume -- "%[2]s" || %[1]s`, bin(Codex, "codex"), s.SessionID)
		}
		return bin(Codex, "codex")
	case OpenCode:
		if resume {
			return fmt.Sprintf(`%s --session="%s"`, bin(OpenCode, "opencode"), s.SessionID)
		}
		if s.InitialCommand != "" {
			return s.InitialCommand
		}
		return bin(OpenCode, "opencode")
	case Gemini:
		base := s.InitialCommand
		if base == "" {
			base = bin(Gemini, "gemini")
		}
		if resume {
			return fmt.Sprintf(`%s --resume="%s"`, base, s.SessionID)
		}
		return base
	default:
		if resume {
			return fmt.Sprintf(`%[1]s --resume="%[2]s" || %[1]s`, bin(Claude, "claude"), s.SessionID)
		}
		if s.InitialCommand != "" {
			return s.InitialCommand
		}
		return bin(Claude, "claude")
	}
}

// shellQuote quotes s for bash unless it is made of safe characters only.
func shellQuote(s string) string {
	safe := s != ""
	for _, r := range s {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || strings.ContainsRune("/._-+:@,=", r)) {
			safe = false
			break
		}
	}
	if safe {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

// Welcome is the line the gateway writes when it starts a terminal (the
// reference's wording).
func (s ShellSpec) Welcome() string {
	if s.Plain {
		return "Starting terminal in: " + s.ProjectPath
	}
	name := providerTitle(s.Provider)
	if s.HasSession && s.SessionID != "" {
		return fmt.Sprintf("Resuming %s session %s in: %s", name, s.SessionID, s.ProjectPath)
	}
	return fmt.Sprintf("Starting new %s session in: %s", name, s.ProjectPath)
}

func providerTitle(p Provider) string {
	switch p {
	case Cursor:
		return "Cursor"
	case Codex:
		return "Codex"
	case Gemini:
		return "Gemini"
	case OpenCode:
		return "OpenCode"
	}
	return "Claude"
}

// Shell frames the gateway sends (PROTOCOL §4).
type (
	// ShellOutput is terminal output; Seq is nil for gateway notices. Gen
	// is set on the notice that begins a socket's view of a terminal
	// generation (started, reconnected, restarted): the seqs after it are
	// that generation's, and an init's lastGen names it.
	ShellOutput struct {
		Type string `json:"type"`
		Data string `json:"data"`
		Seq  *int64 `json:"seq,omitempty"`
		Gen  int64  `json:"gen,omitempty"`
	}
	// ShellAuthURL announces a login URL found in the output.
	ShellAuthURL struct {
		Type     string `json:"type"`
		URL      string `json:"url"`
		AutoOpen bool   `json:"autoOpen"`
	}
	// ShellError is an error answer to a frame.
	ShellError struct {
		Type    string `json:"type"`
		Message string `json:"message"`
	}
	// ShellExit reports the end of the terminal's process; Signal is the
	// name of the signal that killed it, or nil.
	ShellExit struct {
		Type     string  `json:"type"`
		ExitCode int     `json:"exitCode"`
		Signal   *string `json:"signal"`
	}
)

// ANSI colours of gateway notices, as the reference writes them.
const (
	ansiCyan   = "\x1b[36m"
	ansiYellow = "\x1b[33m"
	ansiRed    = "\x1b[31m"
	ansiReset  = "\x1b[0m"
)

// ShellNotice is a notice line in the reference's colours: info (cyan),
// warn (yellow) or error (red).
func ShellNotice(level, text string) string {
	colour := ansiCyan
	switch level {
	case "warn":
		colour = ansiYellow
	case "error":
		colour = ansiRed
	}
	return colour + text + ansiReset + "\r\n"
}
