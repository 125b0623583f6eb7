package v1alpha1

// Domain prefixes every label and annotation kong-watcher owns.
const Domain = "kong-watcher.io"

// Opt-in label, set on the pod template of a Kong Deployment.
const (
	LabelInject      = Domain + "/inject"
	LabelInjectValue = "true"
)

// Per-pod overrides: annotations on the pod template. An invalid value is ignored with an
// admission warning, never a rejected pod. The agent image is deliberately not overridable.
const (
	AnnotationLogLevel      = Domain + "/log-level"
	AnnotationJSONLog       = Domain + "/json-log"
	AnnotationProcessName   = Domain + "/process-name"
	AnnotationStatsInterval = Domain + "/stats-interval"
	AnnotationNativeSidecar = Domain + "/native-sidecar"
	// AnnotationListeners names the gateway's listeners by port, in EnvListeners' syntax
	// ("proxy=8000,8443;admin=8001,8444;status=8100"), for a gateway whose own
	// configuration does not tell them.
	AnnotationListeners = Domain + "/listeners"
)

// Written by the webhook: the agent version injected.
const AnnotationInjected = Domain + "/injected"

// The statistics annotations. The manager writes them on each agent's pod from the agent's
// reports, and on the pod's workload (Deployment, StatefulSet, DaemonSet) from the combined
// reports of its pods. Short and human-readable for `kubectl describe`, except AnnotationStats,
// which holds the bounded machine-readable Stats JSON.
const (
	AnnotationRequests    = Domain + "/requests"
	AnnotationLatency     = Domain + "/latency"
	AnnotationMethods     = Domain + "/methods"
	AnnotationStatus      = Domain + "/status"
	AnnotationTopHosts    = Domain + "/top-hosts"
	AnnotationTopPaths    = Domain + "/top-paths"
	AnnotationLastRequest = Domain + "/last-request"
	AnnotationStats       = Domain + "/stats"
	// AnnotationPods, on a workload only: how many of its pods the combined stats cover.
	AnnotationPods = Domain + "/pods"
)

// ReportedAnnotations are every annotation the manager writes; it changes no other key, label or
// field (config/webhook/policy.yaml enforces that on the API server).
var ReportedAnnotations = []string{
	AnnotationRequests, AnnotationLatency, AnnotationMethods, AnnotationStatus, AnnotationTopHosts,
	AnnotationTopPaths, AnnotationLastRequest, AnnotationStats, AnnotationPods,
}

// Read by the agent from its own pod: alert thresholds overriding HIGH_ERROR_RATE_THRESHOLD
// ("5%" or "0.05") and HIGH_LATENCY_P99_MS (milliseconds).
const (
	AnnotationHighErrorRateThreshold = Domain + "/high-error-rate-threshold"
	AnnotationHighLatencyP99Ms       = Domain + "/high-latency-p99-ms"
)

// AgentContainerName is the name of the injected sidecar container.
const AgentContainerName = "kong-watcher-agent"

// The agent's environment variables. What each means, its default and the values it takes
// are in api/agentenv, which the agent and the webhook both read them with.
const (
	EnvLogLevel      = "LOG_LEVEL"
	EnvJSONLog       = "ENABLE_JSON_LOG"
	EnvProcessName   = "KONG_PROCESS_NAME"
	EnvStatsInterval = "STATS_INTERVAL"
	EnvPodName       = "POD_NAME"
	EnvPodNamespace  = "POD_NAMESPACE"
	EnvMetricsAddr   = "METRICS_ADDR"
	// EnvSupervise "true": the agent runs as the child of a supervisor that restarts it in
	// place when it dies, so its container (a native sidecar: the pod is NotReady while one
	// restarts) never exits. The webhook sets it.
	EnvSupervise = "KONG_WATCHER_SUPERVISE"
	// Alert thresholds, and how often the TrafficStats Event is recorded.
	EnvHighErrorRateThreshold    = "HIGH_ERROR_RATE_THRESHOLD"
	EnvHighLatencyP99Ms          = "HIGH_LATENCY_P99_MS"
	EnvAlertMinRequests          = "ALERT_MIN_REQUESTS"
	EnvTrafficStatsEventInterval = "TRAFFIC_STATS_EVENT_INTERVAL"
	// EnvListeners overrides the listener names the agent learns from Kong's environment.
	EnvListeners = "KONG_WATCHER_LISTENERS"
	// The data path, Lua phase timing and the bounds of the host and path rows.
	EnvDataPath         = "KONG_WATCHER_DATA_PATH"
	EnvLuaPhases        = "KONG_WATCHER_LUA_PHASES"
	EnvLuaSampleEvery   = "KONG_WATCHER_LUA_SAMPLE_EVERY"
	EnvLuaSampleFor     = "KONG_WATCHER_LUA_SAMPLE_FOR"
	EnvMaxHosts         = "KONG_WATCHER_MAX_HOSTS"
	EnvMaxPaths         = "KONG_WATCHER_MAX_PATHS"
	EnvNativeHistograms = "KONG_WATCHER_NATIVE_HISTOGRAMS"
	// For tests and debugging: where the processes are visible, and which gateways to follow.
	EnvProcRoot = "KONG_WATCHER_PROC_ROOT"
	EnvOnlyPIDs = "KONG_WATCHER_ONLY_PIDS"
)

// Agent defaults the webhook needs too (the others are in api/agentenv), and the name of
// the agent's metrics port.
const (
	DefaultProcessName   = "nginx"
	DefaultStatsInterval = "30s"
	DefaultMetricsPort   = 9464
	MetricsPortName      = "kw-metrics"
)

// Event reasons.
const (
	// Agent, on its own pod.
	ReasonKongDetected      = "KongDetected"
	ReasonProbesAttached    = "ProbesAttached"
	ReasonProbeAttachFailed = "ProbeAttachFailed"
	ReasonTrafficStats      = "TrafficStats"
	ReasonHighErrorRate     = "HighErrorRate"
	ReasonHighLatency       = "HighLatency"
	// Normal Events closing an alert episode.
	ReasonHighErrorRateResolved = "HighErrorRateResolved"
	ReasonHighLatencyResolved   = "HighLatencyResolved"
	// Warning: the agent's METRICS_ADDR cannot be bound; it keeps counting and retries.
	ReasonMetricsPortUnavailable = "MetricsPortUnavailable"
	// Webhook, on the pod's owner.
	ReasonInjected         = "Injected"
	ReasonInjectionSkipped = "InjectionSkipped"
)
