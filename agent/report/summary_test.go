package report

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/aggregate"
	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

func TestAnnotations(t *testing.T) {
	a := Annotations(sampleStats(), 0)
	want := map[string]string{
		v1alpha1.AnnotationRequests:    "total=1234 errors=5 (0.4%) rate=12.3/s",
		v1alpha1.AnnotationLatency:     "avg=3.2ms p50=2.1ms p95=8.0ms p99=20.1ms",
		v1alpha1.AnnotationMethods:     "GET=1000 POST=200 DELETE=30 OTHER=4",
		v1alpha1.AnnotationStatus:      "2xx=1190 3xx=9 4xx=30 5xx=1 none=4",
		v1alpha1.AnnotationTopHosts:    "api.example.com=900 www.example.com=300 a.example.com=10 b.example.com=9 c.example.com=8 other=7",
		v1alpha1.AnnotationTopPaths:    "GET /users/{id}=800, POST /orders=200, GET /health=234",
		v1alpha1.AnnotationLastRequest: "2026-01-02T04:02:02Z",
	}
	for k, v := range want {
		if a[k] != v {
			t.Errorf("%s = %q, want %q", k, a[k], v)
		}
	}
	var back v1alpha1.Stats
	if err := json.Unmarshal([]byte(a[v1alpha1.AnnotationStats]), &back); err != nil || back.Total.Requests != 1234 || len(back.Total.Hosts) != 7 {
		t.Errorf("stats annotation does not round-trip: %v", err)
	}
	if len(a) != len(want)+1 {
		t.Errorf("got %d annotations, want %d", len(a), len(want)+1)
	}

	empty := Annotations(v1alpha1.Stats{}, 0)
	if empty[v1alpha1.AnnotationRequests] != "total=0 errors=0 (0.0%) rate=0/s" || empty[v1alpha1.AnnotationTopHosts] != "" {
		t.Errorf("empty annotations = %q", empty)
	}
	if _, ok := empty[v1alpha1.AnnotationLastRequest]; ok {
		t.Error("last-request set before any request")
	}
	if d := duration(1250); d != "1.25s" {
		t.Errorf("duration(1250) = %q", d)
	}
}

func hugeStats(r *rand.Rand, rows, nameLen int) v1alpha1.Stats {
	s := sampleStats()
	mk := func(prefix string) []v1alpha1.Row {
		out := make([]v1alpha1.Row, 0, rows+1)
		for i := 0; i < rows; i++ {
			out = append(out, v1alpha1.Row{Name: fmt.Sprintf("%s%d-%s", prefix, i, strings.Repeat("x", r.IntN(nameLen+1))),
				Requests: uint64(rows - i + 1), Errors: uint64(r.IntN(3)), P99Ms: r.Float64() * 100})
		}
		return append(out, v1alpha1.Row{Name: "other", Requests: 1, P99Ms: 1})
	}
	s.Total.Hosts, s.Total.Paths, s.Window.Hosts, s.Window.Paths = mk("h"), mk("GET /p"), mk("h"), mk("GET /p")
	return s
}

func TestStatsJSONIsBoundedAndValid(t *testing.T) {
	r := rand.New(rand.NewPCG(3, 4))
	for _, limit := range []int{0, 1, 2, 100, 600, 1200, 2000, 4096, 16 << 10, 64 << 10} {
		for _, rows := range []int{0, 1, 5, 100, 2000} {
			s := hugeStats(r, rows, 250)
			out := StatsJSON(s, limit)
			bound := limit
			if bound <= 0 {
				bound = DefaultMaxStatsJSON
			}
			if len(out) > bound && out != "{}" {
				t.Errorf("limit %d rows %d: %d bytes", limit, rows, len(out))
			}
			if !json.Valid([]byte(out)) {
				t.Fatalf("limit %d rows %d: invalid JSON %q", limit, rows, out)
			}
			var back v1alpha1.Stats
			_ = json.Unmarshal([]byte(out), &back)
			// Whatever was cut, the rows that remain still add up to the total.
			if len(back.Total.Hosts) > 0 {
				var sum uint64
				for _, h := range back.Total.Hosts {
					sum += h.Requests
				}
				var want uint64
				for _, h := range s.Total.Hosts {
					want += h.Requests
				}
				if sum != want {
					t.Errorf("limit %d rows %d: host rows sum to %d, want %d", limit, rows, sum, want)
				}
			}
		}
	}
	// Generous limits keep everything; the input is never modified.
	s := hugeStats(r, 100, 10)
	before, _ := json.Marshal(s)
	full := StatsJSON(s, 1<<20)
	if full != string(before) {
		t.Error("a document under the limit was changed")
	}
	_ = StatsJSON(s, 2000)
	if after, _ := json.Marshal(s); string(after) != string(before) {
		t.Error("StatsJSON modified its input")
	}
	// At the default limit a typical 100-row document keeps a useful number of rows.
	var back v1alpha1.Stats
	_ = json.Unmarshal([]byte(StatsJSON(hugeStats(r, 100, 30), 0)), &back)
	if len(back.Total.Hosts) < 10 {
		t.Errorf("only %d host rows kept at the default limit", len(back.Total.Hosts))
	}
}

func TestStatsLine(t *testing.T) {
	kv := StatsLine(sampleStats())
	if len(kv)%2 != 0 {
		t.Fatalf("odd key/value list: %v", kv)
	}
	got := map[string]any{}
	for i := 0; i < len(kv); i += 2 {
		got[kv[i].(string)] = kv[i+1]
	}
	for k, v := range map[string]any{"requests": uint64(369), "rps": 12.3, "p99Ms": 20.14, "totalRequests": uint64(1234),
		"topHost": "api.example.com", "topPath": "GET /users/{id}", "dataPath": "nginx-request", "windowSeconds": 30.0} {
		if got[k] != v {
			t.Errorf("%s = %v (%T), want %v", k, got[k], got[k], v)
		}
	}
}

// histogramStats is an agent's snapshot with wide latency distributions (many buckets), rows
// (100 hosts, 100 paths) and listeners (the proxy, admin and status).
func histogramStats(t *testing.T) v1alpha1.Stats {
	t.Helper()
	r := rand.New(rand.NewPCG(5, 6))
	clock := since
	a := aggregate.New(aggregate.Options{Now: func() time.Time { return clock }})
	for i := 0; i < 40000; i++ {
		lat := time.Duration(math.Exp(r.NormFloat64()*2.5+9)) * time.Microsecond
		a.Observe(&model.Request{Method: "GET", Host: fmt.Sprintf("host-%d.example.com", r.IntN(150)), URI: fmt.Sprintf("/api/things%d", r.IntN(150)),
			Status: 200, Latency: lat, HasUpstream: true, Upstream: lat / 2, End: clock, Listener: []string{"", "", "", "", "admin", "status"}[i%6]})
		if i == 20000 {
			clock = clock.Add(30 * time.Second)
			a.Rotate()
		}
	}
	clock = clock.Add(30 * time.Second)
	a.Rotate()
	return a.Snapshot()
}

// The annotation keeps the histograms: rows go first, then the listeners (their histograms,
// then themselves), then resolution, then the histograms; whatever is cut, the result parses
// as a valid document and its counts are the snapshot's.
func TestStatsJSONKeepsHistograms(t *testing.T) {
	s := histogramStats(t)
	full, _ := json.Marshal(s)
	size := func(s v1alpha1.Stats, proxyOnly, listeners bool) int {
		s.Total.Listeners, s.Window.Listeners = compactListeners(s.Total.Listeners, proxyOnly), compactListeners(s.Window.Listeners, proxyOnly)
		if !listeners {
			s.Total.Listeners, s.Window.Listeners = nil, nil
		}
		b, _ := json.Marshal(trimStats(s, 0))
		return len(b)
	}
	bare, bareCompact, bareAlone := size(s, true, true), size(s, false, true), size(s, false, false)
	const (
		whole   = iota // every listener with its histograms
		compact        // listeners without histograms
		none           // no listeners
	)
	for _, c := range []struct {
		limit     int
		wantBits  int  // of the total's histograms; 0: none
		allRows   bool // every row kept
		listeners int
	}{
		{len(full), v1alpha1.MaxHistogramBits, true, whole},
		{0, v1alpha1.MaxHistogramBits, false, compact}, // the default 16 KiB
		{bare, v1alpha1.MaxHistogramBits, false, whole},
		{bare - 1, v1alpha1.MaxHistogramBits, false, compact},
		{bareCompact, v1alpha1.MaxHistogramBits, false, compact},
		{bareCompact - 1, v1alpha1.MaxHistogramBits, false, none},
		{bareAlone, v1alpha1.MaxHistogramBits, false, none},
		{bareAlone - 1, v1alpha1.MaxHistogramBits - 1, false, none},
		{2000, 0, false, none},
	} {
		out := StatsJSON(s, c.limit)
		got, err := aggregate.ParseStats(out)
		if err != nil {
			t.Fatalf("limit %d: %v", c.limit, err)
		}
		bits := 0
		if got.Total.Histograms != nil {
			bits = got.Total.Histograms.Bits
		}
		if bits != c.wantBits || (len(got.Total.Hosts) == len(s.Total.Hosts)) != c.allRows {
			t.Errorf("limit %d: histograms of %d bits and %d of %d host rows, want %d bits", c.limit, bits, len(got.Total.Hosts), len(s.Total.Hosts), c.wantBits)
		}
		listeners := none
		if admin, ok := got.Total.Listeners["admin"]; ok {
			listeners = compact
			if admin.Histograms != nil {
				listeners = whole
			}
			if admin.Requests != s.Total.Listeners["admin"].Requests || len(got.Window.Listeners) != 3 {
				t.Errorf("limit %d: listeners changed", c.limit)
			}
		}
		if listeners != c.listeners {
			t.Errorf("limit %d: listeners %d, want %d (0 whole, 1 without histograms, 2 none)", c.limit, listeners, c.listeners)
		}
		if got.Total.Requests != s.Total.Requests || got.Window.LatencyMs != s.Window.LatencyMs {
			t.Errorf("limit %d: counts changed", c.limit)
		}
		// The proxy's histograms are the summary's own: never lost to a merge while the
		// summary has them.
		m := aggregate.Merge([]v1alpha1.Stats{got}, aggregate.MergeOptions{})
		if p := m.Total.Listeners[model.ListenerProxy]; c.listeners != none && (p.Requests != s.Total.Requests || (p.Histograms == nil) != (bits == 0)) {
			t.Errorf("limit %d: the merged proxy listener has %d requests, histograms %v", c.limit, p.Requests, p.Histograms != nil)
		}
		t.Logf("limit %d: %d bytes, bits %d, %d host rows, listeners %d", c.limit, len(out), bits, len(got.Total.Hosts), listeners)
	}
}
