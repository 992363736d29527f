package store

import "testing"

// TestSlotOf checks the hash slot computation against CLUSTER KEYSLOT's
// documented answers.
func TestSlotOf(t *testing.T) {
	for key, want := range map[string]int{
		"somekey": 11058, "foo{hash_tag}": 2515, "bar{hash_tag}": 2515, "foo": 12182,
	} {
		if got := slotOf(key); got != want {
			t.Errorf("slotOf(%q) = %d, want %d", key, got, want)
		}
	}
}
