package app

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestParseClientMessage(t *testing.T) {
	cases := []struct {
		in      string
		wantErr string
		check   func(t *testing.T, m ClientMessage)
	}{
		{in: ``, wantErr: ErrTextInvalidPayload},
		{in: `   `, wantErr: ErrTextInvalidPayload},
		{in: `null`, wantErr: ErrTextInvalidPayload},
		{in: `[{"type":"x"}]`, wantErr: ErrTextInvalidPayload},
		{in: `{"type":"x"`, wantErr: ErrTextInvalidPayload},
		{in: `{"type":"x"} trailing`, wantErr: ErrTextInvalidPayload},
		{in: `{}`, wantErr: ErrTextTypeRequired},
		{in: `{"type":null}`, wantErr: ErrTextTypeRequired},
		{in: `{"type":["a"]}`, wantErr: ErrTextTypeRequired},
		{in: `{"type":"claude-command","options":"x"}`, wantErr: "Invalid field options: expected an object"},
		{in: `{"type":"subscribe","sessions":{}}`, wantErr: "Invalid field sessions: expected an array"},
		{in: `{"type":"x","requestId":true}`, wantErr: "Invalid field requestId: expected a string or a number"},
		{in: `{"type":"x","requestId":"` + strings.Repeat("r", 300) + `"}`, wantErr: "Invalid field requestId: expected a string or a number"},
		{in: `{"type":"claude-command","command":"hi","requestId":12,"options":{"projectPath":"/p","resume":true,"toolsSettings":{"allowedTools":["Read"]}},"unknown":1}`,
			check: func(t *testing.T, m ClientMessage) {
				require.Equal(t, "claude-command", m.Type)
				require.Equal(t, "hi", m.Command)
				require.Equal(t, "12", string(m.RequestID))
				require.Equal(t, "/p", m.Options.ProjectPath)
				require.True(t, m.Options.Resume)
				require.Equal(t, []string{"Read"}, m.Options.ToolsSettings.AllowedTools)
			}},
		{in: `{"type":"check-session-status","sessionId":"s","lastSeq":0}`,
			check: func(t *testing.T, m ClientMessage) {
				require.NotNil(t, m.LastSeq)
				require.Equal(t, int64(0), *m.LastSeq)
			}},
		{in: `{"type":"check-session-status","sessionId":"s"}`,
			check: func(t *testing.T, m ClientMessage) { require.Nil(t, m.LastSeq) }},
	}
	for _, tc := range cases {
		m, err := ParseClientMessage([]byte(tc.in))
		if tc.wantErr != "" {
			require.EqualError(t, err, tc.wantErr, tc.in)
			var w WireError
			require.True(t, errors.As(err, &w))
			continue
		}
		require.NoError(t, err, tc.in)
		tc.check(t, *m)
	}
}

func FuzzParseClientMessage(f *testing.F) {
	for _, s := range []string{`{"type":"claude-command","command":"x","options":{"images":[{"data":"d"}]}}`,
		`{"type":"subscribe","sessions":[{"sessionId":"a","lastSeq":3}]}`, `[]`, `{"type":1}`, "\x00"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseClientMessage(data)
		if err == nil && m.Type == "" {
			t.Fatal("a message without type was accepted")
		}
		if err != nil && err.Error() == "" {
			t.Fatal("an empty error text")
		}
	})
}

func TestEventBody(t *testing.T) {
	ev := ToolUse("toolu_1", "Bash", map[string]any{"command": "ls </dev/null"})
	ev.SessionID, ev.Provider = "s-1", Claude
	ev.Timestamp = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	body, err := ev.Body()
	require.NoError(t, err)
	require.Regexp(t, `^\{"id":"tool_use_[0-9a-f-]{36}","sessionId":"s-1","timestamp":"2026-01-02T03:04:05Z","provider":"claude","kind":"tool_use",`, string(body))
	var m map[string]any
	require.NoError(t, json.Unmarshal(body, &m))
	require.Equal(t, "ls </dev/null", m["toolInput"].(map[string]any)["command"])

	for _, reserved := range []string{"seq", "runId", "kind", "type", "id"} {
		bad := NewEvent(KindText, map[string]any{reserved: 1})
		_, err := bad.Body()
		require.Error(t, err, reserved)
	}
	weird := Text("assistant", "quote \" backslash \\ newline \n unicode é \u2028")
	weird.SessionID = "id with \"quote\""
	body, err = weird.Body()
	require.NoError(t, err)
	require.True(t, json.Valid(body))
	require.NoError(t, json.Unmarshal(body, &m))
	require.Equal(t, "id with \"quote\"", m["sessionId"])

	// Markup is written as is (json.Marshal wrote each <, > and & as six
	// bytes), and an event whose encoding passes MaxEventBytes is refused.
	body, err = Text("assistant", strings.Repeat("<&>", 1<<20)).Body()
	require.NoError(t, err)
	require.Less(t, len(body), 3<<20+512)
	_, err = Text("assistant", strings.Repeat("\x01", 3<<20)).Body()
	require.ErrorIs(t, err, ErrEventTooLarge)
}

func TestCompleteEvent(t *testing.T) {
	for _, tc := range []struct {
		o       Outcome
		success bool
		state   State
	}{
		{Outcome{ExitCode: 0}, true, StateCompleted},
		{Outcome{ExitCode: 2}, false, StateFailed},
		{Outcome{Aborted: true}, false, StateAborted},
		{Outcome{ExitCode: 1, Aborted: true}, false, StateAborted},
	} {
		require.Equal(t, tc.success, tc.o.Success())
		require.Equal(t, tc.state, tc.o.State())
		ev := CompleteEvent("s", tc.o)
		require.Equal(t, tc.success, ev.Fields["success"])
		require.Equal(t, tc.o.ExitCode, ev.Fields["exitCode"])
		require.Equal(t, "s", ev.Fields["actualSessionId"])
	}
}

func TestStoredOnlySeq(t *testing.T) {
	cases := map[string]int64{
		`{"seq":7}`:                    7,
		`{"seq":1234567890123}`:        1234567890123,
		`{"seq":0}`:                    -1,
		`{"seq":-1}`:                   -1,
		`{"seq":}`:                     -1,
		`{"seq":7,"runId":"x"}`:        -1,
		`{"seq":12345678901234567890}`: -1,
		`{"seq":7`:                     -1,
		``:                             -1,
	}
	for in, want := range cases {
		got, ok := StoredOnlySeq([]byte(in))
		if want < 0 {
			require.False(t, ok, in)
			continue
		}
		require.True(t, ok, in)
		require.Equal(t, want, got, in)
	}
}

func TestFrameSeq(t *testing.T) {
	cases := map[string]int64{
		`{"seq":1,"runId":"x"}`:             1,
		`{"seq":1234567890123,"runId":"x"}`: 1234567890123,
		`{"seq":0,"x":1}`:                   -1,
		`{"seq":-3,"x":1}`:                  -1,
		`{"seq":1e3,"x":1}`:                 -1,
		`{"seq":12`:                         -1,
		`{"kind":"text","seq":1}`:           -1,
		``:                                  -1,
	}
	for in, want := range cases {
		got, ok := FrameSeq([]byte(in))
		if want < 0 {
			require.False(t, ok, in)
			continue
		}
		require.True(t, ok, in)
		require.Equal(t, want, got, in)
	}
}

// FuzzValidSessionID: an id that passes can never be read as a flag, nor
// leave the double quotes it is typed in by a terminal, nor inflate a key.
func FuzzValidSessionID(f *testing.F) {
	for _, s := range []string{"6f1c0b4e-1b2a-4c3d-9e8f-001122334455", "--continue", "-c", " -x", "\u2014c", "a-", "a\"b"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		if !ValidSessionID(id) {
			return
		}
		if id == "" || len(id) > MaxSessionIDLen {
			t.Fatalf("length %d accepted", len(id))
		}
		if c := id[0]; !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9') {
			t.Fatalf("%q accepted: it does not start with a letter or digit", id)
		}
		if strings.ContainsAny(id, "\"$`\\!' \t\n{}/") {
			t.Fatalf("%q accepted: a shell or a key would read it as more than an id", id)
		}
		for _, r := range id {
			if r > 0x7f {
				t.Fatalf("%q accepted: not ASCII", id)
			}
		}
	})
}

func FuzzFrameSeq(f *testing.F) {
	f.Add([]byte(`{"seq":42,"runId":"1"}`))
	f.Fuzz(func(t *testing.T, b []byte) {
		if n, ok := FrameSeq(b); ok && n <= 0 {
			t.Fatalf("seq %d accepted", n)
		}
	})
}

func TestValidNames(t *testing.T) {
	for id, ok := range map[string]bool{
		"6f1c0b4e-1b2a-4c3d-9e8f-001122334455": true, "a.b_c-d:e": true, strings.Repeat("a", 128): true,
		// The providers' ids: Claude and Gemini UUIDs, a Codex thread (UUIDv7),
		// a Cursor chat, and a Claude Code UI shell tab.
		"3300763d-ebec-4148-9370-44f315111828": true, "01a20141-0000-7000-8000-000000000000": true,
		"tab-1": true, "0": true,
		"": false, "a b": false, "a/b": false, "{x}": false, "../x": false, strings.Repeat("a", 129): false,
		// Ids a CLI would read as a flag, whatever follows.
		"--continue": false, "-c": false, "--version": false, "--yolo": false, "--last": false,
		"-": false, "--": false, "--resume=x": false,
		// Leading blanks, other first characters, and dashes that are not
		// ASCII (no CLI takes them for a flag; refused by the character set).
		" -x": false, "\t--x": false, "\n-x": false, "_x": false, ".x": false, ":x": false, "..": false,
		"\u2014continue": false, "\u2212c": false, "\u2010x": false, "a\u2014b": false,
		// Quotes and expansions that would break out of a terminal's "ID".
		`a"b`: false, "a$b": false, "a`b`": false, `a\b`: false, "a!b": false,
	} {
		require.Equal(t, ok, ValidSessionID(id), "%q", id)
	}
	for name, ok := range map[string]bool{"alice": true, "a.b@c-d_e": true, "...": true, "": false, "a:b": false, "{a}": false, "a b": false, ".": false, "..": false, "a/b": false} {
		require.Equal(t, ok, ValidUserName(name), name)
	}
	require.Regexp(t, regexp.MustCompile(`^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$`), NewID())
	require.NotEqual(t, NewID(), NewID())
}

func TestWorkspacesResolve(t *testing.T) {
	root := t.TempDir()
	other := t.TempDir()
	require.NoError(t, os.Mkdir(filepath.Join(root, "proj"), 0o755))
	require.NoError(t, os.Symlink(other, filepath.Join(root, "out")))
	require.NoError(t, os.Symlink(filepath.Join(root, "proj"), filepath.Join(other, "in")))
	w := ParseWorkspaces(" :" + root + "::")
	require.Len(t, w.Roots, 1)
	realRoot, _ := filepath.EvalSymlinks(root)

	cases := []struct {
		path string
		want string
	}{
		{root, realRoot},
		{filepath.Join(root, "proj"), filepath.Join(realRoot, "proj")},
		{filepath.Join(root, "proj", "..", "proj"), filepath.Join(realRoot, "proj")},
		{filepath.Join(other, "in"), ""}, // outside as written, though it leads inside
		{filepath.Join(root, "out"), ""},
		{filepath.Join(root, ".."), ""},
		{root + "x", ""},
		{"relative", ""},
		{"", ""},
		{filepath.Join(root, "missing"), ""},
		{root + "/\x00", ""},
	}
	for _, tc := range cases {
		got, err := w.Resolve(tc.path, testLinks)
		if tc.want == "" {
			require.ErrorIs(t, err, ErrInvalidPath, tc.path)
			continue
		}
		require.NoError(t, err, tc.path)
		require.Equal(t, tc.want, got)
	}
}

// The regular expressions the name checks replaced (compiling them was a
// tenth of a gateway's start-up): the checks must accept exactly what they
// did.
var (
	oldSessionID  = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.\-:]*$`)
	oldUserName   = regexp.MustCompile(`^[A-Za-z0-9_.@\-]{1,64}$`)
	oldPluginName = regexp.MustCompile(`^[A-Za-z0-9_-]+$`)
)

func FuzzNameChecks(f *testing.F) {
	for _, s := range []string{"", "a", "-a", "a-b", "abc:def.1_2", "ü", "a b", "a\n", "{x}", "a@b", strings.Repeat("a", 64), strings.Repeat("a", 65), strings.Repeat("b", 129)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		if got, want := ValidSessionID(s), len(s) <= MaxSessionIDLen && oldSessionID.MatchString(s); got != want {
			t.Fatalf("ValidSessionID(%q) = %v, the expression says %v", s, got, want)
		}
		if got, want := ValidUserName(s), oldUserName.MatchString(s) && s != "." && s != ".."; got != want {
			t.Fatalf("ValidUserName(%q) = %v, the expression says %v", s, got, want)
		}
		if got, want := ValidPluginName(s), len(s) <= maxPluginName && oldPluginName.MatchString(s); got != want {
			t.Fatalf("ValidPluginName(%q) = %v, the expression says %v", s, got, want)
		}
	})
}
