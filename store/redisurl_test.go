package store_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/store"
)

// A Redis URL that does not parse is reported without its password (a
// password with a '/' that is not percent-encoded ends the host early, and
// net/url's error printed the whole URL and quoted the password's first
// part as the port), and as an error of the configuration, not an outage.
func TestBadRedisURLHidesPassword(t *testing.T) {
	for _, tc := range []struct{ url, secret string }{
		{"redis://:ab/cd@127.0.0.1:6379/0", "ab"},
		{"redis://user:s3cr%zzet@127.0.0.1:6379/0", "s3cr"},
		{"redis://:pw d@127.0.0.1:6379/0?addr=127.0.0.1:6380", "pw d"},
		{"redis://:hunter2@127.0.0.1:6379/0\n", "hunter2"},
		// net/url takes ":" for the host and the rest for the path, which
		// go-redis refuses quoting it.
		{"redis://:/Xy9secret@redis:6379/0", "Xy9secret"},
		{"redis://:12/Xy9secret@redis:6379/0", "Xy9secret"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := store.New(ctx, store.Config{URL: tc.url})
		cancel()
		require.Error(t, err, tc.url)
		require.NotContains(t, err.Error(), tc.secret, tc.url)
		require.Contains(t, err.Error(), "parse Redis URL", tc.url)
		// A *url.Error is a net.Error: wrapped, it read as Redis being
		// down, and a gateway waited for it for good (logging the URL).
		require.False(t, store.Unavailable(err), tc.url)
		t.Logf("%q: %v", tc.url, err)
	}
}

func TestURLErrorKeepsOtherErrors(t *testing.T) {
	err := errors.New("redis: invalid URL scheme: http")
	require.Equal(t, err, store.URLError(err))
	require.True(t, strings.Contains(store.URLError(err).Error(), "scheme"))
}
