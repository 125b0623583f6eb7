package v1alpha1

import "time"

// Stats is the document served on the agent's /stats endpoint and stored (size-bounded) in the
// kong-watcher.io/stats pod annotation.
//
// Every request is attributed to the gateway listener that accepted its connection (see
// Summary.Listeners). The summaries themselves count the proxy listeners' requests only: the
// Admin API, the Status API (where the kubelet's probes go) and Kong's worker events are not
// the gateway's traffic, and have their own entries in Listeners.
//
// On a workload (Deployment, StatefulSet, DaemonSet) the same annotation holds the merge of its
// current pods' Stats (see agent/aggregate.Merge): Since is the earliest pod's, Updated the
// latest, DataPath the pods' distinct data paths joined by ",", Total the sum over the pods that
// exist now, Window the union of their last windows, and RequestsPerSecond the sum of the
// pods' rates.
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

// Summary is one period's statistics of the proxy's requests: the counts and latencies every
// listener has (ListenerSummary, whose fields appear at the top level of the JSON), plus the
// period's length, the host, path and Lua rows and the dropped events.
type Summary struct {
	// Period is the length of time this summary covers, in seconds.
	PeriodSeconds float64 `json:"periodSeconds"`
	ListenerSummary
	// Hosts and Paths: top-N by count, the rest folded into a row named "other".
	Hosts []Row `json:"hosts"`
	Paths []Row `json:"paths"`
	// LuaPhasesMs: time spent in each phase's Lua handlers, by phase: rewrite, access,
	// content, header_filter, body_filter, log and balancer.
	LuaPhasesMs map[string]Latency `json:"luaPhasesMs,omitempty"`
	// DroppedEvents counts events the kernel side could not hand over (ring buffer full) or
	// the agent could not decode.
	DroppedEvents uint64 `json:"droppedEvents"`
	// Listeners holds the period's requests of every listener by name: "proxy" (the
	// requests this summary counts), "admin", "status" (Kong's Admin and Status APIs, named
	// from Kong's configuration or KONG_WATCHER_LISTENERS), "unix" (unix-domain listeners
	// such as Kong's worker events), a port number for a TCP listener no name covers,
	// "unknown" for requests whose listener could not be read, and "other" for listeners
	// beyond the agent's bound. Every listener that has had requests since the agent started
	// is listed, and "proxy" always. Absent: the document comes from an agent that did not
	// attribute requests, or the listeners did not fit the annotation's bound.
	Listeners map[string]ListenerSummary `json:"listeners,omitempty"`
}

// ListenerSummary is one listener's share of a period, and the part of a Summary every
// listener has: a Summary without the host, path and Lua rows, to keep the document small.
//
//	"listeners": {
//	  "proxy":  {"requests": 1200, "responses": 1200, "errors": 3, ..., "histograms": {...}},
//	  "status": {"requests": 30, "responses": 30, "errors": 0, "statusClasses": {"2xx": 30}, ...},
//	  "unix":   {"requests": 4, "statusClasses": {"1xx": 4}, "latencyMs": {"p99": 4012, ...}, ...}
//	}
type ListenerSummary struct {
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
	// BytesSent: sum of $bytes_sent.
	BytesSent       uint64     `json:"bytesSent"`
	LastRequestTime *time.Time `json:"lastRequestTime,omitempty"`
	// Histograms are LatencyMs, UpstreamLatencyMs and KongLatencyMs as mergeable distributions,
	// so that the stats of several pods combine into exact counts and recomputed percentiles.
	// Absent: the period has no requests, or its histograms did not fit the annotation's bound.
	Histograms *Histograms `json:"histograms,omitempty"`
}

// MaxListeners bounds Summary.Listeners (an agent's and a merge's); the rest fold into
// "other".
const MaxListeners = 16

// Histograms hold a summary's latency distributions in one bucket scheme.
//
// The scheme: a value v µs counts in units of 100 µs, u = min(floor(v/100), 2^32-1). With
// b = Bits (1 to MaxHistogramBits), a unit u < 2^b has a bucket of its own, index u; above,
// every power of two is split into 2^(b-1) equal buckets: with e = bitlen(u) - b,
//
//	index = 2^b + (e-1)*2^(b-1) + (u>>e - 2^(b-1))   covering units [(u>>e)<<e, ((u>>e)+1)<<e)
//
// so there are 2^b + (32-b)*2^(b-1) buckets (464 at b = 5) and a bucket above 2^b units is
// never wider than 1/2^(b-1) of its lower bound. At b = 5: 100 µs wide below 3.2 ms, at most
// 6.25% of its lower bound above. A percentile computed from a histogram is the midpoint of
// the bucket holding the nearest-rank value, clamped to [MinUs, MaxUs] (the largest value is
// MaxUs exactly): within half a bucket of the exact value, so at b = 5 within 0.05 ms below
// 3.2 ms and within 3.125% above. A scheme with fewer bits nests in one with more (each bucket
// lies inside one bucket of the coarser scheme), so histograms of different Bits merge at the
// smaller.
type Histograms struct {
	Bits int `json:"bits"`
	// Absent: no values (no proxied requests, for Upstream).
	Latency  *Histogram `json:"latency,omitempty"`
	Upstream *Histogram `json:"upstream,omitempty"`
	Kong     *Histogram `json:"kong,omitempty"`
}

// MaxHistogramBits is the finest scheme a Stats document carries (16 buckets per octave).
const MaxHistogramBits = 5

// Histogram is one sparse distribution: the counts of the buckets that hold values, in spans
// of consecutive buckets, each [first index, count, count, ...], by ascending index and not
// overlapping; a span's first and last counts are > 0 (a 0 inside a span is an empty bucket,
// cheaper to write than a new span), and the counts add up to the Latency's Count. SumUs,
// MinUs and MaxUs are the sum, smallest and largest of the values in µs.
//
//	{"spans":[[3,5,0,2],[40,1]],"sumUs":28700,"minUs":310,"maxUs":4020}
//
// holds 5 values in bucket 3, 2 in bucket 5 and 1 in bucket 40.
type Histogram struct {
	Spans [][]uint64 `json:"spans"`
	SumUs uint64     `json:"sumUs"`
	MinUs uint64     `json:"minUs"`
	MaxUs uint64     `json:"maxUs"`
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
