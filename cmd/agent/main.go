// Command kong-watcher-agent is the sidecar: it finds the gateway's nginx processes, attaches
// its eBPF probes and reports what it sees (logs, /stats, /metrics). Configuration comes from
// the environment (see agent/app.FromEnv and the README).
//
//	kong-watcher-agent              run the agent
//	kong-watcher-agent top [URL]    show a running agent's /stats as a refreshing table
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/app"
	"github.com/kong-watcher/kong-watcher/agent/logging"
	"github.com/kong-watcher/kong-watcher/agent/report"
	"github.com/kong-watcher/kong-watcher/internal/version"
)

func main() {
	if len(os.Args) > 1 {
		switch os.Args[1] {
		case "top":
			os.Exit(top(os.Args[2:]))
		case "version", "--version":
			fmt.Println(version.Version)
			return
		case "-h", "--help", "help":
			fmt.Fprint(os.Stderr, usage)
			return
		default:
			fmt.Fprintf(os.Stderr, "unknown command %q\n%s", os.Args[1], usage)
			os.Exit(2)
		}
	}
	os.Exit(run())
}

const usage = `usage:
  kong-watcher-agent             run the agent (configured by LOG_LEVEL, ENABLE_JSON_LOG,
                                 KONG_PROCESS_NAME, STATS_INTERVAL, METRICS_ADDR, POD_NAME,
                                 POD_NAMESPACE)
  kong-watcher-agent top [URL] [-n N] [-i 1s]
                                 show a running agent's stats as a refreshing table
                                 (URL defaults to http://127.0.0.1:9464/stats)
  kong-watcher-agent version
`

func run() int {
	cfg, err := app.FromEnv(app.OSEnv)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	log, zlog, err := logging.New(cfg.LogLevel, cfg.JSONLog)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	defer zlog.Sync() //nolint:errcheck
	log.Info("kong-watcher agent starting", "version", version.Version, "processName", cfg.ProcessName,
		"statsInterval", cfg.StatsInterval.String(), "metricsAddr", cfg.MetricsAddr, "dataPath", cfg.DataPath,
		"pod", cfg.PodNamespace+"/"+cfg.PodName)

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()

	agent, err := app.New(cfg, log)
	if err != nil {
		log.Error(err, "the agent cannot start")
		return 1
	}
	defer agent.Close()

	srv := report.NewServer(cfg.MetricsAddr, agent.Stats, agent.Ready, agent.Registry, log.WithName("http"))
	if err := srv.Start(ctx); err != nil {
		log.Error(err, "cannot serve /metrics and /stats", "addr", cfg.MetricsAddr)
		return 1
	}

	go statsLoop(ctx, cfg.StatsInterval, agent, log)

	runErr := make(chan error, 1)
	go func() { runErr <- agent.Run(ctx) }()
	select {
	case <-ctx.Done():
	case <-runErr:
	}
	log.Info("kong-watcher agent stopping")
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return 0
}

// statsLoop logs the stats every interval and starts a new window.
func statsLoop(ctx context.Context, every time.Duration, agent *app.Agent, log interface {
	Info(string, ...any)
}) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		agent.Aggregator.Rotate()
		log.Info("traffic stats", report.StatsLine(agent.Stats())...)
	}
}
