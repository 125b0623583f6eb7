// Command kong-fixture runs the Kong-like gateway fixture (package test/fixture) outside
// tests, for the demo and the benchmarks; hack/gateway.sh wraps it.
//
//	kong-fixture serve -dir DIR [-workers N] [-http-port P] [-https-port P] [-kong TOP]
//	    start nginx with prefix DIR, write DIR/fixture.env, run until SIGTERM/SIGINT, stop.
//	    With -kong: real Kong (hack/kong.sh's build TOP, test/fixture's Kong harness: DB-less,
//	    its routes and plugins, the proxy, Admin API and Status API on 127.0.0.1 with their
//	    KONG_*_LISTEN in Kong's environment), prefix DIR/kong; the ports are always free ones.
//	kong-fixture drive -dir DIR [-n 200] [-concurrency 4]
//	    send the mixed workload to the gateway running in DIR (Kong's mix on Kong); print a
//	    JSON summary.
//	kong-fixture load -dir DIR [-rate 200] [-duration 10s] [-route /fast] [-proto http1]
//	    paced (open-loop) load; print a JSON summary.
//	kong-fixture probe -dir DIR [-duration 10s]
//	    Kong only: the Admin and Status API traffic of a pod: the kubelet's probes on the
//	    Status API (/status/ready and /status every second, a Prometheus scrape of /metrics
//	    every 5 s) and an operator's Admin API reads every 2 s (one of them a 404).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/kong-watcher/kong-watcher/test/fixture"
)

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "serve":
		err = serve(os.Args[2:])
	case "drive":
		err = drive(os.Args[2:])
	case "load":
		err = load(os.Args[2:])
	case "probe":
		err = probe(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "kong-fixture:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: kong-fixture serve|drive|load|probe -dir DIR [flags]")
	os.Exit(2)
}

func serve(args []string) error {
	fs := flag.NewFlagSet("serve", flag.ExitOnError)
	dir := fs.String("dir", "", "prefix directory (required)")
	workers := fs.Int("workers", 2, "nginx worker processes")
	single := fs.Bool("single-process", false, "master_process off")
	httpPort := fs.Int("http-port", 0, "HTTP port on 127.0.0.1 (0: free port)")
	httpsPort := fs.Int("https-port", 0, "HTTPS/HTTP2 port on 127.0.0.1 (0: free port)")
	kongTop := fs.String("kong", "", "run real Kong: the TOP of hack/kong.sh's build")
	fs.Parse(args) //nolint:errcheck // ExitOnError
	if *dir == "" {
		return fmt.Errorf("serve: -dir is required")
	}
	// Signals first: a SIGTERM arriving during start must still stop nginx.
	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	if *kongTop != "" {
		return serveKong(sigs, *dir, *kongTop, *workers)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	g, err := fixture.Start(ctx, fixture.Options{Dir: *dir, Workers: *workers, SingleProcess: *single,
		HTTPPort: *httpPort, HTTPSPort: *httpsPort})
	if err != nil {
		return err
	}
	return run(sigs, g.Prefix, append([]string{"KW_GATEWAY_KIND=fixture"}, gatewayEnv(g)...), g.Reload, g.Stop)
}

// gatewayEnv is the KW_GATEWAY_* lines every gateway has.
func gatewayEnv(g *fixture.Gateway) []string {
	ws, _ := g.WorkerPIDs()
	return []string{
		"KW_GATEWAY_HTTP=" + g.HTTPAddr,
		"KW_GATEWAY_HTTPS=" + g.HTTPSAddr,
		"KW_GATEWAY_PREFIX=" + g.Prefix,
		"KW_GATEWAY_CA=" + g.CAFile,
		"KW_GATEWAY_ACCESS_LOG=" + g.AccessLogPath(),
		"KW_GATEWAY_ERROR_LOG=" + g.ErrorLogPath(),
		fmt.Sprintf("KW_GATEWAY_MASTER_PID=%d", g.MasterPID()),
		"KW_GATEWAY_WORKER_PIDS=" + strings.Trim(strings.Join(strings.Fields(fmt.Sprint(ws)), ","), "[]"),
		fmt.Sprintf("KW_GATEWAY_FIXTURE_PID=%d", os.Getpid()),
	}
}

// run writes dir/fixture.env (env, one per line), which says "ready", prints it, and serves
// until SIGTERM or SIGINT (SIGHUP: reload); then it removes dir's state files and stops.
func run(sigs <-chan os.Signal, dir string, env []string, reload, stop func() error) error {
	text := strings.Join(env, "\n") + "\n"
	// Written last and atomically: its presence means "ready".
	envPath := filepath.Join(dir, "fixture.env")
	err := os.WriteFile(envPath+".tmp", []byte(text), 0o644)
	if err == nil {
		err = os.Rename(envPath+".tmp", envPath)
	}
	if err != nil {
		stop() //nolint:errcheck
		return err
	}
	fmt.Print(text)
	for sig := range sigs {
		if sig == syscall.SIGHUP { // reload nginx, keep running
			if err := reload(); err != nil {
				fmt.Fprintln(os.Stderr, "kong-fixture: reload:", err)
			}
			continue
		}
		break
	}
	os.Remove(envPath)
	os.Remove(filepath.Join(dir, fixture.StateFile))
	os.Remove(filepath.Join(dir, kongStateFile))
	return stop()
}

func drive(args []string) error {
	fs := flag.NewFlagSet("drive", flag.ExitOnError)
	dir := fs.String("dir", "", "prefix directory of a running gateway (required)")
	n := fs.Int("n", 200, "requests to send")
	conc := fs.Int("concurrency", 4, "concurrent senders")
	fs.Parse(args) //nolint:errcheck
	g, err := fixture.Attach(*dir)
	if err != nil {
		return err
	}
	defer g.Stop() //nolint:errcheck // releases clients only
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	if k, err := attachKong(*dir, g); err != nil {
		return err
	} else if k != nil {
		return driveKong(ctx, k, *n, *conc)
	}
	sent, err := g.DriveMixed(ctx, *n, *conc)
	out := map[string]any{"total": sent.Total(), "byStatus": sent.ByStatus, "byClass": sent.ByClass()}
	if err != nil {
		out["error"] = err.Error()
	}
	json.NewEncoder(os.Stdout).Encode(out) //nolint:errcheck
	return err
}

func load(args []string) error {
	fs := flag.NewFlagSet("load", flag.ExitOnError)
	dir := fs.String("dir", "", "prefix directory of a running gateway (required)")
	rate := fs.Int("rate", 200, "requests per second")
	dur := fs.Duration("duration", 10*time.Second, "how long")
	route := fs.String("route", "/fast", "path and query")
	host := fs.String("host", "", "Host header (default: the default server)")
	proto := fs.String("proto", "http1", "http1|https1|http2")
	fs.Parse(args) //nolint:errcheck
	p, ok := map[string]fixture.Proto{"http1": fixture.HTTP1, "https1": fixture.HTTPS1, "http2": fixture.HTTP2}[*proto]
	if !ok {
		return fmt.Errorf("load: unknown -proto %q", *proto)
	}
	g, err := fixture.Attach(*dir)
	if err != nil {
		return err
	}
	defer g.Stop() //nolint:errcheck
	ctx, cancel := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer cancel()
	r, err := g.LoadWith(ctx, fixture.LoadOptions{Rate: *rate, Duration: *dur, Route: *route, Host: *host, Proto: p})
	json.NewEncoder(os.Stdout).Encode(map[string]any{ //nolint:errcheck
		"sent": r.Sent, "completed": r.Completed, "failed": r.Failed, "dropped": r.Dropped,
		"byStatus": r.ByStatus, "p50_ms": ms(r.P50), "p99_ms": ms(r.P99), "max_ms": ms(r.Max),
		"elapsed_s": r.Elapsed.Seconds(),
	})
	return err
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }
