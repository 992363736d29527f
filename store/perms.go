package store

import (
	"context"
	"encoding/json"
	"fmt"
)

// PendingPermissions returns the pending permission requests of a session,
// as stored in `ag:session:{ID}:perms` (request id -> request JSON).
func (s *Store) PendingPermissions(ctx context.Context, sessionID string) ([]json.RawMessage, error) {
	vals, err := s.rdb.HVals(ctx, s.k.perms(sessionID)).Result()
	if err != nil {
		return nil, fmt.Errorf("store: read permissions of %s: %w", sessionID, err)
	}
	out := make([]json.RawMessage, 0, len(vals))
	for _, v := range vals {
		if json.Valid([]byte(v)) {
			out = append(out, json.RawMessage(v))
		}
	}
	return out, nil
}
