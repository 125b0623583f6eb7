package v1alpha1

// The agent reports to the manager (the Deployment that also serves the webhook) instead of
// writing to the API server itself: every STATS_INTERVAL it POSTs a Report, as JSON, over TLS to
// ReportPath on the manager's Service, with `Authorization: Bearer <token>` where the token is
// the pod's projected service-account token for ReportAudience. The manager verifies the token
// with a TokenReview, takes the pod from the token's claims, writes the pod's statistics
// annotations and records the Events, all with its own identity. Kong's service account needs
// no rights at all.

// ReportPath is where the manager accepts Reports.
const ReportPath = "/report/v1alpha1"

// ReportAudience is the default audience of the agent's projected token. A token for any other
// audience (the API server's, say) is refused, so a stolen report token cannot call the API
// server and an ordinary service-account token cannot report.
const ReportAudience = "kong-watcher.io/manager"

// The agent's report settings, injected by the webhook.
const (
	// EnvManagerURL is the manager's report endpoint, e.g.
	// https://kong-watcher-webhook-service.kong-watcher-system.svc:443/report/v1alpha1.
	EnvManagerURL = "KONG_WATCHER_MANAGER_URL"
	// EnvManagerCA is the PEM bundle the agent trusts for the manager's serving certificate (the
	// CA the webhook's certificate rotation manages, as injected with the sidecar).
	EnvManagerCA = "KONG_WATCHER_MANAGER_CA"
	// EnvManagerAddr is the manager Service's cluster IP and port, dialled when the URL's name
	// does not resolve in the pod (its DNS is not the cluster's: hostNetwork, dnsPolicy Default).
	EnvManagerAddr = "KONG_WATCHER_MANAGER_ADDR"
	// EnvTokenFile is the path of the projected token (re-read before every report: the kubelet
	// rotates it).
	EnvTokenFile = "KONG_WATCHER_TOKEN_FILE"
)

// Where the webhook mounts the projected report token in the agent container.
const (
	TokenVolumeName = "kong-watcher-token"
	TokenMountPath  = "/var/run/secrets/kong-watcher.io/report"
	TokenFileName   = "token"
)

const ReportKind = "Report"

// Report is what an agent sends to the manager.
type Report struct {
	APIVersion string `json:"apiVersion"` // StatsAPIVersion
	Kind       string `json:"kind"`       // ReportKind
	// Pod is the pod the agent believes it runs in (POD_NAMESPACE/POD_NAME). The manager refuses
	// a report whose Pod differs from the pod its token is bound to.
	Pod PodRef `json:"pod"`
	// Stats is the agent's current Stats; nil when the agent has nothing to report (it could not
	// start its data path) and sends only Events.
	Stats *Stats `json:"stats,omitempty"`
	// Events the agent wants recorded on its pod, oldest first (at most MaxReportEvents, each
	// message at most MaxEventMessage bytes; reasons from the agent's list only).
	Events []ReportEvent `json:"events,omitempty"`
}

// PodRef names a pod.
type PodRef struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
}

// ReportEvent is one Event to record.
type ReportEvent struct {
	Type    string `json:"type"` // Normal or Warning
	Reason  string `json:"reason"`
	Message string `json:"message"`
}

// ReportResponse is the manager's answer to an accepted Report.
type ReportResponse struct {
	// Annotations are the pod's current values of the annotations the agent reads
	// (AgentReadAnnotations), so that `kubectl annotate pod` changes its alert thresholds live.
	Annotations map[string]string `json:"annotations,omitempty"`
}

// Bounds the manager enforces on a Report.
const (
	MaxReportBytes   = 512 << 10
	MaxReportEvents  = 50
	MaxEventMessage  = 1024
	MaxReportedRows  = 1000 // hosts or paths per summary
	MaxReportedNames = 512  // bytes of a host or path row name, a method or a status code
)

// AgentEventReasons are the Event reasons an agent may ask the manager to record.
var AgentEventReasons = []string{
	ReasonKongDetected, ReasonProbesAttached, ReasonProbeAttachFailed, ReasonTrafficStats,
	ReasonHighErrorRate, ReasonHighLatency, ReasonHighErrorRateResolved, ReasonHighLatencyResolved,
	ReasonMetricsPortUnavailable,
}

// AgentReadAnnotations are the pod annotations returned to the agent in ReportResponse.
var AgentReadAnnotations = []string{AnnotationHighErrorRateThreshold, AnnotationHighLatencyP99Ms}
