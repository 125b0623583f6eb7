// Command kong-watcher-webhook is the mutating admission webhook that injects the
// kong-watcher eBPF agent into Kong pods labelled kong-watcher.io/inject: "true".
// Flags: see `kong-watcher-webhook --help`; the wiring lives in cmd/webhook/app.
package main

import (
	"flag"
	"fmt"
	"os"
	"runtime/debug"
	"strconv"

	"github.com/go-logr/logr"

	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	"github.com/kong-watcher/kong-watcher/cmd/webhook/app"
	"github.com/kong-watcher/kong-watcher/internal/version"
)

func main() {
	opts := app.NewOptions()
	opts.BindFlags(flag.CommandLine)
	zapOpts := zap.Options{Development: false}
	zapOpts.BindFlags(flag.CommandLine)
	showVersion := flag.Bool("version", false, "Print the version and exit.")
	flag.Parse()
	if *showVersion {
		fmt.Println(version.Version)
		return
	}

	log := zap.New(zap.UseFlagOptions(&zapOpts))
	setMemoryLimit(log)
	ctrl.SetLogger(log)
	setupLog := log.WithName("setup")

	if err := opts.Complete(); err != nil {
		setupLog.Error(err, "invalid flags")
		os.Exit(2)
	}
	cfg, err := ctrl.GetConfig()
	if err != nil {
		setupLog.Error(err, "no Kubernetes client configuration")
		os.Exit(1)
	}
	if err := app.Run(ctrl.SetupSignalHandler(), cfg, opts, log); err != nil {
		setupLog.Error(err, "webhook stopped")
		os.Exit(1)
	}
}

// setMemoryLimit sets the Go runtime's soft memory limit to 90% of the container's (MEMORY_LIMIT,
// from the downward API), so the garbage collector works harder before the kernel would kill
// the process; an explicit GOMEMLIMIT wins.
func setMemoryLimit(log logr.Logger) {
	if os.Getenv("GOMEMLIMIT") != "" {
		return
	}
	limit, err := strconv.ParseInt(os.Getenv("MEMORY_LIMIT"), 10, 64)
	if err != nil || limit <= 0 {
		return
	}
	debug.SetMemoryLimit(limit / 10 * 9)
	log.V(1).Info("soft memory limit", "bytes", limit/10*9)
}
