package app

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseShellMessage(t *testing.T) {
	cases := []struct {
		in      string
		wantErr string
		check   func(t *testing.T, m ShellMessage)
	}{
		{in: ``, wantErr: ErrTextInvalidPayload},
		{in: `[1]`, wantErr: ErrTextInvalidPayload},
		{in: `{"type":"init"} x`, wantErr: ErrTextInvalidPayload},
		{in: `{}`, wantErr: ErrTextTypeRequired},
		{in: `{"type":7}`, wantErr: ErrTextTypeRequired},
		{in: `{"type":"nope"}`, wantErr: "Unknown message type: nope"},
		{in: `{"type":"init"}`, check: func(t *testing.T, m ShellMessage) {
			require.Equal(t, "claude", m.Provider)
			require.Equal(t, 80, m.Cols)
			require.Equal(t, 24, m.Rows)
			require.False(t, m.SizeGiven, "a new terminal's default size, not the client's")
			require.Nil(t, m.LastSeq)
		}},
		{in: `{"type":"init","cols":120,"rows":0}`, check: func(t *testing.T, m ShellMessage) { require.False(t, m.SizeGiven) }},
		{in: `{"type":"init","cols":120.0,"rows":40,"lastSeq":7,"shellId":"tab-1"}`, check: func(t *testing.T, m ShellMessage) {
			require.Equal(t, 120, m.Cols)
			require.Equal(t, 40, m.Rows)
			require.True(t, m.SizeGiven)
			require.Equal(t, int64(7), *m.LastSeq)
		}},
		{in: `{"type":"init","cols":80.5}`, wantErr: "Invalid cols: must be a whole number, 1 or more"},
		{in: `{"type":"init","rows":-1}`, wantErr: "Invalid rows: must be a whole number, 1 or more"},
		{in: `{"type":"init","cols":-3}`, wantErr: "Invalid cols: must be a whole number, 1 or more"},
		{in: `{"type":"init","cols":5000,"rows":501}`, check: func(t *testing.T, m ShellMessage) {
			require.Equal(t, MaxShellCols, m.Cols, "a size past the largest is the largest")
			require.Equal(t, MaxShellRows, m.Rows)
		}},
		{in: `{"type":"init","cols":1e300}`, check: func(t *testing.T, m ShellMessage) { require.Equal(t, MaxShellCols, m.Cols) }},
		{in: `{"type":"init","cols":"80"}`, wantErr: "Invalid init message: cols must be a number"},
		{in: `{"type":"init","sessionId":"a b"}`, wantErr: ShellErrInvalidSessionID},
		{in: `{"type":"init","sessionId":"$(rm)"}`, wantErr: ShellErrInvalidSessionID},
		{in: `{"type":"init","sessionId":"--continue","hasSession":true}`, wantErr: ShellErrInvalidSessionID},
		{in: `{"type":"init","sessionId":"-c","hasSession":true}`, wantErr: ShellErrInvalidSessionID},
		{in: `{"type":"init","sessionId":"\u2014continue","hasSession":true}`, wantErr: ShellErrInvalidSessionID},
		{in: `{"type":"init","sessionId":"a\"b","hasSession":true}`, wantErr: ShellErrInvalidSessionID},
		{in: `{"type":"init","shellId":"x/y"}`, wantErr: ShellErrInvalidShellID},
		{in: `{"type":"init","shellId":"--x"}`, wantErr: ShellErrInvalidShellID},
		{in: `{"type":"init","provider":"bash"}`, wantErr: "Unknown provider: bash"},
		{in: `{"type":"init","lastSeq":-1}`, wantErr: "Invalid init message: lastSeq must not be negative"},
		{in: `{"type":"init","lastSeq":1.5}`, wantErr: "Invalid init message: lastSeq must be a whole number"},
		{in: `{"type":"init","lastSeq":"7"}`, wantErr: "Invalid init message: lastSeq must be a whole number"},
		{in: `{"type":"init","isPlainShell":"yes"}`, wantErr: "Invalid init message: isPlainShell must be true or false"},
		{in: `{"type":"init","initialCommand":"` + strings.Repeat("x", MaxShellCommand+1) + `"}`, wantErr: "initialCommand too long: at most 4096 bytes"},
		{in: `{"type":"input"}`, wantErr: "Invalid input message: data is required"},
		{in: `{"type":"input","data":5}`, wantErr: "Invalid input message: data must be a string"},
		{in: `{"type":"input","data":"` + strings.Repeat("y", MaxShellInput+1) + `"}`, check: func(t *testing.T, m ShellMessage) {
			require.Len(t, m.Data, MaxShellInput+1, "a large paste is taken whole (the gateway sends it in pieces)")
		}},
		{in: `{"type":"input","data":"\u0003"}`, check: func(t *testing.T, m ShellMessage) { require.Equal(t, "\x03", m.Data) }},
		{in: `{"type":"resize","cols":100}`, wantErr: "Invalid resize message: rows is required"},
		{in: `{"type":"resize","cols":4000,"rows":30}`, check: func(t *testing.T, m ShellMessage) { require.Equal(t, MaxShellCols, m.Cols) }},
		{in: `{"type":"resize","cols":100,"rows":30}`, check: func(t *testing.T, m ShellMessage) {
			require.Equal(t, 100, m.Cols)
			require.Equal(t, 30, m.Rows)
		}},
	}
	for _, tc := range cases {
		t.Run(Clip(tc.in, 60), func(t *testing.T) {
			m, err := ParseShellMessage([]byte(tc.in))
			if tc.wantErr != "" {
				require.EqualError(t, err, tc.wantErr)
				var w WireError
				require.ErrorAs(t, err, &w)
				return
			}
			require.NoError(t, err)
			tc.check(t, m)
		})
	}
}

// FuzzParseShellMessage: no frame makes the parser panic, and an accepted
// frame always has a known type and sizes within bounds.
func FuzzParseShellMessage(f *testing.F) {
	for _, s := range []string{
		`{"type":"init","projectPath":"/p","sessionId":"abc","provider":"codex","hasSession":true,"cols":80,"rows":24}`,
		`{"type":"input","data":"ls\r"}`, `{"type":"resize","cols":1,"rows":1}`, `{"type":"init","lastSeq":3}`,
		`{"type":"init","cols":1e300}`, `{"type":"resize","cols":-0,"rows":NaN}`, `null`, `{"type":""}`, "\xff",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		m, err := ParseShellMessage(data)
		if err != nil {
			var w WireError
			require.ErrorAs(t, err, &w)
			return
		}
		require.Contains(t, []string{"init", "input", "resize"}, m.Type)
		require.True(t, m.Cols >= 1 && m.Cols <= MaxShellCols, "cols %d", m.Cols)
		require.True(t, m.Rows >= 1 && m.Rows <= MaxShellRows, "rows %d", m.Rows)
		if m.Type == "init" {
			require.True(t, m.SessionID == "" || ValidSessionID(m.SessionID))
			require.True(t, validShellProvider(Provider(m.Provider)))
		}
	})
}

func TestShellKey(t *testing.T) {
	base := ShellMessage{Type: "init", Provider: "claude", SessionID: "s1"}
	k := ShellKey("alice", "/w/p", base)
	require.Regexp(t, `^[0-9a-f]{32}$`, k)
	require.Equal(t, k, ShellKey("alice", "/w/p", base), "stable")
	with := func(f func(m *ShellMessage)) ShellMessage { m := base; f(&m); return m }
	others := []string{
		ShellKey("bob", "/w/p", base),
		ShellKey("alice", "/w/q", base),
		ShellKey("alice", "/w/p", with(func(m *ShellMessage) { m.SessionID = "s2" })),
		ShellKey("alice", "/w/p", with(func(m *ShellMessage) { m.Provider = "codex" })),
		ShellKey("alice", "/w/p", with(func(m *ShellMessage) { m.SessionID, m.ShellID = "", "tab1" })),
		ShellKey("alice", "/w/p", with(func(m *ShellMessage) { m.SessionID, m.ShellID = "", "tab2" })),
		ShellKey("alice", "/w/p", with(func(m *ShellMessage) { m.SessionID = ""; m.IsPlainShell = true; m.InitialCommand = "ls" })),
		ShellKey("alice", "/w/p", with(func(m *ShellMessage) { m.SessionID = ""; m.IsPlainShell = true; m.InitialCommand = "top" })),
		// Parts cannot be shifted into one another.
		ShellKey("alice/w", "/p", base),
	}
	seen := map[string]bool{k: true}
	for i, o := range others {
		require.False(t, seen[o], "key %d collides", i)
		seen[o] = true
	}
}

// TestShellKeyFollowsTheCommand: inits that run different commands never
// share a terminal. Claude Code UI's server keys a terminal by path,
// session id and, for a plain shell only, its initialCommand; but a
// provider init runs its initialCommand too (claude with hasSession and no
// sessionId, opencode, gemini), and whether it resumes is not in the id:
// each pair here shared a key, and the second init reattached to the
// first's program.
func TestShellKeyFollowsTheCommand(t *testing.T) {
	pairs := []struct {
		name string
		a, b ShellMessage
	}{
		{"claude with a session flag but no id, htop and vim",
			ShellMessage{Provider: "claude", HasSession: true, InitialCommand: "htop"},
			ShellMessage{Provider: "claude", HasSession: true, InitialCommand: "vim"}},
		{"claude with no command and with one",
			ShellMessage{Provider: "claude", HasSession: true},
			ShellMessage{Provider: "claude", HasSession: true, InitialCommand: "htop"}},
		{"opencode with two commands",
			ShellMessage{Provider: "opencode", HasSession: true, InitialCommand: "opencode -m a"},
			ShellMessage{Provider: "opencode", HasSession: true, InitialCommand: "opencode -m b"}},
		{"gemini resumed with two commands",
			ShellMessage{Provider: "gemini", HasSession: true, SessionID: "g1", InitialCommand: "gemini -m a"},
			ShellMessage{Provider: "gemini", HasSession: true, SessionID: "g1", InitialCommand: "gemini -m b"}},
		{"a session resumed and the same id not resumed",
			ShellMessage{Provider: "claude", HasSession: true, SessionID: "s1"},
			ShellMessage{Provider: "claude", SessionID: "s1"}},
		{"a session resumed and a tab's shellId of the same text",
			ShellMessage{Provider: "claude", HasSession: true, SessionID: "tab1"},
			ShellMessage{Provider: "claude", ShellID: "tab1"}},
	}
	for _, tc := range pairs {
		require.NotEqual(t, tc.a.Spec("alice", "/w").Command(nil), tc.b.Spec("alice", "/w").Command(nil), tc.name)
		require.NotEqual(t, ShellKey("alice", "/w", tc.a), ShellKey("alice", "/w", tc.b), tc.name)
	}
}

// FuzzShellKey: ShellKey(a) == ShellKey(b) implies that a and b run the
// same command, whatever the provider binaries. The two inits are built
// from a shared pool of values (bits choose which), so that equal keys are
// common and the implication is tested, not only its premise's absence.
func FuzzShellKey(f *testing.F) {
	f.Add(uint16(0x0000), uint16(0x0001), "s1", "tab1", "htop")
	f.Add(uint16(0x0132), uint16(0x0133), "htop", "vim", "")
	f.Add(uint16(0x0f10), uint16(0x0f20), "default", "g1", "gemini -m pro")
	f.Add(uint16(0xffff), uint16(0x7fff), "", "", "claude")
	f.Fuzz(func(t *testing.T, bitsA, bitsB uint16, x, y, z string) {
		pool := []string{"", x, y, z}
		providers := []string{"claude", "cursor", "codex", "gemini", "opencode", "plain-shell", "", "claude"}
		msg := func(bits uint16) ShellMessage {
			return ShellMessage{
				Type:           "init",
				Provider:       providers[bits&7],
				HasSession:     bits&8 != 0,
				IsPlainShell:   bits&16 != 0,
				SessionID:      pool[bits>>5&3],
				ShellID:        pool[bits>>7&3],
				InitialCommand: pool[bits>>9&3],
			}
		}
		a, b := msg(bitsA), msg(bitsB)
		if ShellKey("alice", "/w", a) != ShellKey("alice", "/w", b) {
			return
		}
		for _, bins := range []map[Provider]string{nil, {Claude: "/opt/claude", Gemini: "/opt/gemini", OpenCode: "oc", Cursor: "ca", Codex: "cx"}} {
			ca, cb := a.Spec("alice", "/w").Command(bins), b.Spec("alice", "/w").Command(bins)
			if ca != cb {
				t.Fatalf("one key, two commands: %q (%+v) and %q (%+v)", ca, a, cb, b)
			}
		}
	})
}

func TestShellCommand(t *testing.T) {
	bins := map[Provider]string{Claude: "/opt/my bin/claude"}
	cases := []struct {
		spec ShellSpec
		want string
	}{
		{ShellSpec{Provider: Claude}, `'/opt/my bin/claude'`},
		{ShellSpec{Provider: Claude, HasSession: true, SessionID: "abc-1"}, `'/opt/my bin/claude' --resume="abc-1" || '/opt/my bin/claude'`},
		{ShellSpec{Provider: Claude, InitialCommand: "claude setup-token"}, `claude setup-token`},
		{ShellSpec{Provider: Cursor, HasSession: true, SessionID: "c1"}, `cursor-agent --resume="c1"`},
		{ShellSpec{Provider: Cursor}, `cursor-agent`},
		{ShellSpec{Provider: Codex, HasSession: true, SessionID: "x"}, `codex resume -- "x" || codex`},
		{ShellSpec{Provider: Gemini, HasSession: true, SessionID: "g"}, `gemini --resume="g"`},
		{ShellSpec{Provider: Gemini, HasSession: true, SessionID: "g", InitialCommand: "gemini -m pro"}, `gemini -m pro --resume="g"`},
		{ShellSpec{Provider: OpenCode}, `opencode`},
		{ShellSpec{Provider: OpenCode, HasSession: true, SessionID: "ses_1"}, `opencode --session="ses_1"`},
		{ShellSpec{Provider: PlainShell, Plain: true, InitialCommand: "npm test"}, `npm test`},
		{ShellSpec{Provider: PlainShell, Plain: true}, ``},
	}
	for _, tc := range cases {
		require.Equal(t, tc.want, tc.spec.Command(bins))
	}
}

func TestShellPlainAndLoginReset(t *testing.T) {
	require.True(t, ShellMessage{IsPlainShell: true}.Plain())
	require.True(t, ShellMessage{InitialCommand: "ls"}.Plain())
	require.False(t, ShellMessage{InitialCommand: "ls", HasSession: true, Provider: "claude"}.Plain())
	require.True(t, ShellMessage{Provider: "plain-shell"}.Plain())
	for _, c := range []string{"claude setup-token", "cursor-agent login", "gemini auth login"} {
		require.True(t, ShellMessage{InitialCommand: c}.LoginReset(), c)
	}
	require.True(t, ShellMessage{ForceRestart: true}.LoginReset())
	require.False(t, ShellMessage{InitialCommand: "claude"}.LoginReset())
	require.Equal(t, "Resuming Codex session x in: /p", ShellSpec{Provider: Codex, HasSession: true, SessionID: "x", ProjectPath: "/p"}.Welcome())
	require.Equal(t, "Starting new Claude session in: /p", ShellSpec{Provider: Claude, ProjectPath: "/p"}.Welcome())
	require.Equal(t, "Starting terminal in: /p", ShellSpec{Plain: true, ProjectPath: "/p"}.Welcome())
}

func TestParseShellAck(t *testing.T) {
	m, err := ParseShellMessage([]byte(`{"type":"ack","seq":42}`))
	if err != nil || m.Type != "ack" || m.Seq == nil || *m.Seq != 42 {
		t.Fatalf("ack: %+v, %v", m, err)
	}
	for _, bad := range []string{`{"type":"ack"}`, `{"type":"ack","seq":-1}`, `{"type":"ack","seq":"1"}`, `{"type":"ack","seq":1.5}`} {
		if _, err := ParseShellMessage([]byte(bad)); err == nil || err.Error() != "Invalid ack message: seq must be a whole number, 0 or more" {
			t.Errorf("%s: %v", bad, err)
		}
	}
}

func TestHasSignalKey(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want bool
	}{
		{"", false},
		{"ls -l\r", false},
		{"\t\x1b[A\x7f", false}, // tab, an arrow key, backspace
		{"\x03", true},
		{"sleep 9\r\x03", true},
		{"\x1c", true},
		{"\x1a", true},
		{"\x04", false}, // ^D is end of file, not a signal
		{"é\x03", true},
	} {
		require.Equal(t, tc.want, HasSignalKey(tc.in), "%q", tc.in)
		require.Equal(t, tc.want, HasSignalKey([]byte(tc.in)), "%q as bytes", tc.in)
	}
}
