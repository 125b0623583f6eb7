package app

import (
	"context"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kong-watcher/kong-watcher/agent/report"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// PortNotifier hears that the agent's HTTP address cannot be bound (the Kubernetes reporter
// records a MetricsPortUnavailable Warning Event). It is called from the server's retry
// goroutine, at the first failure and then every few minutes while it lasts; it must not block.
type PortNotifier interface {
	MetricsPortUnavailable(addr string, err error)
}

// HTTPOptions configures StartHTTP.
type HTTPOptions struct {
	// Addr is METRICS_ADDR (Config.MetricsAddr).
	Addr string
	// Stats, Ready and Registry are what the endpoints serve (see report.NewServer).
	Stats    func() v1alpha1.Stats
	Ready    func() (bool, string)
	Registry *prometheus.Registry
	// Notify, when set, hears that Addr cannot be bound.
	Notify PortNotifier
	// MaxBindRetry caps the delay between two bind attempts (<= 0: report.DefaultMaxBindRetry).
	MaxBindRetry time.Duration
	Log          logr.Logger
}

// StartHTTP serves the agent's endpoints in the background until ctx ends. It cannot fail:
// when the address is taken (with hostNetwork, by anything on the node; or by Kong or another
// container of the pod that did not declare the port) the agent keeps counting, says why
// (log, o.Notify) and binds as soon as the address frees. Exiting instead would make the
// kubelet restart the sidecar in a back-off loop, and a crash-looping sidecar keeps the
// whole pod NotReady: Kong would be taken out of its Service by its monitor.
func StartHTTP(ctx context.Context, o HTTPOptions) *report.Server {
	srv := report.NewServer(o.Addr, o.Stats, o.Ready, o.Registry, o.Log)
	retry := report.BindRetry{Max: o.MaxBindRetry}
	if o.Notify != nil {
		retry.Unavailable = func(err error) { o.Notify.MetricsPortUnavailable(o.Addr, err) }
	}
	srv.StartRetrying(ctx, retry)
	return srv
}

// StartHTTP serves the agent's endpoints (its Stats, Ready and Registry) on cfg.MetricsAddr;
// see the function StartHTTP.
func (a *Agent) StartHTTP(ctx context.Context, notify PortNotifier) *report.Server {
	return StartHTTP(ctx, HTTPOptions{Addr: a.cfg.MetricsAddr, Stats: a.Stats, Ready: a.Ready, Registry: a.Registry,
		Notify: notify, Log: a.log.WithName("http")})
}
