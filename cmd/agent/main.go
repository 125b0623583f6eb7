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

	"github.com/go-logr/logr"
	"k8s.io/klog/v2"

	"github.com/kong-watcher/kong-watcher/agent/app"
	"github.com/kong-watcher/kong-watcher/agent/kube"
	"github.com/kong-watcher/kong-watcher/agent/logging"
	"github.com/kong-watcher/kong-watcher/agent/report"
	v1alpha1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
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
                                 POD_NAMESPACE, TRAFFIC_STATS_EVENT_INTERVAL,
                                 HIGH_ERROR_RATE_THRESHOLD, HIGH_LATENCY_P99_MS,
                                 ALERT_MIN_REQUESTS; KUBECONFIG outside a pod)
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
		return disabled(ctx, cfg, log, err)
	}
	defer agent.Close()

	srv := report.NewServer(cfg.MetricsAddr, agent.Stats, agent.Ready, agent.Registry, log.WithName("http"))
	if err := srv.Start(ctx); err != nil {
		log.Error(err, "cannot serve /metrics and /stats", "addr", cfg.MetricsAddr)
		return 1
	}

	go statsLoop(ctx, cfg.StatsInterval, agent, log)

	// The Kubernetes reporter: only in a pod (POD_NAME and POD_NAMESPACE from the downward API);
	// standalone the agent reports to logs and HTTP only. It never blocks the data path: it
	// runs in its own goroutine and only reads agent.Stats().
	if cfg.PodName != "" && cfg.PodNamespace != "" {
		// client-go logs through klog: into the agent's log, a repeated error once per 10 min.
		klog.SetLogger(kube.ClientLogger(log.WithName("client-go"), 0))
		if rep, err := newReporter(cfg, agent.Stats, log); err != nil {
			log.Error(err, "cannot report to Kubernetes (annotations, Events); continuing with logs and HTTP only")
		} else {
			agent.Notify = rep
			log.Info("reporting to Kubernetes: pod annotations and Events", "pod", cfg.PodNamespace+"/"+cfg.PodName,
				"trafficStatsEvery", cfg.TrafficStatsEventInterval.String(), "highErrorRate", cfg.HighErrorRateThreshold,
				"highLatencyP99Ms", cfg.HighLatencyP99Ms, "alertMinRequests", cfg.AlertMinRequests)
			go func() { _ = rep.Run(ctx) }()
		}
	} else {
		log.Info("POD_NAME/POD_NAMESPACE not set: running standalone (no pod annotations or Events)")
	}

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

// disabled is what the agent does when it cannot start its data path at all (no BPF
// capability, a kernel without uprobe support, ...): it says why (log, /readyz, and a
// ProbeAttachFailed Event on the pod) and then stays up, serving /healthz, until it is
// stopped. Exiting instead would make the kubelet restart it in a back-off loop, and a
// crash-looping sidecar keeps the whole pod NotReady: Kong would be taken out of its Service
// by its monitor.
func disabled(ctx context.Context, cfg app.Config, log logr.Logger, cause error) int {
	log.Error(cause, "the agent cannot start: NO requests are counted; it stays up so the pod (and Kong) stay Ready")
	stats := func() v1alpha1.Stats {
		return v1alpha1.Stats{APIVersion: v1alpha1.StatsAPIVersion, Kind: v1alpha1.StatsKind}
	}
	ready := func() (bool, string) { return false, "the agent cannot start: " + cause.Error() }
	// The usual metrics, with nothing attached: kong_watcher_probes_attached 0 and
	// kong_watcher_info{data_path=""} are what a Prometheus alert on a blind agent looks for.
	reg := report.NewRegistry()
	m := report.NewMetrics(report.MetricsOptions{})
	if err := m.Register(reg); err != nil {
		log.Error(err, "registering metrics")
	}
	m.SetInfo(version.Version, "")
	m.SetProbesAttached(0)
	srv := report.NewServer(cfg.MetricsAddr, stats, ready, reg, log.WithName("http"))
	if err := srv.Start(ctx); err != nil {
		log.Error(err, "cannot serve /healthz and /readyz either", "addr", cfg.MetricsAddr)
	}
	if cfg.PodName != "" && cfg.PodNamespace != "" {
		klog.SetLogger(kube.ClientLogger(log.WithName("client-go"), 0))
		if rep, err := newReporter(cfg, stats, log); err != nil {
			log.Error(err, "cannot report to Kubernetes")
		} else {
			rep.AgentDisabled(cause)
			go rep.RunEventsOnly(ctx)
		}
	}
	<-ctx.Done()
	log.Info("kong-watcher agent stopping")
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return 0
}

func newReporter(cfg app.Config, stats func() v1alpha1.Stats, log logr.Logger) (*kube.Reporter, error) {
	c, err := kube.ClientFromEnv()
	if err != nil {
		return nil, err
	}
	return kube.New(kube.Options{
		Client:               c,
		Namespace:            cfg.PodNamespace,
		PodName:              cfg.PodName,
		Stats:                stats,
		Interval:             cfg.StatsInterval,
		TrafficStatsInterval: cfg.TrafficStatsEventInterval,
		Thresholds: kube.Thresholds{ErrorRate: cfg.HighErrorRateThreshold, LatencyP99Ms: cfg.HighLatencyP99Ms,
			MinRequests: cfg.AlertMinRequests},
		Log: log.WithName("kube"),
	})
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
