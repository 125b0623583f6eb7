package app

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

	"github.com/kong-watcher/kong-watcher/agent/kube"
	"github.com/kong-watcher/kong-watcher/agent/logging"
	"github.com/kong-watcher/kong-watcher/agent/supervise"
	"github.com/kong-watcher/kong-watcher/api/agentenv"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/internal/version"
)

// Main is the agent's process, configured by env (OSEnv in production), until SIGINT or
// SIGTERM; it returns the exit status. In its container (KONG_WATCHER_SUPERVISE) the process
// only keeps the agent running as its child, with the same args (see agent/supervise).
func Main(args []string, env func(string) (string, bool), stderr io.Writer) int {
	if sup, _ := agentenv.Supervise.Get(env); sup && !supervise.Child() {
		exe, err := os.Executable()
		if err == nil {
			return supervise.Run(context.Background(), exe, args, supervise.Options{})
		}
		fmt.Fprintf(stderr, "cannot find the agent's own binary (%v); running unsupervised\n", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	return Serve(ctx, env, stderr)
}

// Serve runs the agent until ctx ends. Only an invalid configuration ends it early (exit
// status 2, at start); every fault after that (no BPF, the metrics port taken, the manager
// away, a bug in a goroutine) is logged and reported while the agent stays up: a sidecar that
// exits is restarted by the kubelet, and meanwhile Kong's whole pod is NotReady.
func Serve(ctx context.Context, env func(string) (string, bool), stderr io.Writer) (code int) {
	cfg, err := FromEnv(env)
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

	// Without a data path (no BPF capability, a kernel without uprobe support, ...) the agent
	// is disabled: it says why (log, /readyz, a ProbeAttachFailed Event) and stays up serving
	// /healthz. Exiting instead would make the kubelet restart it in a back-off loop, and a
	// crash-looping sidecar keeps the whole pod NotReady: Kong would be taken out of its
	// Service by its monitor.
	dp, disabled := loadDataPaths(cfg, log)
	if disabled != nil {
		log.Error(disabled, "the agent cannot start: NO requests are counted; it stays up so the pod (and Kong) stay Ready")
	}

	// The Kubernetes reporter: only in a pod the webhook injected (the manager's URL and CA, the
	// pod's name and a projected token); standalone the agent reports to logs and HTTP only. It
	// never blocks the data path: it runs in its own goroutine and only reads the agent's
	// Stats. A disabled agent's reporter sends Events only. It is built before the agent (whose
	// Notifier it is) and the HTTP server (so that a metrics port found taken becomes an Event).
	var agent *Agent
	var stats func() v1alpha1.Stats
	var windows chan struct{} // the agent tells the reporter of each new stats window
	if disabled == nil {
		stats = func() v1alpha1.Stats { return agent.Stats() } // called once the reporter runs, below
		windows = make(chan struct{}, 1)
	}
	rep := newReporter(cfg, stats, windows, log)
	agent = newAgent(cfg, log, dp, disabled, Options{Notify: notifier(rep), WindowClosed: windows})
	defer agent.Close()
	if rep != nil {
		if disabled != nil {
			rep.AgentDisabled(disabled)
		}
		goSafe(log, "the Kubernetes reporter", func() { rep.Run(ctx) })
	}
	srv := agent.StartHTTP(ctx, portNotifier(rep))

	// Run returns before ctx ends only after a fault it logged (and /readyz reports), or at once
	// when disabled: the endpoints stay up all the same until the agent is stopped.
	_ = agent.Run(ctx)
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
func newReporter(cfg Config, stats func() v1alpha1.Stats, windowClosed <-chan struct{}, log logr.Logger) *kube.Reporter {
	if cfg.PodName == "" || cfg.PodNamespace == "" || cfg.ManagerURL == "" {
		log.Info(v1alpha1.EnvPodName + ", " + v1alpha1.EnvPodNamespace + " or " + v1alpha1.EnvManagerURL +
			" not set: running standalone (no pod annotations or Events)")
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

// notifier and portNotifier are rep as the agent's Notifier and PortNotifier: nil, not an
// interface holding a nil *Reporter, when there is no reporter.
func notifier(rep *kube.Reporter) Notifier {
	if rep == nil {
		return nil
	}
	return rep
}

func portNotifier(rep *kube.Reporter) PortNotifier {
	if rep == nil {
		return nil
	}
	return rep
}

// goSafe runs fn in a goroutine; a panic in it is logged and ends only that goroutine, not
// the process (see Serve).
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
