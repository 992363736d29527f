package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"
	"unicode/utf8"

	"github.com/agentgate/agentgate/app"
	"github.com/agentgate/agentgate/handlers"
	"github.com/agentgate/agentgate/migrations"
	"github.com/agentgate/agentgate/store"
)

// runToken prints a signed token for a user, alone on one line.
func runToken(args []string, stdout, stderr io.Writer) error {
	var c config
	fs, finish := newFlags("token", stderr, &c)
	user := fs.String("user", "", "user name (required)")
	admin := fs.Bool("admin", false, "the user may see every session")
	ttl := fs.String("ttl", "24h", "validity, e.g. 24h or 7d")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("token: unexpected argument %q", fs.Arg(0))
	}
	if err := finish(); err != nil {
		return err
	}
	if *user == "" {
		return errors.New("token: --user is required")
	}
	if c.JWTSecret == "" {
		return errors.New("token: --jwt-secret (AGENTGATE_JWT_SECRET) is required")
	}
	if err := checkSecret([]byte(c.JWTSecret)); err != nil {
		return fmt.Errorf("token: %w", err)
	}
	d, err := parseDuration(*ttl)
	if err != nil {
		return fmt.Errorf("token: --ttl: %w", err)
	}
	token, err := handlers.IssueToken([]byte(c.JWTSecret), *user, *admin, d)
	if err != nil {
		return fmt.Errorf("token: %w", err)
	}
	fmt.Fprintln(stdout, token)
	return nil
}

// openStore connects to the configured Redis for an admin command and
// returns its positional arguments. extra registers the command's own flags;
// check, when not nil, refuses the positional arguments before Redis is
// dialled.
func openStore(ctx context.Context, name string, args []string, stderr io.Writer, extra func(*flag.FlagSet), check func([]string) error) (*store.Store, []string, error) {
	var c config
	fs, finish := newFlags(name, stderr, &c)
	if extra != nil {
		extra(fs)
	}
	positional, err := parseInterspersed(fs, args)
	if err != nil {
		return nil, nil, err
	}
	if check != nil {
		if err := check(positional); err != nil {
			return nil, nil, fmt.Errorf("%s: %w", name, err)
		}
	}
	if err := finish(); err != nil {
		return nil, nil, err
	}
	if c.Redis == "" {
		return nil, nil, fmt.Errorf("%s needs --redis (AGENTGATE_REDIS_URL)", name)
	}
	st, err := store.New(ctx, c.storeConfig(c.Redis, c.logger(stderr)))
	if err != nil {
		return nil, nil, err
	}
	return st, positional, nil
}

// wantArgs returns the check of openStore for a command that takes exactly
// n positional arguments, which usage names.
func wantArgs(usage string, n int) func([]string) error {
	return func(pos []string) error {
		switch {
		case len(pos) > n:
			return fmt.Errorf("unexpected argument %q; usage: agentgate %s", pos[n], usage)
		case len(pos) < n:
			return fmt.Errorf("missing argument; usage: agentgate %s", usage)
		}
		return nil
	}
}

// isHelp reports whether arg asks for a command's help.
func isHelp(arg string) bool { return arg == "-h" || arg == "--help" || arg == "help" }

// groupHelp answers -h for a command made of subcommands (`agentgate help
// sessions`), as the flag package answers it for the others: its usage,
// then the flags its subcommands take, on stderr.
func groupHelp(name, usage string, stderr io.Writer, extra func(*flag.FlagSet)) error {
	var c config
	fs, _ := newFlags(name, stderr, &c)
	if extra != nil {
		extra(fs)
	}
	fmt.Fprintf(stderr, "Usage:\n%s\nFlags:\n", usage)
	fs.PrintDefaults()
	return flag.ErrHelp
}

// sessionsUsage lists the subcommands of `agentgate sessions`, for its help.
const sessionsUsage = `  agentgate sessions ls [--running]   every user's sessions, or the running ones
  agentgate sessions show ID          one session and its last events
  agentgate sessions abort ID         end a session's run
`

// runSessions is the admin view of sessions: ls, show ID, abort ID.
func runSessions(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var running bool
	runningFlag := func(fs *flag.FlagSet) {
		fs.BoolVar(&running, "running", false, "with ls: only sessions with a run in progress")
	}
	if len(args) == 0 {
		return errors.New("sessions: ls, show ID or abort ID")
	}
	sub, rest := args[0], args[1:]
	if isHelp(sub) {
		return groupHelp("sessions", sessionsUsage, stderr, runningFlag)
	}
	var extra func(*flag.FlagSet)
	var check func([]string) error
	switch sub {
	case "ls":
		extra, check = runningFlag, wantArgs("sessions ls [--running]", 0)
	case "show", "abort":
		check = wantArgs("sessions "+sub+" ID", 1)
	default:
		return fmt.Errorf("sessions: unknown subcommand %q", sub)
	}
	st, pos, err := openStore(ctx, "sessions "+sub, rest, stderr, extra, check)
	if err != nil {
		return err
	}
	defer st.Close()
	switch sub {
	case "ls":
		sessions, err := st.AllSessions(ctx, running, 1000)
		if err != nil {
			return err
		}
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "ID\tOWNER\tPROVIDER\tSTATE\tLAST SEQ\tWORKER\tSTARTED\tPROJECT")
		for _, s := range sessions {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\n", printable(s.ID), printable(s.Owner), printable(string(s.Provider)),
				printable(string(s.State)), s.LastSeq, printable(dash(s.Worker)), when(s.StartedAt), printable(s.ProjectPath))
		}
		return tw.Flush()
	case "show":
		s, err := st.Session(ctx, pos[0])
		if err != nil {
			return fmt.Errorf("sessions show %s: %w", pos[0], err)
		}
		fmt.Fprintf(stdout, "id:          %s\nowner:       %s\nprovider:    %s\nproject:     %s\nstate:       %s\nrun:         %s (started %s)\nworker:      %s\nlast seq:    %d\nprovider id: %s\n",
			printable(s.ID), printable(s.Owner), printable(string(s.Provider)), printable(s.ProjectPath), printable(string(s.State)),
			printable(dash(s.RunID)), when(s.StartedAt), printable(dash(s.Worker)), s.LastSeq, printable(dash(s.ProviderSessionID)))
		exit := "-"
		if s.ExitCode != nil {
			exit = fmt.Sprint(*s.ExitCode)
		}
		fmt.Fprintf(stdout, "exit code:   %s\nstatus:      %s\ncreated:     %s\nupdated:     %s\n",
			exit, printable(dash(s.StatusText)), when(s.CreatedAt), when(s.UpdatedAt))
		perms, err := st.PendingPermissions(ctx, s.ID)
		if err != nil {
			return fmt.Errorf("sessions show %s: %w", pos[0], err)
		}
		if len(perms) > 0 {
			fmt.Fprintln(stdout, "waiting for permission:")
			for _, p := range perms {
				fmt.Fprintf(stdout, "  %s\n", printable(string(p)))
			}
		}
		evs, err := st.Events(ctx, s.ID, max(0, s.LastSeq-20), 20)
		if err != nil {
			return err
		}
		fmt.Fprintln(stdout, "last events:")
		for _, e := range evs {
			fmt.Fprintf(stdout, "  %s\n", printable(string(e.Data)))
		}
		return nil
	case "abort":
		s, err := st.Session(ctx, pos[0])
		if err != nil {
			return fmt.Errorf("sessions abort %s: %w", pos[0], err)
		}
		res, err := st.AbortRun(ctx, store.RunRef{SessionID: s.ID, RunID: s.RunID, Provider: s.Provider})
		if err != nil {
			return fmt.Errorf("sessions abort %s: %w", s.ID, err)
		}
		fmt.Fprintf(stdout, "aborted run %s of session %s\n", res.RunID, s.ID)
		return nil
	}
	return fmt.Errorf("sessions: unknown subcommand %q", sub)
}

// runMigrate applies the key-schema migrations.
func runMigrate(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	st, _, err := openStore(ctx, "migrate", args, stderr, nil, wantArgs("migrate", 0))
	if err != nil {
		return err
	}
	defer st.Close()
	v, err := migrations.Apply(ctx, st)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "key schema at version %d\n", v)
	return nil
}

// printable escapes what a terminal would act on in s: control characters
// (C0, DEL and C1) as \uXXXX, bytes that are not UTF-8 as \xNN. A session's
// fields come from its user (a project path is a folder they named), and
// an escape sequence printed raw would retitle or redraw the admin's
// terminal, and could hide or forge rows; in an event's JSON the \u form
// keeps its meaning.
func printable(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && size <= 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case isControl(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		default:
			b.WriteString(s[i : i+size])
		}
		i += size
	}
	return b.String()
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f || 0x80 <= r && r < 0xa0 }

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func when(ms int64) string {
	if ms == 0 {
		return "-"
	}
	return time.UnixMilli(ms).UTC().Format(time.RFC3339)
}

// runBroadcast publishes the JSON frame on stdin to every chat socket of one
// user on every gateway: the way a projects service beside agentgate (such
// as Claude Code UI's own server) sends projects_updated and
// loading_progress. POST /api/broadcast does the same over HTTP.
func runBroadcast(ctx context.Context, args []string, stdin io.Reader, stderr io.Writer) error {
	var user string
	st, positional, err := openStore(ctx, "broadcast", args, stderr, func(fs *flag.FlagSet) {
		fs.StringVar(&user, "user", "", "the user whose sockets get the frame (required)")
	}, nil)
	if err != nil {
		return err
	}
	defer st.Close()
	if len(positional) > 0 {
		return fmt.Errorf("broadcast: unexpected argument %q; the frame is read from stdin", positional[0])
	}
	frame, err := io.ReadAll(io.LimitReader(stdin, app.MaxBroadcastSize+1))
	if err != nil {
		return fmt.Errorf("broadcast: read stdin: %w", err)
	}
	frame = bytes.TrimSpace(frame)
	if err := app.CheckBroadcast(user, frame); err != nil {
		return fmt.Errorf("broadcast: %w", err)
	}
	return st.Broadcast(ctx, user, frame)
}
