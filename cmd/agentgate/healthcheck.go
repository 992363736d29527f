package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// runHealthcheck asks a gateway's /readyz (or, with --metrics, the
// /healthz of --metrics-listen) and fails unless it answers 200: the
// HEALTHCHECK of a container image that has no shell and no curl.
func runHealthcheck(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c config
	fs, finish := newFlags("healthcheck", stderr, &c)
	url := fs.String("url", "", "address to probe (default: /readyz on --listen, on loopback when --listen is a wildcard)")
	metrics := fs.Bool("metrics", false, "probe /healthz on --metrics-listen instead (a worker's; on loopback when it is a wildcard); succeeds without probing when --metrics-listen is empty")
	timeout := fs.Duration("timeout", 3*time.Second, "how long to wait for the answer")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("healthcheck: unexpected argument %q", fs.Arg(0))
	}
	if err := finish(); err != nil {
		return err
	}
	target, err := healthcheckTarget(c, *url, *metrics)
	if err != nil {
		return err
	}
	if target == "" {
		// A worker serves no HTTP without --metrics-listen: there is
		// nothing to ask, and a check that always failed would mark the
		// container unhealthy for good.
		fmt.Fprintln(stdout, "healthcheck: no --metrics-listen (AGENTGATE_METRICS_LISTEN): nothing to probe")
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, *timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("healthcheck: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("healthcheck: %s answered %s: %s", target, resp.Status, body)
	}
	fmt.Fprintf(stdout, "%s: %s\n", target, resp.Status)
	return nil
}

// healthcheckTarget is the URL a healthcheck probes: url when given, else
// /healthz on --metrics-listen with metrics ("" when that is empty), else
// /readyz on --listen. It reads the same settings (flags or environment)
// as the process it checks, so the probe follows them.
func healthcheckTarget(c config, url string, metrics bool) (string, error) {
	if url != "" {
		return url, nil
	}
	addr, flag, path := c.Listen, "--listen", "/readyz"
	if metrics {
		if c.MetricsListen == "" {
			return "", nil
		}
		addr, flag, path = c.MetricsListen, "--metrics-listen", "/healthz"
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("healthcheck: %s %q: %w", flag, addr, err)
	}
	if ip := net.ParseIP(host); host == "" || ip != nil && ip.IsUnspecified() {
		// A process listening on every address answers on loopback.
		host = "127.0.0.1"
	}
	return "http://" + net.JoinHostPort(host, port) + path, nil
}
