package store

import (
	"errors"
	"fmt"
	"net/url"
	"regexp"
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
