package workers

// seenControlsMax is how many control IDs a worker remembers. The copies of
// one send arrive together (a stalled Redis runs them back to back when it
// goes on), so a short memory is enough.
const seenControlsMax = 1024

// seenControls remembers the IDs of the last controls a worker read from its
// inbox, so that a control sent once but stored twice (the sender's Redis
// client retried it on another connection while Redis was stalled) acts
// once.
type seenControls struct {
	ids  map[string]struct{}
	ring []string
	next int
}

// first reports whether id was not seen among the last seenControlsMax,
// and remembers it. A control without an ID (from a gateway of an older
// build) is always first.
func (s *seenControls) first(id string) bool {
	if id == "" {
		return true
	}
	if s.ids == nil {
		s.ids = make(map[string]struct{}, seenControlsMax)
		s.ring = make([]string, seenControlsMax)
	}
	if _, ok := s.ids[id]; ok {
		return false
	}
	if old := s.ring[s.next]; old != "" {
		delete(s.ids, old)
	}
	s.ring[s.next] = id
	s.next = (s.next + 1) % seenControlsMax
	s.ids[id] = struct{}{}
	return true
}
