package handlers

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/golang-jwt/jwt/v5"

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

// Auth authenticates requests: JWT HS256 bearer tokens, or in platform mode
// the user name a trusted proxy put in a header.
type Auth struct {
	Mode       string
	Secret     []byte
	UserHeader string
}

// tokenClaims are the claims of an agentgate token.
type tokenClaims struct {
	Admin bool `json:"admin,omitempty"`
	jwt.RegisteredClaims
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

// Authenticate returns the caller of r or errUnauthorized.
func (a *Auth) Authenticate(r *http.Request) (app.User, error) {
	if a.Mode == AuthPlatform {
		header := a.UserHeader
		if header == "" {
			header = DefaultUserHeader
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
	if err != nil || !app.ValidUserName(claims.Subject) {
		return app.User{}, errUnauthorized
	}
	return app.User{Name: claims.Subject, Admin: claims.Admin}, nil
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

// originAllowed applies PROTOCOL §2: a request without Origin (a CLI, a
// server) passes; a browser's Origin must be listed, or by default match the
// request's own host.
func originAllowed(r *http.Request, allowed []string) bool {
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true
	}
	if len(allowed) == 0 {
		u, err := url.Parse(origin)
		return err == nil && strings.EqualFold(u.Host, r.Host)
	}
	for _, a := range allowed {
		if a == "*" || strings.EqualFold(strings.TrimSuffix(a, "/"), origin) {
			return true
		}
	}
	return false
}
