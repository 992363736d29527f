package workers

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"regexp"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/internal/mockanthropic"
	"github.com/agentgate/agentgate/store/storetest"
)

const onePixelPNG = "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="

func TestWriteImages(t *testing.T) {
	paths, cleanup, err := writeImages([]app.Image{{Data: onePixelPNG}, {Data: onePixelPNG}}, nil)
	require.NoError(t, err)
	require.Len(t, paths, 2)
	dir := filepath.Dir(paths[0])
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

	_, _, err = writeImages([]app.Image{{Data: onePixelPNG}, {Data: "data:image/png;base64,AAAA"}}, nil)
	require.ErrorContains(t, err, "image 2")
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
