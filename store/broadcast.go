package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
)

// broadcastMessage is what travels on the broadcast channel: a frame and
// the one user whose chat sockets get it. Every gateway reads every message
// and hands the frame to that user's sockets only, so that what describes a
// user's conversations and projects never reaches another user.
type broadcastMessage struct {
	User  string          `json:"user"`
	Frame json.RawMessage `json:"frame"`
}

// Broadcast publishes a frame (a JSON object) to the chat sockets of user on
// every gateway. Like any pub/sub message it is not stored: a socket that is
// not connected when it is published never gets it.
func (s *Store) Broadcast(ctx context.Context, user string, frame []byte) error {
	if user == "" {
		return errors.New("store: broadcast: no user")
	}
	b, err := json.Marshal(broadcastMessage{User: user, Frame: frame})
	if err != nil {
		return fmt.Errorf("store: broadcast to %s: %w", user, err)
	}
	if err := s.rdb.Publish(ctx, s.k.broadcast(), b).Err(); err != nil {
		return fmt.Errorf("store: broadcast to %s: %w", user, err)
	}
	return nil
}

// ParseBroadcast decodes a message Broadcast published.
func ParseBroadcast(payload []byte) (user string, frame []byte, err error) {
	var m broadcastMessage
	if err := json.Unmarshal(payload, &m); err != nil {
		return "", nil, fmt.Errorf("store: broadcast message: %w", err)
	}
	if m.User == "" || len(m.Frame) == 0 {
		return "", nil, errors.New("store: broadcast message without user or frame")
	}
	return m.User, m.Frame, nil
}
