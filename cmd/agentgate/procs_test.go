package main

import "testing"

func TestProcsFor(t *testing.T) {
	cases := []struct {
		name           string
		set            bool
		runtimeDefault int
		want           int
	}{
		{"one CPU: nothing to change", false, 1, 0},
		{"two CPUs: one P", false, 2, 1},
		{"two CPUs, GOMAXPROCS set: the operator's", true, 2, 0},
		{"four CPUs: the runtime's", false, 4, 0},
		{"a large host: the runtime's", false, 64, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := procsFor(c.set, c.runtimeDefault); got != c.want {
				t.Fatalf("procsFor(%v, %d) = %d, want %d", c.set, c.runtimeDefault, got, c.want)
			}
		})
	}
}
