package handlers

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/labstack/echo/v4"

	"github.com/agentgate/agentgate/app"
)

// Authentication modes of PROTOCOL §2.
const (
	AuthJWT      = "jwt"
	AuthPlatform = "platform"
)

// DefaultUserHeader is the header platform mode trusts.
const DefaultUserHeader = "X-Forwarded-User"

// errUnauthorized is what every failed authentication answers: a client
// learns nothing about why its token was refused.
var errUnauthorized = errors.New("unauthorized")

// errAmbiguousUser refuses a platform-mode request that names its user more
// than once: behind a proxy that appends its header to the client's instead
// of replacing it, the first value would be the one the client chose.
var errAmbiguousUser = errors.New("ambiguous user: the user header must appear once, with one name (a proxy must replace it, not append to it)")

// authFailure is the HTTP answer to a failed authentication: 401, saying why
// only when the request is malformed rather than its credentials wrong.
//
// The connection is closed after the answer: an idle keep-alive connection
// of a client without an account would hold one of the gateway's
// --max-connections places for the idle timeout.
func authFailure(c echo.Context, err error) error {
	c.Response().Header().Set("Connection", "close")
	if errors.Is(err, errAmbiguousUser) {
		return echo.NewHTTPError(http.StatusUnauthorized, err.Error())
	}
	return echo.NewHTTPError(http.StatusUnauthorized, errUnauthorized.Error())
}

// Auth authenticates requests: JWT HS256 bearer tokens, or in platform mode
// the user name a trusted proxy put in a header.
type Auth struct {
	Mode       string
	Secret     []byte
	UserHeader string
	// TrustedProxies are the peers whose user header platform mode takes:
	// anyone else who reaches the gateway (a user's own process on a
	// worker host, in the same network) could name any user. A request
	// from another peer is refused; none trusted refuses every request.
	TrustedProxies []netip.Prefix
}

// ParseTrustedProxies reads a list of addresses and networks separated by
// commas (`10.0.0.0/8, 127.0.0.1, ::1`), for Auth.TrustedProxies.
func ParseTrustedProxies(list string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range strings.Split(list, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if p, err := netip.ParsePrefix(s); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(s)
		if err != nil {
			return nil, fmt.Errorf("%q is not an address or a network (10.0.0.0/8)", s)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

// trusts reports whether the peer of r is one of the trusted proxies.
func (a *Auth) trusts(r *http.Request) bool {
	ap, err := netip.ParseAddrPort(r.RemoteAddr)
	if err != nil {
		return false
	}
	addr := ap.Addr().Unmap()
	for _, p := range a.TrustedProxies {
		if p.Contains(addr) {
			return true
		}
	}
	return false
}

// tokenClaims are the claims of an agentgate token, and of a token of
// Claude Code UI's own login (server/middleware/auth.js: `{userId,
// username}`, no `sub`), which a mixed deployment signs with the same secret.
type tokenClaims struct {
	Admin bool `json:"admin,omitempty"`
	// Username names the user of a Claude Code UI token; `sub` wins when
	// both are there.
	Username string `json:"username,omitempty"`
	jwt.RegisteredClaims
}

// user is who the claims name: `sub`, else Claude Code UI's `username`.
// Only a `sub` token makes an admin: agentgate's own tokens are the ones
// that say so (`agentgate token --admin`), and Claude Code UI never sets
// `admin`, so a claim it did not write is not taken from its tokens. The
// secret is the same, so this is clarity, not a boundary: whoever holds it
// can sign a `sub` token too.
func (c *tokenClaims) user() (name string, admin bool) {
	if c.Subject != "" {
		return c.Subject, c.Admin
	}
	return c.Username, false
}

// IssueToken signs a token for user, valid for ttl.
func IssueToken(secret []byte, user string, admin bool, ttl time.Duration) (string, error) {
	if len(secret) == 0 {
		return "", errors.New("handlers: no JWT secret")
	}
	if !app.ValidUserName(user) {
		return "", fmt.Errorf("handlers: invalid user name %q", user)
	}
	now := time.Now()
	claims := tokenClaims{Admin: admin, RegisteredClaims: jwt.RegisteredClaims{
		Subject: user, IssuedAt: jwt.NewNumericDate(now), ExpiresAt: jwt.NewNumericDate(now.Add(ttl)),
	}}
	return jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(secret)
}

// Authenticate returns the caller of r, or errUnauthorized (errAmbiguousUser
// for a repeated platform-mode header).
func (a *Auth) Authenticate(r *http.Request) (app.User, error) {
	if a.Mode == AuthPlatform {
		if !a.trusts(r) {
			return app.User{}, errUnauthorized
		}
		header := a.UserHeader
		if header == "" {
			header = DefaultUserHeader
		}
		names := r.Header.Values(header)
		if len(names) > 1 || (len(names) == 1 && strings.Contains(names[0], ",")) {
			return app.User{}, errAmbiguousUser
		}
		name := r.Header.Get(header)
		if !app.ValidUserName(name) {
			return app.User{}, errUnauthorized
		}
		return app.User{Name: name}, nil
	}
	return a.verify(requestToken(r))
}

func (a *Auth) verify(token string) (app.User, error) {
	if token == "" || len(a.Secret) == 0 {
		return app.User{}, errUnauthorized
	}
	var claims tokenClaims
	_, err := jwt.ParseWithClaims(token, &claims, func(*jwt.Token) (any, error) { return a.Secret, nil },
		jwt.WithValidMethods([]string{jwt.SigningMethodHS256.Alg()}), jwt.WithExpirationRequired())
	name, admin := claims.user()
	if err != nil || !app.ValidUserName(name) {
		return app.User{}, errUnauthorized
	}
	return app.User{Name: name, Admin: admin, Expires: claims.ExpiresAt.Time}, nil
}

// requestToken reads the token from ?token= first, else from
// `Authorization: Bearer`.
func requestToken(r *http.Request) string {
	if t := r.URL.Query().Get("token"); t != "" {
		return t
	}
	scheme, token, ok := strings.Cut(r.Header.Get("Authorization"), " ")
	if ok && strings.EqualFold(scheme, "Bearer") {
		return strings.TrimSpace(token)
	}
	return ""
}

// originPolicy decides which browser origins may open sockets (PROTOCOL
// §2). It protects browsers, which cannot lie about Origin; any other client
// sends whatever Origin it likes, so a request without one passes.
type originPolicy struct {
	anyOrigin bool
	allowed   map[string]bool // scheme://host[:port], as normalOrigin writes it
	hosts     map[string]bool // names the gateway is reached by, lower case
}

// hostNamePattern is a DNS name in lower case, compiled only when public
// hosts are configured.
var hostNamePattern = sync.OnceValue(func() *regexp.Regexp {
	return regexp.MustCompile(`^[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$`)
})

// newOriginPolicy checks and normalizes the configured origins and public
// host names.
func newOriginPolicy(allowed, publicHosts []string) (originPolicy, error) {
	p := originPolicy{allowed: map[string]bool{}, hosts: map[string]bool{"localhost": true}}
	for _, a := range allowed {
		if a == "*" {
			p.anyOrigin = true
			continue
		}
		o, ok := normalOrigin(a)
		if !ok {
			return p, fmt.Errorf("handlers: allowed origin %q is not scheme://host[:port] with http or https", a)
		}
		p.allowed[o] = true
	}
	for _, h := range publicHosts {
		h = strings.ToLower(h)
		if !hostNamePattern().MatchString(h) && net.ParseIP(h) == nil {
			return p, fmt.Errorf("handlers: public host %q is not a host name", h)
		}
		p.hosts[h] = true
	}
	return p, nil
}

// allows reports whether r may open a socket. With origins configured, the
// Origin's scheme, host and port must be one of them. Without, the Origin
// must be the request's own (scheme and Host) on a host the gateway is
// known by: a loopback name, an IP address, or a configured name. The host
// check is what stops DNS rebinding: a page of rebind.evil.example whose
// name now points at the gateway sends that name as both Origin and Host,
// and no one configured it. An IP address cannot be rebound: a page whose
// origin is the gateway's own address and port was served by the gateway.
func (p originPolicy) allows(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	if p.anyOrigin {
		return true
	}
	o, ok := normalOrigin(origin)
	if !ok {
		return false
	}
	if len(p.allowed) > 0 {
		return p.allowed[o]
	}
	self, ok := normalOrigin(requestScheme(r) + "://" + r.Host)
	if !ok || o != self {
		return false
	}
	u, _ := url.Parse(self)
	host := u.Hostname()
	return p.hosts[host] || net.ParseIP(host) != nil
}

// requestScheme is the scheme the browser used: https on TLS, or when the
// TLS-terminating proxy in front says so in X-Forwarded-Proto. Trusting that
// header here is safe: a browser's WebSocket cannot set it, and a client
// that can is not what an origin check protects against.
func requestScheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	proto, _, _ := strings.Cut(r.Header.Get("X-Forwarded-Proto"), ",")
	if strings.EqualFold(strings.TrimSpace(proto), "https") {
		return "https"
	}
	return "http"
}

// normalOrigin returns an http or https origin as lower-case
// scheme://host[:port] without its default port, or false if s is not one.
func normalOrigin(s string) (string, bool) {
	u, err := url.Parse(strings.TrimSuffix(s, "/"))
	if err != nil || u.Host == "" || u.User != nil || u.Path != "" || u.RawQuery != "" || u.Fragment != "" {
		return "", false
	}
	scheme := strings.ToLower(u.Scheme)
	host, port := strings.ToLower(u.Hostname()), u.Port()
	if host == "" || (scheme != "http" && scheme != "https") {
		return "", false
	}
	if (scheme == "http" && port == "80") || (scheme == "https" && port == "443") {
		port = ""
	}
	if strings.Contains(host, ":") {
		host = "[" + host + "]"
	}
	if port != "" {
		host += ":" + port
	}
	return scheme + "://" + host, true
}
