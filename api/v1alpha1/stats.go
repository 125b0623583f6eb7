package v1alpha1

import "time"

// Stats is the document served on the agent's /stats endpoint and stored (size-bounded) in the
// kong-watcher.io/stats pod annotation.
type Stats struct {
	APIVersion string    `json:"apiVersion"` // "kong-watcher.io/v1alpha1"
	Kind       string    `json:"kind"`       // "Stats"
	Since      time.Time `json:"since"`      // when the agent started counting
	Updated    time.Time `json:"updated"`    // when this document was computed
	// DataPath says where the numbers come from: "nginx-request" (uprobes on nginx's request
	// object), "wire" (libc/OpenSSL read/write, parsed in user space) or "" (nothing attached).
	DataPath string `json:"dataPath,omitempty"`
	// Total covers everything since Since; Window covers the last stats interval.
	Total  Summary `json:"total"`
	Window Summary `json:"window"`
}

const (
	StatsAPIVersion = Domain + "/v1alpha1"
	StatsKind       = "Stats"
)

// Summary is one period's statistics.
type Summary struct {
	// Period is the length of time this summary covers, in seconds.
	PeriodSeconds float64 `json:"periodSeconds"`
	// Requests counts requests seen; Responses those that got a valid HTTP status.
	Requests  uint64 `json:"requests"`
	Responses uint64 `json:"responses"`
	// Errors counts 5xx responses plus requests that got no valid response;
	// ClientErrors counts 4xx responses.
	Errors            uint64  `json:"errors"`
	ClientErrors      uint64  `json:"clientErrors"`
	RequestsPerSecond float64 `json:"requestsPerSecond"`
	// LatencyMs is the total request time as nginx's $request_time measures it.
	LatencyMs Latency `json:"latencyMs"`
	// UpstreamLatencyMs covers proxied requests only ($upstream_response_time, summed over tries).
	UpstreamLatencyMs Latency `json:"upstreamLatencyMs"`
	// KongLatencyMs is total minus upstream for proxied requests, total otherwise: the time
	// Kong itself spent, as Kong's Prometheus plugin reports it.
	KongLatencyMs Latency `json:"kongLatencyMs"`
	// Methods: GET, POST, PUT, DELETE, PATCH, HEAD, OPTIONS, OTHER.
	Methods map[string]uint64 `json:"methods"`
	// StatusCodes by code ("200", "404"); "000" for requests with no valid response.
	StatusCodes map[string]uint64 `json:"statusCodes"`
	// StatusClasses: "1xx".."5xx", and "none" for requests with no valid response.
	StatusClasses map[string]uint64 `json:"statusClasses"`
	// Hosts and Paths: top-N by count, the rest folded into a row named "other".
	Hosts []Row `json:"hosts"`
	Paths []Row `json:"paths"`
	// LuaPhasesMs: time spent in the Lua rewrite/access/content/log handlers, per phase.
	LuaPhasesMs map[string]Latency `json:"luaPhasesMs,omitempty"`
	// BytesSent: sum of $bytes_sent.
	BytesSent       uint64     `json:"bytesSent"`
	LastRequestTime *time.Time `json:"lastRequestTime,omitempty"`
	// DroppedEvents counts events the kernel side could not hand over (ring buffer full) or
	// the agent could not decode.
	DroppedEvents uint64 `json:"droppedEvents"`
}

// Latency summarises a latency distribution in milliseconds.
type Latency struct {
	Count uint64  `json:"count"`
	Avg   float64 `json:"avg"`
	P50   float64 `json:"p50"`
	P95   float64 `json:"p95"`
	P99   float64 `json:"p99"`
	Max   float64 `json:"max"`
}

// Row is one host or path in a top-N list. For paths, Name is "METHOD /normalised/path".
type Row struct {
	Name     string  `json:"name"`
	Requests uint64  `json:"requests"`
	Errors   uint64  `json:"errors"`
	P99Ms    float64 `json:"p99Ms"`
}

// OtherRow is the name of the row that collects hosts or paths beyond the bound.
const OtherRow = "other"
