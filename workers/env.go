package workers

import (
	"path"
	"strings"
)

// baseEnv names the variables of the worker's environment that every user
// process gets: what a program needs to find commands, speak the user's
// language and tell the time.
var baseEnv = []string{"PATH", "LANG", "LANGUAGE", "LC_*", "TZ"}

// sharedAccountEnv names the variables a user process gets from the worker
// when it runs under the worker's own account (no Accounts): the account's
// home and name, and its temporary folder.
var sharedAccountEnv = []string{"HOME", "USER", "LOGNAME", "SHELL", "TMPDIR"}

// DefaultPassEnv is the default of Config.PassEnv: the model API settings of
// the four providers, proxies and certificate bundles. It names no variable
// of the service itself.
var DefaultPassEnv = []string{
	"ANTHROPIC_*", "CLAUDE_CODE_*", "OPENAI_*", "CODEX_*", "GEMINI_*", "GOOGLE_*", "CURSOR_*",
	"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy", "no_proxy",
	"NODE_EXTRA_CA_CERTS", "SSL_CERT_FILE", "SSL_CERT_DIR",
}

// servicePrefix marks the service's own variables (its Redis URL, its JWT
// secret): never passed to a user process, whatever PassEnv says.
const servicePrefix = "AGENTGATE_"

// userEnv builds the environment of user processes from environ (the
// worker's own): the variables named by baseEnv and pass (exact names, or
// patterns such as ANTHROPIC_*), then extra as given. Nothing of the
// service's own (AGENTGATE_*) passes, from either.
func userEnv(environ, pass, extra []string) []string {
	var env []string
	for _, kv := range environ {
		name, _, ok := strings.Cut(kv, "=")
		if ok && !strings.HasPrefix(name, servicePrefix) && (nameMatches(name, baseEnv) || nameMatches(name, pass)) {
			env = append(env, kv)
		}
	}
	for _, kv := range extra {
		if !strings.HasPrefix(kv, servicePrefix) {
			env = append(env, kv)
		}
	}
	return env
}

// nameMatches reports whether name is one of the names or patterns.
func nameMatches(name string, patterns []string) bool {
	for _, p := range patterns {
		if p == name {
			return true
		}
		if strings.ContainsAny(p, "*?[") {
			if ok, _ := path.Match(p, name); ok {
				return true
			}
		}
	}
	return false
}

// withVars returns env with vars (NAME=VALUE) set, replacing earlier values
// of the same names; env is not modified.
func withVars(env []string, vars ...string) []string {
	out := make([]string, 0, len(env)+len(vars))
	for _, kv := range env {
		name, _, _ := strings.Cut(kv, "=")
		replaced := false
		for _, v := range vars {
			if strings.HasPrefix(v, name+"=") {
				replaced = true
				break
			}
		}
		if !replaced {
			out = append(out, kv)
		}
	}
	return append(out, vars...)
}
