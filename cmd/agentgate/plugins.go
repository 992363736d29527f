package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"slices"
	"text/tabwriter"

	"github.com/agentgate/agentgate/app"
)

// pluginsUsage lists the subcommands of `agentgate plugins`, for its help.
const pluginsUsage = `  agentgate plugins add NAME HOST:PORT   relay /plugin-ws/NAME to ws://HOST:PORT/ws
  agentgate plugins rm NAME              remove a plugin
  agentgate plugins ls                   list the plugins
`

// runPlugins edits the registry /plugin-ws/NAME relays to: add NAME
// HOST:PORT, rm NAME, ls.
func runPlugins(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errors.New("plugins: add NAME HOST:PORT, rm NAME or ls")
	}
	sub, rest := args[0], args[1:]
	if isHelp(sub) {
		return groupHelp("plugins", pluginsUsage, stderr, nil)
	}
	var check func([]string) error
	switch sub {
	case "add":
		check = wantArgs("plugins add NAME HOST:PORT", 2)
	case "rm":
		check = wantArgs("plugins rm NAME", 1)
	case "ls":
		check = wantArgs("plugins ls", 0)
	default:
		return fmt.Errorf("plugins: unknown subcommand %q", sub)
	}
	st, pos, err := openStore(ctx, "plugins "+sub, rest, stderr, nil, check)
	if err != nil {
		return err
	}
	defer st.Close()
	switch sub {
	case "add":
		name, addr := pos[0], pos[1]
		if !app.ValidPluginName(name) {
			return fmt.Errorf("plugins add: invalid plugin name %q: letters, digits, _ and - only", name)
		}
		if !app.ValidPluginAddr(addr) {
			return fmt.Errorf("plugins add: invalid address %q: HOST:PORT, e.g. 127.0.0.1:4000", addr)
		}
		if err := st.SetPlugin(ctx, name, addr); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "plugin %s → ws://%s/ws\n", name, addr)
		return nil
	case "rm":
		if err := st.RemovePlugin(ctx, pos[0]); err != nil {
			if errors.Is(err, app.ErrNotFound) {
				return fmt.Errorf("plugins rm: no plugin %q", pos[0])
			}
			return err
		}
		fmt.Fprintf(stdout, "plugin %s removed\n", pos[0])
		return nil
	default: // ls
		plugins, err := st.Plugins(ctx)
		if err != nil {
			return err
		}
		names := make([]string, 0, len(plugins))
		for n := range plugins {
			names = append(names, n)
		}
		slices.Sort(names)
		tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "NAME\tADDRESS")
		for _, n := range names {
			fmt.Fprintf(tw, "%s\t%s\n", n, plugins[n])
		}
		return tw.Flush()
	}
}
