// Command fakecursor stands in for cursor-agent, which is not on npm, in
// tests: it prints the headless stream-json output that Cursor documents
// (docs/cli/reference/output-format: system/init, user, assistant,
// tool_call started/completed, result) and the workspace-trust refusal, line
// for line, without a model. See FACTS.md in this folder for the sources and
// for what is the stand-in's own choice.
//
// What a run does depends on the prompt:
//
//	"run: CMD"  an assistant line, a shell tool call that really runs CMD
//	            (refused, as cursor-agent does, without -f/--force/--yolo),
//	            then a closing assistant line
//	"think"     a thinking delta and its completion before the answer
//	"fail"      init and user lines, then an error on stderr and exit 1
//	"hang"      init and user lines, then nothing until it is killed
//	otherwise   one assistant line echoing the prompt and how many prompts
//	            the chat has had
//
// State lives under $HOME/.cursor: trusted folders and chats (per working
// directory), so --resume and the one-time trust behave as in the real CLI.
package main

import (
	"bytes"
	"crypto/md5"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"
)

type options struct {
	print, force, trust bool
	format, model, mode string
	resume, prompt      string
}

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(argv []string) int {
	o, err := parseArgs(argv)
	if err != nil {
		fmt.Fprintf(os.Stderr, "error: %v\n", err)
		return 1
	}
	if !o.print || o.format != "stream-json" {
		fmt.Fprintln(os.Stderr, "fakecursor: only -p --output-format stream-json is reproduced")
		return 2
	}
	cwd, err := os.Getwd()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	home := filepath.Join(os.Getenv("HOME"), ".cursor")
	if !o.trust && !o.force && !trusted(home, cwd) {
		fmt.Fprint(os.Stderr, trustMessage(cwd))
		return 1
	}
	if o.trust || o.force {
		if err := remember(home, cwd); err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 1
		}
	}

	chatDir := filepath.Join(home, "chats", md5hex(cwd))
	session := o.resume
	if session == latestChat {
		session = newestChat(chatDir)
		if session == "" {
			fmt.Fprintln(os.Stderr, "Error: no chat to resume")
			return 1
		}
	}
	var history []string
	if session != "" {
		b, err := os.ReadFile(filepath.Join(chatDir, session+".json"))
		if err != nil {
			// Not documented; the stand-in's own wording.
			fmt.Fprintf(os.Stderr, "Error: chat %s not found\n", session)
			return 1
		}
		_ = json.Unmarshal(b, &history)
	} else {
		session = uuid()
	}
	history = append(history, o.prompt)
	if err := os.MkdirAll(chatDir, 0o700); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	b, _ := json.Marshal(history)
	if err := os.WriteFile(filepath.Join(chatDir, session+".json"), b, 0o600); err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}

	started := time.Now()
	model := o.model
	if model == "" {
		model = "Auto"
	}
	permission := "default"
	switch {
	case o.mode == "plan":
		permission = "plan"
	case o.force:
		permission = "force"
	}
	emit(map[string]any{"type": "system", "subtype": "init", "apiKeySource": "login", "cwd": cwd, "session_id": session, "model": model, "permissionMode": permission})
	emit(map[string]any{"type": "user", "message": message("user", o.prompt), "session_id": session})

	var said []string
	say := func(text string) {
		said = append(said, text)
		emit(map[string]any{"type": "assistant", "message": message("assistant", text), "session_id": session})
	}
	switch {
	case strings.Contains(o.prompt, "fail"):
		fmt.Fprintln(os.Stderr, "Error: the stand-in was asked to fail")
		return 1
	case strings.Contains(o.prompt, "hang"):
		for {
			time.Sleep(time.Hour)
		}
	}
	if strings.Contains(o.prompt, "think") {
		emit(map[string]any{"type": "thinking", "subtype": "delta", "text": "Thinking it over.", "session_id": session, "timestamp_ms": time.Now().UnixMilli()})
		emit(map[string]any{"type": "thinking", "subtype": "completed", "session_id": session, "timestamp_ms": time.Now().UnixMilli()})
	}
	if _, cmd, ok := strings.Cut(o.prompt, "run: "); ok {
		say("Running it.")
		shell(session, cwd, cmd, o.force)
		say("Done.")
	} else {
		say(fmt.Sprintf("Echo: %s (prompt %d of this chat)", o.prompt, len(history)))
	}
	ms := time.Since(started).Milliseconds()
	emit(map[string]any{
		"type": "result", "subtype": "success", "duration_ms": ms, "duration_api_ms": ms, "is_error": false,
		"result": strings.Join(said, ""), "session_id": session, "request_id": uuid(),
		"usage": map[string]any{"inputTokens": 100, "outputTokens": 10 * len(said), "cacheReadTokens": 50, "cacheWriteTokens": 0},
	})
	return 0
}

// shell prints one shell tool call; without force it is refused, as the
// real CLI refuses shell commands in print mode without --force.
func shell(session, cwd, command string, force bool) {
	callID := "toolu_" + strings.ReplaceAll(uuid(), "-", "")[:24]
	args := map[string]any{"command": command, "workingDirectory": "", "timeout": 30000}
	emit(map[string]any{"type": "tool_call", "subtype": "started", "call_id": callID,
		"tool_call": map[string]any{"shellToolCall": map[string]any{"args": args}}, "session_id": session})
	var result map[string]any
	if !force {
		result = map[string]any{"rejected": map[string]any{"command": command, "workingDirectory": cwd, "reason": "", "isReadonly": false}}
	} else {
		c := exec.Command("/bin/sh", "-c", command)
		c.Dir = cwd
		var stdout, stderr bytes.Buffer
		c.Stdout, c.Stderr = &stdout, &stderr
		code := 0
		if err := c.Run(); err != nil {
			code = 1
			if ee, ok := err.(*exec.ExitError); ok {
				code = ee.ExitCode()
			}
		}
		outcome := "success"
		if code != 0 {
			outcome = "failure"
		}
		result = map[string]any{outcome: map[string]any{"command": command, "exitCode": code, "stdout": stdout.String(), "stderr": stderr.String()}}
	}
	emit(map[string]any{"type": "tool_call", "subtype": "completed", "call_id": callID,
		"tool_call": map[string]any{"shellToolCall": map[string]any{"args": args, "result": result}}, "session_id": session})
}

// parseArgs reads argv the way cursor-agent's parser (commander.js) does:
// an option's value is `--opt=VALUE` or the next argument; a required value
// (`--model <model>`) is the next argument whatever it looks like, an
// optional one (`--resume [chatId]`) only when it does not start with '-';
// `--` ends the options.
func parseArgs(argv []string) (options, error) {
	o := options{format: "text"}
	var rest []string
	for i := 0; i < len(argv); i++ {
		a := argv[i]
		name, inline, hasInline := strings.Cut(a, "=")
		if !strings.HasPrefix(a, "--") {
			name, hasInline = a, false
		}
		required := func() (string, error) {
			if hasInline {
				return inline, nil
			}
			if i+1 >= len(argv) {
				return "", fmt.Errorf("option '%s' argument missing", name)
			}
			i++
			return argv[i], nil
		}
		var err error
		switch name {
		case "--":
			rest = append(rest, argv[i+1:]...)
			i = len(argv)
		case "-p", "--print":
			o.print = true
		case "-f", "--force", "--yolo":
			o.force = true
		case "--trust":
			o.trust = true
		case "--output-format":
			o.format, err = required()
		case "--model", "-m":
			o.model, err = required()
		case "--mode":
			o.mode, err = required()
		case "--resume":
			o.resume = latestChat
			switch {
			case hasInline:
				o.resume = inline
			case i+1 < len(argv) && !strings.HasPrefix(argv[i+1], "-"):
				i++
				o.resume = argv[i]
			}
		default:
			if strings.HasPrefix(a, "-") {
				return o, fmt.Errorf("unknown option '%s'", a)
			}
			rest = append(rest, a)
		}
		if err != nil {
			return o, err
		}
	}
	o.prompt = strings.Join(rest, " ")
	return o, nil
}

// latestChat is the resume value of a bare --resume: the folder's most
// recent chat.
const latestChat = "\x00latest"

// newestChat names the most recently written chat in dir, or "".
func newestChat(dir string) string {
	entries, _ := os.ReadDir(dir)
	var name string
	var newest time.Time
	for _, e := range entries {
		info, err := e.Info()
		if err != nil || !strings.HasSuffix(e.Name(), ".json") {
			continue
		}
		if info.ModTime().After(newest) {
			name, newest = strings.TrimSuffix(e.Name(), ".json"), info.ModTime()
		}
	}
	return name
}

// trustMessage is the refusal cursor-agent prints, exit 1, before any
// request, in a folder it was never told to trust.
func trustMessage(dir string) string {
	return "⚠ Workspace Trust Required\n\n" +
		"  Cursor Agent can execute code and access files in this directory.\n" +
		"  Do you trust the contents of this directory?\n\n" +
		"    " + dir + "\n\n" +
		"  To proceed, you can either:\n" +
		"    • Run 'agent' interactively to decide\n" +
		"    • Pass --trust, --yolo, or -f if you trust this directory\n"
}

func trusted(home, dir string) bool {
	b, err := os.ReadFile(filepath.Join(home, "trusted-folders"))
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if line == dir {
			return true
		}
	}
	return false
}

func remember(home, dir string) error {
	if trusted(home, dir) {
		return nil
	}
	if err := os.MkdirAll(home, 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(filepath.Join(home, "trusted-folders"), os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o600)
	if err != nil {
		return err
	}
	defer f.Close()
	_, err = fmt.Fprintln(f, dir)
	return err
}

func message(role, text string) map[string]any {
	return map[string]any{"role": role, "content": []any{map[string]any{"type": "text", "text": text}}}
}

func emit(v map[string]any) {
	b, err := json.Marshal(v)
	if err != nil {
		panic(err)
	}
	os.Stdout.Write(append(b, '\n'))
}

func md5hex(s string) string {
	sum := md5.Sum([]byte(s))
	return hex.EncodeToString(sum[:])
}

func uuid() string {
	var b [16]byte
	_, _ = rand.Read(b[:])
	b[6] = b[6]&0x0f | 0x40
	b[8] = b[8]&0x3f | 0x80
	h := hex.EncodeToString(b[:])
	return h[0:8] + "-" + h[8:12] + "-" + h[12:16] + "-" + h[16:20] + "-" + h[20:32]
}
