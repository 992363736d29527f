package workers

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"

	"github.com/agentgate/agentgate/app"
)

// writeImages writes a run's images into a folder of their own that only
// the run's account can read (acct, or the worker's own when nil), and
// returns their paths and a func that removes the folder once the run has
// ended. The images were checked at the gateway; they are decoded and
// checked again here, since a job is input.
func writeImages(images []app.Image, acct *account) (paths []string, cleanup func(), err error) {
	if len(images) > app.MaxImages {
		return nil, nil, fmt.Errorf("too many images: at most %d", app.MaxImages)
	}
	dir, err := os.MkdirTemp("", "agentgate-images-")
	if err != nil {
		return nil, nil, fmt.Errorf("write images: %w", err)
	}
	cleanup = func() { _ = os.RemoveAll(dir) }
	for i, img := range images {
		ext, data, err := app.DecodeImage(img)
		if err != nil {
			cleanup()
			return nil, nil, fmt.Errorf("image %d: %w", i+1, err)
		}
		p := filepath.Join(dir, fmt.Sprintf("image_%d.%s", i+1, ext))
		if err := os.WriteFile(p, data, 0o600); err != nil {
			cleanup()
			return nil, nil, fmt.Errorf("write images: %w", err)
		}
		paths = append(paths, p)
	}
	// The files first, while the folder is still the worker's alone
	// (0700): once it is the user's, they could swap a file for a hard
	// link to another before its chown, and be handed that one.
	if err := acct.chown(append(slices.Clip(paths), dir)...); err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("write images: %w", err)
	}
	return paths, cleanup, nil
}
