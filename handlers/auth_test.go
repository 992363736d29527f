package handlers

import (
	"context"
	"crypto/tls"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store/storetest"
)

func TestOriginPolicy(t *testing.T) {
	cases := []struct {
		name    string
		allowed []string
		public  []string
		host    string
		origin  string
		proto   string // X-Forwarded-Proto
		tls     bool
		want    bool
	}{
		{name: "no origin (a CLI)", host: "rebind.evil.example", want: true},
		{name: "loopback address", host: "127.0.0.1:8080", origin: "http://127.0.0.1:8080", want: true},
		{name: "localhost", host: "localhost:8080", origin: "http://localhost:8080", want: true},
		{name: "IPv6 loopback", host: "[::1]:8080", origin: "http://[::1]:8080", want: true},
		{name: "a LAN address", host: "192.168.1.5:8080", origin: "http://192.168.1.5:8080", want: true},
		{name: "case and default port", host: "LOCALHOST", origin: "HTTP://localhost:80", want: true},
		{name: "DNS rebinding", host: "rebind.evil.example:8080", origin: "http://rebind.evil.example:8080", want: false},
		{name: "DNS rebinding on the default port", host: "rebind.evil.example", origin: "http://rebind.evil.example", want: false},
		{name: "another origin", host: "127.0.0.1:8080", origin: "http://evil.example", want: false},
		{name: "another port", host: "127.0.0.1:8080", origin: "http://127.0.0.1:9090", want: false},
		{name: "another scheme", host: "127.0.0.1:8080", origin: "https://127.0.0.1:8080", want: false},
		{name: "null origin", host: "127.0.0.1:8080", origin: "null", want: false},
		{name: "a public host", public: []string{"gw.example.com"}, host: "gw.example.com", origin: "http://gw.example.com", want: true},
		{name: "a public host via a TLS proxy", public: []string{"gw.example.com"}, host: "gw.example.com", origin: "https://gw.example.com", proto: "https", want: true},
		{name: "a public host on TLS", public: []string{"gw.example.com"}, host: "gw.example.com", origin: "https://gw.example.com", tls: true, want: true},
		{name: "https origin, plain request", public: []string{"gw.example.com"}, host: "gw.example.com", origin: "https://gw.example.com", want: false},
		{name: "http origin, TLS proxy", public: []string{"gw.example.com"}, host: "gw.example.com", origin: "http://gw.example.com", proto: "https", want: false},
		{name: "rebinding with public hosts", public: []string{"gw.example.com"}, host: "rebind.evil.example", origin: "http://rebind.evil.example", want: false},
		{name: "listed origin", allowed: []string{"https://app.example.com"}, host: "gw.internal:8080", origin: "https://app.example.com", want: true},
		{name: "listed origin, written with its port", allowed: []string{"https://app.example.com:443/"}, host: "gw.internal:8080", origin: "https://app.example.com", want: true},
		{name: "listed origin, other scheme", allowed: []string{"https://app.example.com"}, host: "gw.internal:8080", origin: "http://app.example.com", want: false},
		{name: "listed origins replace same-origin", allowed: []string{"https://app.example.com"}, host: "127.0.0.1:8080", origin: "http://127.0.0.1:8080", want: false},
		{name: "listed origins, rebinding", allowed: []string{"https://app.example.com"}, host: "rebind.evil.example", origin: "http://rebind.evil.example", want: false},
		{name: "any origin", allowed: []string{"*"}, host: "rebind.evil.example", origin: "http://rebind.evil.example", want: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p, err := newOriginPolicy(tc.allowed, tc.public)
			require.NoError(t, err)
			r := httptest.NewRequest(http.MethodGet, "/ws", nil)
			r.Host = tc.host
			if tc.origin != "" {
				r.Header.Set("Origin", tc.origin)
			}
			if tc.proto != "" {
				r.Header.Set("X-Forwarded-Proto", tc.proto)
			}
			if tc.tls {
				r.TLS = &tls.ConnectionState{}
			}
			require.Equal(t, tc.want, p.allows(r))
		})
	}

	for _, bad := range [][2][]string{
		{{"app.example.com"}, nil},
		{{"ftp://app.example.com"}, nil},
		{{"https://app.example.com/path"}, nil},
		{nil, {"https://gw.example.com"}},
		{nil, {"gw.example.com:443"}},
	} {
		_, err := newOriginPolicy(bad[0], bad[1])
		require.Error(t, err, bad)
	}
}

// FuzzOriginPolicy: whatever Origin and Host a request carries,
// normalOrigin's answer is a lower-case http or https origin that it
// gives back unchanged (so two spellings of one origin compare equal),
// and the default policy lets a request with an Origin through only when
// that origin is the request's own scheme and host, on a loopback name, an
// IP address or a configured public host; with listed origins, only when
// it is one of them.
func FuzzOriginPolicy(f *testing.F) {
	f.Add("http://127.0.0.1:8080", "127.0.0.1:8080", false)
	f.Add("HTTP://localhost:80", "LOCALHOST", false)
	f.Add("http://rebind.evil.example", "rebind.evil.example", false)
	f.Add("https://gw.example.com", "gw.example.com", true)
	f.Add("http://[::1]:8080", "[::1]:8080", false)
	f.Add("null", "127.0.0.1", false)
	f.Add("http://user@127.0.0.1", "127.0.0.1", false)
	f.Add("http://127.0.0.1:8080/", "127.0.0.1:8080", false)
	f.Add("http://127.0.0.1:8080 ", "127.0.0.1:8080", false)
	f.Add("http://0x7f.1:8080", "0x7f.1:8080", false)
	f.Add("http://%6c%6fcalhost", "localhost", false)
	def, err := newOriginPolicy(nil, []string{"gw.example.com"})
	require.NoError(f, err)
	listed, err := newOriginPolicy([]string{"https://app.example.com"}, nil)
	require.NoError(f, err)
	f.Fuzz(func(t *testing.T, origin, host string, isTLS bool) {
		if o, ok := normalOrigin(origin); ok {
			again, ok := normalOrigin(o)
			require.True(t, ok, "%q normalised to %q, which is not an origin", origin, o)
			require.Equal(t, o, again, "normalOrigin(%q) is not stable", origin)
			require.Equal(t, strings.ToLower(o), o)
			require.True(t, strings.HasPrefix(o, "http://") || strings.HasPrefix(o, "https://"), o)
		}
		r := httptest.NewRequest(http.MethodGet, "/ws", nil)
		r.Host = host
		r.Header.Set("Origin", origin)
		if isTLS {
			r.TLS = &tls.ConnectionState{}
		}
		if origin == "" {
			require.True(t, def.allows(r), "no Origin: not a browser")
			return
		}
		if def.allows(r) {
			o, ok := normalOrigin(origin)
			require.True(t, ok, "%q let through", origin)
			scheme := "http"
			if isTLS {
				scheme = "https"
			}
			self, ok := normalOrigin(scheme + "://" + host)
			require.True(t, ok)
			require.Equal(t, self, o, "another origin (%q) let through for host %q", origin, host)
			u, err := url.Parse(o)
			require.NoError(t, err)
			h := u.Hostname()
			require.True(t, h == "localhost" || h == "gw.example.com" || net.ParseIP(h) != nil, "host %q is no loopback name, IP or public host", h)
		}
		if listed.allows(r) {
			o, _ := normalOrigin(origin)
			require.Equal(t, "https://app.example.com", o, "%q let through", origin)
		}
	})
}

// TestOriginCheckedOnEveryUpgrade: the rebinding request is refused before
// the upgrade on /ws, /shell and /plugin-ws; the gateway's own origin and
// no origin pass.
func TestOriginCheckedOnEveryUpgrade(t *testing.T) {
	g := startGateway(t, newStore(t, storetest.Mini))
	addr := strings.TrimPrefix(g.ts.URL, "http://")
	_, port, err := net.SplitHostPort(addr)
	require.NoError(t, err)
	tok := token(t, "alice", false)
	cases := []struct {
		name, host, origin string
		want               int
	}{
		{"no origin", "", "", http.StatusSwitchingProtocols},
		{"own origin", "", "http://" + addr, http.StatusSwitchingProtocols},
		{"rebinding", "rebind.evil.example:" + port, "http://rebind.evil.example:" + port, http.StatusForbidden},
	}
	for _, path := range []string{"/ws", "/shell", "/plugin-ws/demo"} {
		for _, tc := range cases {
			t.Run(path+" "+tc.name, func(t *testing.T) {
				h := http.Header{}
				if tc.host != "" {
					h.Set("Host", tc.host)
				}
				if tc.origin != "" {
					h.Set("Origin", tc.origin)
				}
				ws, resp, err := websocket.DefaultDialer.Dial("ws://"+addr+path+"?token="+tok, h)
				if ws != nil {
					ws.Close()
				}
				require.NotNil(t, resp, "dial: %v", err)
				require.Equal(t, tc.want, resp.StatusCode)
			})
		}
	}
}

func TestPlatformUserHeader(t *testing.T) {
	// httptest's requests come from 192.0.2.1; the gateway below is
	// dialed over loopback.
	trusted, err := ParseTrustedProxies("192.0.2.1, 127.0.0.0/8")
	require.NoError(t, err)
	a := &Auth{Mode: AuthPlatform, TrustedProxies: trusted}
	cases := []struct {
		name   string
		values []string
		want   string // the user, or the error
	}{
		{"one user", []string{"alice"}, "alice"},
		{"none", nil, errUnauthorized.Error()},
		{"empty", []string{""}, errUnauthorized.Error()},
		{"invalid name", []string{"a b"}, errUnauthorized.Error()},
		{"client's then proxy's", []string{"bob", "alice"}, errAmbiguousUser.Error()},
		{"twice the same", []string{"alice", "alice"}, errAmbiguousUser.Error()},
		{"one line, two names", []string{"bob, alice"}, errAmbiguousUser.Error()},
		{"one line, two names, no space", []string{"bob,alice"}, errAmbiguousUser.Error()},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			r := httptest.NewRequest(http.MethodGet, "/ws", nil)
			for _, v := range tc.values {
				r.Header.Add(DefaultUserHeader, v)
			}
			user, err := a.Authenticate(r)
			if err != nil {
				require.Equal(t, tc.want, err.Error())
				return
			}
			require.Equal(t, tc.want, user.Name)
		})
	}

	// Only a trusted proxy names the user: a request from anywhere else
	// that names one, as a user's own process on a worker could, is
	// refused; so is every request when no proxy is trusted.
	for _, tc := range []struct {
		name, peer string
		trusted    string
		ok         bool
	}{
		{"the proxy", "192.0.2.1:4000", "192.0.2.1", true},
		{"in a trusted network", "10.1.2.3:4000", "10.0.0.0/8", true},
		{"IPv4 as IPv6", "[::ffff:10.1.2.3]:4000", "10.0.0.0/8", true},
		{"IPv6", "[fd00::7]:4000", "fd00::/64, 10.0.0.0/8", true},
		{"another peer", "192.0.2.2:4000", "192.0.2.1", false},
		{"outside the network", "10.1.2.3:4000", "10.0.0.0/16", false},
		{"nobody trusted", "127.0.0.1:4000", "", false},
		{"no address", "", "0.0.0.0/0", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			proxies, err := ParseTrustedProxies(tc.trusted)
			require.NoError(t, err)
			r := httptest.NewRequest(http.MethodGet, "/ws", nil)
			r.RemoteAddr = tc.peer
			r.Header.Set(DefaultUserHeader, "bob")
			user, err := (&Auth{Mode: AuthPlatform, TrustedProxies: proxies}).Authenticate(r)
			if !tc.ok {
				require.ErrorIs(t, err, errUnauthorized)
				return
			}
			require.NoError(t, err)
			require.Equal(t, "bob", user.Name)
		})
	}
	for _, bad := range []string{"10.0.0.0/33", "example.com", "10.0.0.1:80"} {
		_, err := ParseTrustedProxies(bad)
		require.Error(t, err, bad)
	}

	// Over the wire: two header lines are refused before any upgrade, with
	// the reason; one passes.
	g := startGateway(t, newStore(t, storetest.Mini), func(c *Config) { c.Auth = a })
	for _, tc := range []struct {
		path   string
		values []string
		want   int
	}{
		{"/api/auth/user", []string{"bob", "alice"}, http.StatusUnauthorized},
		{"/ws", []string{"bob", "alice"}, http.StatusUnauthorized},
		{"/ws", []string{"alice"}, http.StatusSwitchingProtocols},
	} {
		h := http.Header{DefaultUserHeader: tc.values}
		if tc.path == "/api/auth/user" {
			req, err := http.NewRequest(http.MethodGet, g.ts.URL+tc.path, nil)
			require.NoError(t, err)
			req.Header = h
			resp, err := http.DefaultClient.Do(req)
			require.NoError(t, err)
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			require.Equal(t, tc.want, resp.StatusCode)
			require.Contains(t, string(body), "ambiguous user")
			continue
		}
		ws, resp, err := websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(g.ts.URL, "http")+tc.path, h)
		if ws != nil {
			ws.Close()
		}
		require.NotNil(t, resp, "dial: %v", err)
		require.Equal(t, tc.want, resp.StatusCode, tc.values)
		if tc.want == http.StatusUnauthorized {
			body, _ := io.ReadAll(resp.Body)
			require.Contains(t, string(body), "ambiguous user")
		}
	}
}

// TestRESTChangesRefuseOtherOrigins: a POST from another site's page (a
// form carries a platform proxy's cookie) is refused before anything is
// done; the gateway's own pages and clients that send no Origin pass.
func TestRESTChangesRefuseOtherOrigins(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g, _, _, id, _ := startRun(t, st)
	abort := func(origin string) int {
		req, err := http.NewRequest(http.MethodPost, g.ts.URL+"/api/sessions/"+id+"/abort", nil)
		require.NoError(t, err)
		req.Header.Set("Authorization", "Bearer "+token(t, "alice", false))
		if origin != "" {
			req.Header.Set("Origin", origin)
		}
		resp, err := http.DefaultClient.Do(req)
		require.NoError(t, err)
		resp.Body.Close()
		return resp.StatusCode
	}
	require.Equal(t, http.StatusForbidden, abort("https://evil.example"))
	sess, err := st.Session(context.Background(), id)
	require.NoError(t, err)
	require.True(t, sess.Running(), "refused before the abort")
	require.Equal(t, http.StatusOK, abort(g.ts.URL), "the gateway's own page")
	require.Equal(t, http.StatusConflict, abort(""), "no Origin: not a browser")
}

// TestAuthFailureClosesTheConnection: a request without credentials gets
// its 401 and its connection closed, so that it holds no connection place.
func TestAuthFailureClosesTheConnection(t *testing.T) {
	g := startGateway(t, newStore(t, storetest.Mini))
	for _, path := range []string{"/api/sessions", "/ws", "/shell"} {
		resp, err := http.Get(g.ts.URL + path)
		require.NoError(t, err)
		resp.Body.Close()
		require.Equal(t, http.StatusUnauthorized, resp.StatusCode, path)
		require.True(t, resp.Close, "%s: the connection is closed after the 401", path)
	}
}

// TestSocketsCloseWhenTheirTokenExpires: a token is checked when a socket
// opens; /ws, /shell and /plugin-ws sockets it opened close with 4401 when
// it expires, so that a leaked token's reach ends with it (a plugin relay
// outlived its token before).
func TestSocketsCloseWhenTheirTokenExpires(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g := startGateway(t, st)
	addr, _ := echoPlugin(t)
	require.NoError(t, st.SetPlugin(context.Background(), "echo", addr))
	tok, err := IssueToken(testSecret, "alice", false, 4*time.Second) // exp is kept in whole seconds: 3 s at least
	require.NoError(t, err)
	long := g.dial("alice")
	paths := []string{"/ws", "/shell", "/plugin-ws/echo"}
	socks := make([]*websocket.Conn, len(paths))
	for i, path := range paths {
		socks[i], _, err = websocket.DefaultDialer.Dial("ws"+strings.TrimPrefix(g.ts.URL, "http")+path+"?token="+tok, nil)
		require.NoError(t, err, path)
		defer socks[i].Close()
	}
	for i, path := range paths {
		ws := socks[i]
		require.NoError(t, ws.SetReadDeadline(time.Now().Add(10*time.Second)))
		for {
			if _, _, err = ws.ReadMessage(); err != nil {
				break
			}
		}
		var ce *websocket.CloseError
		require.ErrorAs(t, err, &ce, path)
		require.Equal(t, 4401, ce.Code, path)
	}
	long.send(map[string]any{"type": "check-session-status", "sessionId": "nope"})
	require.Equal(t, "session-status", long.next()["type"], "a socket of a valid token stays")
}

// claudeCodeUIToken signs claims as Claude Code UI's login does
// (server/middleware/auth.js: `{userId, username}`, HS256, expiresIn 7d; the
// library adds iat), with the shared secret.
func claudeCodeUIToken(t *testing.T, claims jwt.MapClaims) string {
	t.Helper()
	now := time.Now().Unix()
	all := jwt.MapClaims{"iat": now, "exp": now + 7*24*3600}
	maps.Copy(all, claims)
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, all).SignedString(testSecret)
	require.NoError(t, err)
	return tok
}

// TestClaudeCodeUITokens: in a mixed deployment the frontend's token is
// signed by Claude Code UI's server and names its user in `username`, with
// no `sub`. It opens /ws and /shell as that user (it was refused with 401),
// never as an admin; `sub` wins when both are there; a user name agentgate
// would refuse as a `sub`, and a token without an expiry, are refused.
func TestClaudeCodeUITokens(t *testing.T) {
	st := newStore(t, storetest.Mini)
	g, _, _, id, _ := startRun(t, st)
	alice := claudeCodeUIToken(t, jwt.MapClaims{"userId": 1, "username": "alice"})

	// The socket is alice's: her running session is visible to it.
	c := g.dialToken(alice)
	c.send(map[string]any{"type": "check-session-status", "sessionId": id})
	status := c.next()
	require.Equal(t, "session-status", status["type"], "%v", status)
	require.Equal(t, "running", status["state"], "%v", status)

	// So is the terminal: alice's terminal is reattached, not another one
	// opened.
	init := map[string]any{"type": "init", "provider": "plain-shell", "isPlainShell": true, "shellId": "t1"}
	own, _, err := g.dialPath("/shell", "alice")
	require.NoError(t, err)
	require.NoError(t, own.WriteJSON(init))
	require.NoError(t, own.SetReadDeadline(time.Now().Add(10*time.Second)))
	var m map[string]any
	require.NoError(t, own.ReadJSON(&m))
	require.Contains(t, m["data"], "Starting terminal in:")
	shellURL := "ws" + strings.TrimPrefix(g.ts.URL, "http") + "/shell?token="
	shell, _, err := websocket.DefaultDialer.Dial(shellURL+alice, nil)
	require.NoError(t, err)
	defer shell.Close()
	require.NoError(t, shell.WriteJSON(init))
	require.NoError(t, shell.SetReadDeadline(time.Now().Add(10*time.Second)))
	require.NoError(t, shell.ReadJSON(&m))
	require.Contains(t, m["data"], "[Reconnected to existing session]")

	whoami := func(tok string) (int, map[string]any) {
		code, body := httpGet(t, g.ts.URL+"/api/auth/user", tok)
		user, _ := body["user"].(map[string]any)
		return code, user
	}
	code, user := whoami(claudeCodeUIToken(t, jwt.MapClaims{"userId": 1, "username": "alice", "admin": true}))
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, map[string]any{"username": "alice", "admin": false}, user, "admin only from a sub token")
	code, user = whoami(claudeCodeUIToken(t, jwt.MapClaims{"sub": "bob", "username": "alice"}))
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "bob", user["username"], "sub wins")
	code, user = whoami(claudeCodeUIToken(t, jwt.MapClaims{"sub": "", "username": "alice"}))
	require.Equal(t, http.StatusOK, code)
	require.Equal(t, "alice", user["username"], "an empty sub is none")

	noExp, err := jwt.NewWithClaims(jwt.SigningMethodHS256, jwt.MapClaims{"userId": 1, "username": "alice"}).SignedString(testSecret)
	require.NoError(t, err)
	wsURL := "ws" + strings.TrimPrefix(g.ts.URL, "http") + "/ws?token="
	for name, tok := range map[string]string{
		"invalid user name":   claudeCodeUIToken(t, jwt.MapClaims{"userId": 2, "username": "al ice"}),
		"user name of a path": claudeCodeUIToken(t, jwt.MapClaims{"userId": 2, "username": ".."}),
		"no user":             claudeCodeUIToken(t, jwt.MapClaims{"userId": 2}),
		"no expiry":           noExp,
	} {
		for _, url := range []string{wsURL, shellURL} {
			_, resp, err := websocket.DefaultDialer.Dial(url+tok, nil)
			require.Error(t, err, name)
			require.Equal(t, http.StatusUnauthorized, resp.StatusCode, "%s: %s", name, url)
			resp.Body.Close()
		}
	}
}
