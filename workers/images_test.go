package workers

import (
	"context"
	"encoding/base64"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/internal/mockanthropic"
	"github.com/agentgate/agentgate/store"
	"github.com/agentgate/agentgate/store/storetest"
)

const onePixelPNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="

func TestWriteImages(t *testing.T) {
	paths, cleanup, err := writeImages([]app.Image{{Data: onePixelPNG}, {Data: onePixelPNG}}, nil, imagesPrefix("scope", "w1"))
	require.NoError(t, err)
	require.Len(t, paths, 2)
	dir := filepath.Dir(paths[0])
	require.True(t, strings.HasPrefix(filepath.Base(dir), imagesPrefix("scope", "w1")), dir)
	fi, err := os.Stat(dir)
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o700), fi.Mode().Perm(), "a private folder")
	for i, p := range paths {
		require.Equal(t, dir, filepath.Dir(p))
		require.Equal(t, "image_"+string(rune('1'+i))+".png", filepath.Base(p))
		fi, err := os.Stat(p)
		require.NoError(t, err)
		require.Equal(t, os.FileMode(0o600), fi.Mode().Perm())
		b, err := os.ReadFile(p)
		require.NoError(t, err)
		want, _ := base64.StdEncoding.DecodeString(onePixelPNG[len("data:image/png;base64,"):])
		require.Equal(t, want, b)
	}
	cleanup()
	_, err = os.Stat(dir)
	require.True(t, os.IsNotExist(err), "removed")

	_, _, err = writeImages([]app.Image{{Data: onePixelPNG}, {Data: "data:image/png;base64,AAAA"}}, nil, imagesPrefix("scope", "w1"))
	require.ErrorContains(t, err, "image 2")
}

// TestSweepImages: a worker starting removes the image folders that dead
// workers of its scope left on the host (killed with -9, their runs never
// removed them), its own id's too, and leaves live workers' and other
// scopes' alone. Before, nothing removed them.
func TestSweepImages(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	st := storetest.New(t, storetest.Miniredis(t))
	ctx := context.Background()
	require.NoError(t, st.Heartbeat(ctx, store.WorkerInfo{ID: "alive", StartedAt: time.Now()}, time.Minute))
	w, err := New(Config{Store: st, ID: "me", Providers: map[app.Provider]Provider{app.Claude: scriptProvider{}}})
	require.NoError(t, err)
	dirs := map[string]bool{ // name: removed
		imagesPrefix(st.Scope(), "dead") + "1":      true,
		imagesPrefix(st.Scope(), "me") + "2":        true,
		imagesPrefix(st.Scope(), "alive") + "3":     false,
		imagesPrefix("another scope", "dead") + "4": false,
		"agentgate-other-5":                         false,
	}
	for name := range dirs {
		require.NoError(t, os.MkdirAll(filepath.Join(os.TempDir(), name, "sub"), 0o700))
	}
	w.sweepImages(ctx)
	for name, removed := range dirs {
		_, err := os.Stat(filepath.Join(os.TempDir(), name))
		require.Equal(t, removed, os.IsNotExist(err), name)
	}
}

// TestClaudeRunWithImages: the CLI gets the image paths in its prompt and
// their folder through --add-dir; the folder is gone once the run ended.
func TestClaudeRunWithImages(t *testing.T) {
	api := mockanthropic.New(t)
	h := claudeWorker(t, storetest.New(t, storetest.Miniredis(t)), append(api.CLIEnv(t), "CLAUDE_CODE_MAX_RETRIES=0"))
	api.Add(mockanthropic.Turn{When: "look at this", Text: "a pixel"})
	sess := h.submitJob(app.Job{SessionID: app.NewID(), Command: "look at this", NewSession: true,
		Options: app.RunOptions{Images: []app.Image{{Data: onePixelPNG}}}})
	evs := h.waitDone(sess.ID)
	require.Equal(t, []string{"a pixel"}, texts(evs))
	reqs := api.ScriptedRequests()
	prompt := reqs[len(reqs)-1].PromptText
	m := regexp.MustCompile(`1\. (\S+image_1\.png)`).FindStringSubmatch(prompt)
	require.NotNil(t, m, "the prompt names the image: %q", prompt)
	_, err := os.Stat(filepath.Dir(m[1]))
	require.True(t, os.IsNotExist(err), "the images are removed when the run ends")
}
