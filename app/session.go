package app

import (
	"crypto/rand"
	"encoding/hex"
	"strings"
	"time"
)

// Provider names an agent CLI.
type Provider string

// The providers of PROTOCOL §3.1.
const (
	Claude Provider = "claude"
	Cursor Provider = "cursor"
	Codex  Provider = "codex"
	Gemini Provider = "gemini"
)

// Providers lists every provider in the order replies enumerate them.
var Providers = []Provider{Claude, Cursor, Codex, Gemini}

// ProviderForCommand maps a command message type to its provider.
func ProviderForCommand(msgType string) (Provider, bool) {
	switch msgType {
	case "claude-command":
		return Claude, true
	case "cursor-command":
		return Cursor, true
	case "codex-command":
		return Codex, true
	case "gemini-command":
		return Gemini, true
	}
	return "", false
}

// State is the state of a session as stored in its hash.
type State string

// Session states. A session with no run yet is idle; a run ends in
// completed, failed or aborted.
const (
	StateIdle      State = "idle"
	StateRunning   State = "running"
	StateCompleted State = "completed"
	StateFailed    State = "failed"
	StateAborted   State = "aborted"
)

// Session is one conversation with one provider, as stored in
// `ag:session:{ID}`.
type Session struct {
	ID                string
	Owner             string
	Provider          Provider
	ProjectPath       string
	ProviderSessionID string
	State             State
	RunID             string
	StartedAt         int64 // ms since the epoch, Redis time
	StatusText        string
	CanInterrupt      bool
	Worker            string
	LastSeq           int64
	ExitCode          *int
	CreatedAt         int64
	UpdatedAt         int64
	// Unrecorded marks a session made for a conversation id agentgate had
	// not recorded (one started outside it), whose id it took: until a
	// CLI of the session prints its id (ProviderSessionID), its runs
	// resume that id as unrecorded (Job.ResumeUnrecorded), so that a
	// worker whose users share an account never resumes it.
	Unrecorded bool
}

// Running reports whether the session has a run in progress.
func (s Session) Running() bool { return s.State == StateRunning }

// User is an authenticated caller.
type User struct {
	Name  string
	Admin bool
	// Expires is when the credential the user came with ends (zero: never,
	// as a platform proxy's header): a socket it opened closes then.
	Expires time.Time
}

// CanSee reports whether u may see or touch a session owned by owner.
func (u User) CanSee(owner string) bool { return u.Admin || (owner != "" && owner == u.Name) }

// sessionIDPattern is the reference's character set for provider session
// ids, narrowed to start with a letter or digit: an id reaches a CLI's
// argument list (`--resume=ID`) and a terminal's command line, and one
// starting with '-' (`--continue`, `-c`) would be read as a flag by a CLI
// that takes it as an argument of its own. Every provider's ids (UUIDs) and
// the gateway's own start with a hex digit. (Checked by hand rather than
// by a regular expression: compiling those at start-up was a tenth of a
// gateway's package initialization.)

// MaxSessionIDLen bounds session ids so that a key or a log line cannot be
// inflated by a client.
const MaxSessionIDLen = 128

// ValidSessionID reports whether id may name a session (also a shell or a
// permission request): letters, digits and "_.-:", a letter or digit
// first, and a bounded length. Such an id can be neither read as a flag nor
// break out of double quotes in a shell.
func ValidSessionID(id string) bool {
	return len(id) <= MaxSessionIDLen && id != "" && isAlnum(id[0]) && madeOf(id, "_.-:")
}

// maxUserName bounds a user name.
const maxUserName = 64

// ValidUserName reports whether name may be a user name: letters, digits
// and "_.@-", at most 64, and not "." or "..". User names appear inside
// Redis keys, so braces, colons and spaces are not allowed, and in paths
// (a workspace's {user}, a user's home), where the two dot names would
// name the folder itself or its parent.
func ValidUserName(name string) bool {
	return name != "" && len(name) <= maxUserName && madeOf(name, "_.@-") && name != "." && name != ".."
}

// madeOf reports whether s holds only ASCII letters, digits and the bytes
// of extra.
func madeOf(s, extra string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; !isAlnum(c) && strings.IndexByte(extra, c) < 0 {
			return false
		}
	}
	return true
}

func isAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// NewID returns a random UUID (version 4) string.
func NewID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails on supported platforms
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	var out [36]byte
	hex.Encode(out[0:8], b[0:4])
	out[8] = '-'
	hex.Encode(out[9:13], b[4:6])
	out[13] = '-'
	hex.Encode(out[14:18], b[6:8])
	out[18] = '-'
	hex.Encode(out[19:23], b[8:10])
	out[23] = '-'
	hex.Encode(out[24:], b[10:])
	return string(out[:])
}
