package app

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
)

// MaxBroadcastSize bounds one broadcast frame: a projects list of a few
// hundred projects with their sessions fits.
const MaxBroadcastSize = 4 << 20

// CheckBroadcast checks a frame that a service beside agentgate asks to
// publish to a user's chat sockets (POST /api/broadcast, `agentgate
// broadcast`): a JSON object whose type is projects_updated,
// loading_progress or a taskmaster-… update, the frames Claude Code UI's
// server sends every socket of its user. A session event (kind) or a reply
// agentgate itself sends is refused: no one else may speak for a session.
func CheckBroadcast(user string, frame []byte) error {
	if !ValidUserName(user) {
		return errors.New("invalid user name")
	}
	if len(frame) > MaxBroadcastSize {
		return fmt.Errorf("frame too large: at most %d bytes", MaxBroadcastSize)
	}
	var head map[string]json.RawMessage
	if err := json.Unmarshal(frame, &head); err != nil || head == nil {
		return errors.New("the frame must be a JSON object")
	}
	if _, ok := head["kind"]; ok {
		return errors.New("a broadcast frame has no kind: session events come only from runs")
	}
	var typ string
	if err := json.Unmarshal(head["type"], &typ); err != nil {
		return errors.New("the frame needs a string type")
	}
	if typ != "projects_updated" && typ != "loading_progress" && !strings.HasPrefix(typ, "taskmaster-") {
		return fmt.Errorf("type %q may not be broadcast: projects_updated, loading_progress or taskmaster-…", Clip(typ, 60))
	}
	return nil
}
