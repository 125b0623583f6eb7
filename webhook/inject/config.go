// Package inject decides whether a Kong pod gets the kong-watcher agent, builds the agent
// sidecar, and serves the mutating admission webhook that applies it as a JSON patch.
//
// The flow follows Linkerd's proxy injector: Decide reports why a pod is or is not injected,
// Inject mutates the pod, the Webhook turns the difference into a JSON patch and records an
// Event on the pod's owner so that `kubectl describe deployment` (via its ReplicaSet) shows
// what happened. The webhook never denies a pod: monitoring must never stop Kong from starting.
package inject

import (
	"errors"
	"fmt"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/kong-watcher/kong-watcher/api/agentenv"
	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/internal/version"
)

// Config is the agent settings the webhook injects (from the webhook's flags).
type Config struct {
	Image         string
	PullPolicy    corev1.PullPolicy
	Resources     corev1.ResourceRequirements
	LogLevel      string // as agentenv.LogLevel reads it
	JSONLog       bool
	ProcessName   string
	StatsInterval time.Duration
	NativeSidecar bool
	MetricsPort   int32
	// AgentVersion is written to the kong-watcher.io/injected annotation and Events.
	AgentVersion string
	// Privileged is an escape hatch for kernels without uprobe_multi (< 6.6), where attaching
	// uprobes through perf_event_open needs CAP_SYS_ADMIN. Default false.
	Privileged bool
	// ExcludedNamespaces never get the agent (kube-system, the webhook's own namespace).
	ExcludedNamespaces []string
	// Alert thresholds passed to the agent as HIGH_ERROR_RATE_THRESHOLD, HIGH_LATENCY_P99_MS
	// and ALERT_MIN_REQUESTS; empty injects none, leaving the agent's default. Per pod, the
	// threshold annotations still win.
	HighErrorRateThreshold string
	HighLatencyP99Ms       string
	AlertMinRequests       string
	// Report is where the agent sends its stats and Events; a zero URL injects no reporting
	// (the agent then serves /metrics, /stats and logs only).
	Report ReportConfig
}

// ReportConfig is how the agent reaches the manager.
type ReportConfig struct {
	// URL of the manager's report endpoint (KONG_WATCHER_MANAGER_URL).
	URL string
	// FallbackAddr is the manager Service's cluster IP:port (KONG_WATCHER_MANAGER_ADDR), for
	// agents whose pod cannot resolve the URL's name; "" injects none.
	FallbackAddr string
	// Audience of the projected token (v1alpha1.ReportAudience by default).
	Audience string
	// TokenExpirationSeconds is the projected token's lifetime; the kubelet rotates it at 80%.
	TokenExpirationSeconds int64
	// CA returns the PEM bundle the agent trusts for the manager (KONG_WATCHER_MANAGER_CA); nil
	// or empty: reporting is not injected (the webhook has no CA to hand out yet).
	CA func() []byte
}

// DefaultConfig returns the settings used when the webhook is started without flags.
func DefaultConfig() Config {
	return Config{
		Image:      "kong-watcher/agent:" + version.Version,
		PullPolicy: corev1.PullIfNotPresent,
		Resources: corev1.ResourceRequirements{
			Requests: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("100m"),
				corev1.ResourceMemory: resource.MustParse("128Mi"),
			},
			Limits: corev1.ResourceList{
				corev1.ResourceCPU:    resource.MustParse("200m"),
				corev1.ResourceMemory: resource.MustParse("256Mi"),
			},
		},
		LogLevel:    agentenv.LogLevel.Default,
		ProcessName: agentenv.ProcessName.Default,
		// JSON logs, unlike the agent's default: in a cluster a log collector reads them.
		JSONLog:            true,
		StatsInterval:      agentenv.StatsInterval.DefaultValue(),
		NativeSidecar:      true,
		MetricsPort:        kwv1.DefaultMetricsPort,
		AgentVersion:       version.Version,
		ExcludedNamespaces: []string{"kube-system"},
	}
}

// Validate reports every setting that would make the injected pod invalid or the agent
// useless. The API server rejects a pod whose patched spec fails validation no matter the
// webhook's failurePolicy, so a bad flag must stop the webhook at start-up instead.
func (c Config) Validate() error {
	var errs []error
	if c.Image == "" {
		errs = append(errs, errors.New("image must not be empty"))
	} else if strings.ContainsAny(c.Image, " \t\r\n") {
		errs = append(errs, fmt.Errorf("image %q must not contain whitespace", c.Image))
	}
	switch c.PullPolicy {
	case corev1.PullAlways, corev1.PullIfNotPresent, corev1.PullNever:
	default:
		errs = append(errs, fmt.Errorf("pull policy %q must be one of Always, IfNotPresent, Never", c.PullPolicy))
	}
	if err := validateResources(c.Resources); err != nil {
		errs = append(errs, err)
	}
	// The agent reads the port as part of METRICS_ADDR, as rendered for any pod.
	if err := agentenv.MetricsAddr.Check(metricsAddr(c.MetricsPort, false)); err != nil {
		errs = append(errs, fmt.Errorf("metrics port %d: %w", c.MetricsPort, err))
	}
	if c.AgentVersion == "" {
		errs = append(errs, errors.New("agent version must not be empty (it is written to the "+
			"kong-watcher.io/injected annotation)"))
	} else if len(c.AgentVersion) > 63 || strings.ContainsAny(c.AgentVersion, " \t\r\n") {
		errs = append(errs, fmt.Errorf("agent version %q must be at most 63 characters without whitespace", c.AgentVersion))
	}
	// The agent's own rules (api/agentenv), for the values as rendered into its environment.
	// An empty alert setting is not rendered at all: the agent's default applies.
	for _, o := range []struct {
		v        string
		s        agentenv.Var
		optional bool
	}{
		{c.LogLevel, &agentenv.LogLevel, false},
		{c.ProcessName, &agentenv.ProcessName, false},
		{agentenv.StatsInterval.Render(c.StatsInterval), &agentenv.StatsInterval, false},
		{c.HighErrorRateThreshold, &agentenv.HighErrorRateThreshold, true},
		{c.HighLatencyP99Ms, &agentenv.HighLatencyP99Ms, true},
		{c.AlertMinRequests, &agentenv.AlertMinRequests, true},
	} {
		if o.v == "" && o.optional {
			continue
		}
		if err := o.s.Check(o.v); err != nil {
			errs = append(errs, fmt.Errorf("%s %w", o.s.Info().Label, err))
		}
	}
	for _, ns := range c.ExcludedNamespaces {
		if strings.TrimSpace(ns) == "" {
			errs = append(errs, errors.New("excluded namespaces must not contain an empty name"))
			break
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("invalid injection config: %w", err)
	}
	return nil
}

// validateResources rejects requests above limits: the API server would refuse every pod the
// webhook patches with them.
func validateResources(r corev1.ResourceRequirements) error {
	var errs []error
	for name, req := range r.Requests {
		if req.Sign() < 0 {
			errs = append(errs, fmt.Errorf("resource request %s=%s must not be negative", name, req.String()))
		}
		if lim, ok := r.Limits[name]; ok && req.Cmp(lim) > 0 {
			errs = append(errs, fmt.Errorf("resource request %s=%s exceeds its limit %s", name, req.String(), lim.String()))
		}
	}
	for name, lim := range r.Limits {
		if lim.Sign() < 0 {
			errs = append(errs, fmt.Errorf("resource limit %s=%s must not be negative", name, lim.String()))
		}
	}
	return errors.Join(errs...)
}

// excluded reports whether namespace is one the agent must never be injected into.
func (c Config) excluded(namespace string) bool {
	for _, ns := range c.ExcludedNamespaces {
		if ns == namespace {
			return true
		}
	}
	return false
}
