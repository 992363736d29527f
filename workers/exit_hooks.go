package workers

import "strings"

// What a parser may do once its process has exited, beyond End: both are
// optional and found by type assertion.

// Retrier is a Parser whose run may be started once more with other
// arguments, when the output asked for it (Cursor's workspace trust).
type Retrier interface {
	// Retry is called after End with the tail of stderr; ok asks for one
	// more run of the same job with args. It is asked once per run.
	Retry(stderr string) (args []string, ok bool)
}

// StderrFilter is a Parser that knows which part of its CLI's stderr
// explains a failure, for runs that failed with nothing else said.
type StderrFilter interface {
	// Stderr returns what to show of the tail of stderr; empty shows nothing.
	Stderr(tail string) string
}

// retryArgs asks a Retrier parser whether the run should be started again.
func retryArgs(p Parser, stderr string) ([]string, bool) {
	rt, ok := p.(Retrier)
	if !ok {
		return nil, false
	}
	return rt.Retry(stderr)
}

// stderrText is what a failed run shows of its stderr tail.
func stderrText(p Parser, tail string) string {
	tail = strings.TrimSpace(tail)
	if f, ok := p.(StderrFilter); ok {
		return strings.TrimSpace(f.Stderr(tail))
	}
	return tail
}
