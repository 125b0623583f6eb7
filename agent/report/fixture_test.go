package report

import (
	"time"

	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

var (
	since   = time.Date(2026, 1, 2, 3, 0, 0, 0, time.UTC)
	updated = since.Add(time.Hour + 2*time.Minute + 3*time.Second)
)

// sampleStats is a fixed, realistic document for the annotation and table tests.
func sampleStats() v1alpha1.Stats {
	last := updated.Add(-time.Second)
	lat := v1alpha1.Latency{Count: 1234, Avg: 3.21, P50: 2.1, P95: 8, P99: 20.14, Max: 1500}
	total := v1alpha1.Summary{
		PeriodSeconds: updated.Sub(since).Seconds(), ListenerSummary: v1alpha1.ListenerSummary{Requests: 1234, Responses: 1230, Errors: 5, ClientErrors: 30,
			RequestsPerSecond: 0.33, LatencyMs: lat,
			UpstreamLatencyMs: v1alpha1.Latency{Count: 1000, Avg: 2.5, P50: 1.9, P95: 6, P99: 15, Max: 1400},
			KongLatencyMs:     v1alpha1.Latency{Count: 1234, Avg: 0.7, P50: 0.5, P95: 1, P99: 3, Max: 100},
			Methods:           map[string]uint64{"GET": 1000, "POST": 200, "DELETE": 30, "OTHER": 4},
			StatusCodes:       map[string]uint64{"200": 1190, "404": 30, "502": 1, "000": 4, "301": 9},
			StatusClasses:     map[string]uint64{"2xx": 1190, "3xx": 9, "4xx": 30, "5xx": 1, "none": 4},
			BytesSent:         5 << 20,
			LastRequestTime:   &last},
		Hosts: []v1alpha1.Row{{Name: "api.example.com", Requests: 900, Errors: 4, P99Ms: 21}, {Name: "www.example.com", Requests: 300, Errors: 1, P99Ms: 9.5},
			{Name: "a.example.com", Requests: 10}, {Name: "b.example.com", Requests: 9}, {Name: "c.example.com", Requests: 8},
			{Name: "d.example.com", Requests: 4}, {Name: "other", Requests: 3, P99Ms: 2}},
		Paths: []v1alpha1.Row{{Name: "GET /users/{id}", Requests: 800, Errors: 2, P99Ms: 19}, {Name: "POST /orders", Requests: 200, Errors: 3, P99Ms: 44.4},
			{Name: "GET /health", Requests: 234, P99Ms: 0.1}},
		LuaPhasesMs:   map[string]v1alpha1.Latency{"access": {Count: 1234, Avg: 0.3, P50: 0.2, P95: 0.6, P99: 1.1, Max: 7}},
		DroppedEvents: 2,
	}
	window := total
	window.PeriodSeconds, window.Requests, window.Errors, window.RequestsPerSecond = 30, 369, 1, 12.3
	return v1alpha1.Stats{APIVersion: v1alpha1.StatsAPIVersion, Kind: v1alpha1.StatsKind, Since: since, Updated: updated,
		DataPath: "nginx-request", Total: total, Window: window}
}
