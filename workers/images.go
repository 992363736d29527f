package workers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"github.com/agentgate/agentgate/app"
)

// writeImages writes a run's images into a folder of their own that only
// the run's account can read (acct, or the worker's own when nil), and
// returns their paths and a func that removes the folder once the run has
// ended. The folder's name starts with prefix (imagesPrefix). The images
// were checked at the gateway; they are decoded and checked again here,
// since a job is input.
func writeImages(images []app.Image, acct *account, prefix string) (paths []string, cleanup func(), err error) {
	if len(images) > app.MaxImages {
		return nil, nil, fmt.Errorf("too many images: at most %d", app.MaxImages)
	}
	dir, err := os.MkdirTemp("", prefix)
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

// imagesFolders starts the names of image folders: those removed only by
// their run's end, which a worker killed with -9 never reaches.
const imagesFolders = "agentgate-images-"

// imagesPrefix is the start of the names of the image folders of worker
// id of scope (Store.Scope): "agentgate-images-SCOPE-WORKER-", both hashed
// (a file name holds neither safely), so that a worker finds those that
// dead workers of its scope on the host left (sweepImages), and leaves
// other scopes' alone.
func imagesPrefix(scope, id string) string {
	return imagesFolders + shortHash(scope) + "-" + shortHash(id) + "-"
}

func shortHash(s string) string {
	sum := sha256.Sum256([]byte(s))
	return hex.EncodeToString(sum[:6])
}

// sweepImages removes the image folders that workers of this scope left on
// the host and that are no longer alive, this worker's own included: it
// runs before the worker takes its first job. Without an answer from Redis
// it removes nothing.
func (w *Worker) sweepImages(ctx context.Context) {
	live, err := w.st.LiveWorkers(ctx)
	if err != nil {
		w.log.Warn("sweep image folders of dead workers", "err", err)
		return
	}
	alive := map[string]bool{}
	for _, l := range live {
		if l.ID != w.cfg.ID {
			alive[shortHash(l.ID)] = true
		}
	}
	tmp := os.TempDir()
	entries, err := os.ReadDir(tmp)
	if err != nil {
		w.log.Warn("sweep image folders of dead workers", "err", err)
		return
	}
	scope := imagesFolders + shortHash(w.st.Scope()) + "-"
	for _, e := range entries {
		rest, ok := strings.CutPrefix(e.Name(), scope)
		if !ok || !e.IsDir() {
			continue
		}
		owner, _, ok := strings.Cut(rest, "-")
		if !ok || alive[owner] {
			continue
		}
		if err := os.RemoveAll(filepath.Join(tmp, e.Name())); err != nil {
			w.log.Warn("remove the image folder of a dead worker", "dir", e.Name(), "err", err)
			continue
		}
		w.log.Info("removed the image folder of a dead worker", "dir", e.Name())
	}
}
