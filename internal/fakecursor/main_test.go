package main

import (
	"testing"

	"github.com/stretchr/testify/require"
)

// TestParseArgs: options are read as commander.js reads cursor-agent's.
func TestParseArgs(t *testing.T) {
	cases := []struct {
		argv    []string
		want    options
		wantErr string
	}{
		{argv: []string{"-p", "--output-format", "stream-json", "--", "hi"},
			want: options{print: true, format: "stream-json", prompt: "hi"}},
		{argv: []string{"--model=sonnet-4", "--resume=c1", "--", "hi"},
			want: options{format: "text", model: "sonnet-4", resume: "c1", prompt: "hi"}},
		{argv: []string{"--model", "sonnet-4", "--resume", "c1", "hi"},
			want: options{format: "text", model: "sonnet-4", resume: "c1", prompt: "hi"}},
		// A required value is the next argument whatever it looks like.
		{argv: []string{"--model", "--yolo", "hi"}, want: options{format: "text", model: "--yolo", prompt: "hi"}},
		{argv: []string{"-m", "-f"}, want: options{format: "text", model: "-f"}},
		// An optional one is not: a bare --resume, then the flag.
		{argv: []string{"--resume", "--yolo", "hi"}, want: options{format: "text", resume: latestChat, force: true, prompt: "hi"}},
		{argv: []string{"--resume"}, want: options{format: "text", resume: latestChat}},
		{argv: []string{"--resume=--yolo", "--model=a=b"}, want: options{format: "text", resume: "--yolo", model: "a=b"}},
		{argv: []string{"-f", "--trust", "--mode=plan", "--", "--help", "me"},
			want: options{format: "text", force: true, trust: true, mode: "plan", prompt: "--help me"}},
		{argv: []string{"--continue"}, wantErr: "unknown option '--continue'"},
		{argv: []string{"--model"}, wantErr: "option '--model' argument missing"},
	}
	for _, tc := range cases {
		got, err := parseArgs(tc.argv)
		if tc.wantErr != "" {
			require.EqualError(t, err, tc.wantErr, "%q", tc.argv)
			continue
		}
		require.NoError(t, err, "%q", tc.argv)
		require.Equal(t, tc.want, got, "%q", tc.argv)
	}
}
