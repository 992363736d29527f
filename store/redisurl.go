package store

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
	"strings"
)

// quotedPart is a fragment of the URL that net/url quotes in its error
// messages ("invalid port \":ab\" after host", "invalid URL escape \"%zz\"").
var quotedPart = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)

// URLError reports why a Redis URL does not parse without any part of the
// URL: a *url.Error prints the whole URL, password included, and the
// fragment its reason quotes is often a piece of the password (a password
// with a '/' ends the host early, and its first part is reported as the
// port). These errors go to logs and terminals, which are no place for the
// Redis password. Errors of other kinds are returned as they are.
func URLError(err error) error {
	var uerr *url.Error
	if !errors.As(err, &uerr) {
		return err
	}
	reason := quotedPart.ReplaceAllLiteralString(uerr.Err.Error(), `"…"`)
	return fmt.Errorf("%s (the URL is not shown, as it may hold a password; percent-encode a password's reserved characters, such as / ? # @ : %%)", reason)
}

// parseError is URLError for what go-redis's parsers answer about raw, as
// net/url read it (u, nil if it did not): their own errors quote the
// URL's path or database ("invalid URL path: …"), and a password with an
// unencoded '/' lands there. Such an error is replaced by one that shows
// none of it.
func parseError(err error, raw string, u *url.URL) error {
	var uerr *url.Error
	if errors.As(err, &uerr) || u == nil {
		return URLError(err)
	}
	msg := err.Error()
	pw, _ := u.User.Password()
	leaks := pw != "" && strings.Contains(msg, pw) ||
		len(u.Path) > 2 && strings.Contains(msg, u.Path) ||
		len(u.RawPath) > 2 && strings.Contains(msg, u.RawPath) ||
		strings.Contains(msg, raw)
	if !leaks {
		return err
	}
	return errors.New("its path or database does not parse (the URL is not shown, as it may hold a password; percent-encode a password's reserved characters, such as / ? # @ : %)")
}
