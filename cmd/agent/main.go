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
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"syscall"
	"time"

	"github.com/go-logr/logr"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"

	"github.com/kong-watcher/kong-watcher/agent/app"
	"github.com/kong-watcher/kong-watcher/agent/kube"
	"github.com/kong-watcher/kong-watcher/agent/logging"
	"github.com/kong-watcher/kong-watcher/agent/report"
	"github.com/kong-watcher/kong-watcher/agent/supervise"
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

func run() int {
	if os.Getenv(v1alpha1.EnvSupervise) == "true" && !supervise.Child() {
		// In the container: this process only keeps the agent running (see agent/supervise).
		exe, err := os.Executable()
		if err == nil {
			return supervise.Run(context.Background(), exe, os.Args[1:], supervise.Options{})
		}
		fmt.Fprintf(os.Stderr, "cannot find the agent's own binary (%v); running unsupervised\n", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return runAgent(ctx, app.OSEnv, os.Stderr)
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

// runAgent runs the agent until ctx ends. Only an invalid configuration ends it early (exit
// status 2, at start); every fault after that (no BPF, the metrics port taken, the API server
// away, a bug in a goroutine) is logged and reported while the agent stays up: a sidecar that
// exits is restarted by the kubelet, and meanwhile Kong's whole pod is NotReady.
func runAgent(ctx context.Context, env func(string) (string, bool), stderr io.Writer) (code int) {
	cfg, err := app.FromEnv(env)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	log, zlog, err := logging.New(cfg.LogLevel, cfg.JSONLog)
	if err != nil {
		fmt.Fprintln(stderr, err)
		return 2
	}
	defer zlog.Sync() //nolint:errcheck
	defer func() {
		// A bug on the start path: what started keeps running (the endpoints, if already up),
		// and the process waits to be stopped rather than exit.
		if v := recover(); v != nil {
			log.Error(fmt.Errorf("the agent failed to start (a bug; please report it): %v", v),
				"it stays up, idle, until stopped", "stack", string(debug.Stack()))
			<-ctx.Done()
			code = 0
		}
	}()
	// client-go's own goroutines (the Event broadcaster's, say) log a panic and then re-raise
	// it by default; a bug in reporting must not take the agent, and Kong's readiness, down.
	utilruntime.ReallyCrash = false
	log.Info("kong-watcher agent starting", "version", version.Version, "processName", cfg.ProcessName,
		"statsInterval", cfg.StatsInterval.String(), "metricsAddr", cfg.MetricsAddr, "dataPath", cfg.DataPath,
		"pod", cfg.PodNamespace+"/"+cfg.PodName)

	agent, err := newAgent(cfg, log)
	if err != nil {
		return disabled(ctx, cfg, log, err)
	}
	defer agent.Close()

	// The Kubernetes reporter: only in a pod the webhook injected (the manager's URL and CA, the
	// pod's name and a projected token); standalone the agent reports to logs and HTTP only. It
	// never blocks the data path: it runs in its own goroutine and only reads agent.Stats(). It
	// is built before the HTTP server so that a metrics port found taken becomes an Event.
	windows := make(chan struct{}, 1) // the stats loop tells the reporter of each new window
	rep := newReporter(cfg, agent.Stats, windows, log)
	if rep != nil {
		agent.Notify = rep
	}

	srv := agent.StartHTTP(ctx, portNotifier(rep))
	goSafe(log, "the stats log", func() { statsLoop(ctx, cfg.StatsInterval, agent, windows, log) })
	if rep != nil {
		goSafe(log, "the Kubernetes reporter", func() { rep.Run(ctx) })
	}

	// Run returns before ctx ends only after a fault it logged (and /readyz reports): the
	// endpoints stay up all the same until the agent is stopped.
	_ = agent.Run(ctx)
	<-ctx.Done()
	log.Info("kong-watcher agent stopping")
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return 0
}

// newAgent is app.New, a panic in it being an error like any other reason the data path
// cannot start.
func newAgent(cfg app.Config, log logr.Logger) (a *app.Agent, err error) {
	defer func() {
		if v := recover(); v != nil {
			log.Error(fmt.Errorf("%v", v), "loading the data path panicked (a bug; please report it)", "stack", string(debug.Stack()))
			a, err = nil, fmt.Errorf("loading the data path failed: %v", v)
		}
	}()
	return app.New(cfg, log)
}

// portNotifier is rep as an app.PortNotifier; nil (no Event) when there is no reporter.
func portNotifier(rep *kube.Reporter) app.PortNotifier {
	if rep == nil {
		return nil
	}
	return rep
}

// goSafe runs fn in a goroutine; a panic in it is logged and ends only that goroutine, not
// the process (see runAgent).
func goSafe(log logr.Logger, what string, fn func()) {
	go func() {
		defer func() {
			if v := recover(); v != nil {
				log.Error(fmt.Errorf("%s failed (a bug; please report it): %v", what, v),
					"the agent stays up, but this part of it stopped", "stack", string(debug.Stack()))
			}
		}()
		fn()
	}()
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
	rep := newReporter(cfg, nil, nil, log)
	if rep != nil {
		rep.AgentDisabled(cause)
		goSafe(log, "the Kubernetes reporter", func() { rep.Run(ctx) })
	}
	srv := app.StartHTTP(ctx, app.HTTPOptions{Addr: cfg.MetricsAddr, Stats: stats, Ready: ready, Registry: reg,
		Notify: portNotifier(rep), Log: log.WithName("http")})
	<-ctx.Done()
	log.Info("kong-watcher agent stopping")
	sctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	_ = srv.Shutdown(sctx)
	return 0
}

// newReporter is the reporter to the manager, or nil when the agent runs standalone or the
// reporter cannot be built (said in the log: the agent goes on with logs and HTTP). stats nil:
// an agent that sends Events only.
func newReporter(cfg app.Config, stats func() v1alpha1.Stats, windowClosed <-chan struct{}, log logr.Logger) *kube.Reporter {
	if cfg.PodName == "" || cfg.PodNamespace == "" || cfg.ManagerURL == "" {
		log.Info("POD_NAME, POD_NAMESPACE or " + v1alpha1.EnvManagerURL + " not set: running standalone (no pod annotations or Events)")
		return nil
	}
	rep, err := kube.New(kube.Options{
		URL:                  cfg.ManagerURL,
		FallbackAddr:         cfg.ManagerAddr,
		CA:                   cfg.ManagerCA,
		TokenFile:            cfg.TokenFile,
		Namespace:            cfg.PodNamespace,
		PodName:              cfg.PodName,
		Stats:                stats,
		Interval:             cfg.StatsInterval,
		WindowClosed:         windowClosed,
		TrafficStatsInterval: cfg.TrafficStatsEventInterval,
		Thresholds: kube.Thresholds{ErrorRate: cfg.HighErrorRateThreshold, LatencyP99Ms: cfg.HighLatencyP99Ms,
			MinRequests: cfg.AlertMinRequests},
		Log: log.WithName("kube"),
	})
	if err != nil {
		log.Error(err, "cannot report to Kubernetes (annotations, Events); continuing with logs and HTTP only")
		return nil
	}
	log.Info("reporting to the kong-watcher manager: pod annotations and Events", "pod", cfg.PodNamespace+"/"+cfg.PodName,
		"manager", cfg.ManagerURL, "trafficStatsEvery", cfg.TrafficStatsEventInterval.String(),
		"highErrorRate", cfg.HighErrorRateThreshold, "highLatencyP99Ms", cfg.HighLatencyP99Ms, "alertMinRequests", cfg.AlertMinRequests)
	return rep
}

// statsLoop logs the stats every interval and starts a new window.
func statsLoop(ctx context.Context, every time.Duration, agent *app.Agent, windowClosed chan<- struct{}, log interface {
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
		select { // never wait for the reporter: it evaluates the window when it can
		case windowClosed <- struct{}{}:
		default:
		}
	}
}
