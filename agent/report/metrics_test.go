package report

import (
	"fmt"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/kong-watcher/kong-watcher/agent/model"
)

func newTestMetrics(t testing.TB, o MetricsOptions) (*Metrics, *prometheus.Registry) {
	reg := prometheus.NewRegistry()
	m := NewMetrics(o)
	if err := m.Register(reg); err != nil {
		t.Fatal(err)
	}
	return m, reg
}

func TestMetricsObserve(t *testing.T) {
	m, reg := newTestMetrics(t, MetricsOptions{})
	r := &model.Request{Method: "GET", Host: "API.example.com", URI: "/users/42?x=1", Status: 200, Latency: 30 * time.Millisecond,
		HasUpstream: true, Upstream: 20 * time.Millisecond, BytesSent: 512, HasLua: true}
	r.LuaPhases[model.LuaAccess] = 2 * time.Millisecond
	m.Observe(r)
	m.Observe(r)
	m.Observe(&model.Request{Method: "BREW", Host: "", URI: "", Status: 0, Latency: time.Millisecond})
	m.SetProbesAttached(4)
	m.AddEventsDropped(3)
	m.SetProcessesTracked(2)
	m.AddDecodeErrors(1)
	m.SetInfo("v0.0.1", "")
	m.SetInfo("v0.1.0", "nginx-request")

	for _, c := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"kong_watcher_requests_total", map[string]string{"code": "200", "host": "api.example.com", "method": "GET", "path": "/users/{id}"}, 2},
		{"kong_watcher_requests_total", map[string]string{"code": "000", "host": "{none}", "method": "OTHER", "path": "{invalid}"}, 1},
		{"kong_watcher_response_bytes_total", nil, 1024},
		{"kong_watcher_probes_attached", nil, 4},
		{"kong_watcher_events_dropped_total", nil, 3},
		{"kong_watcher_processes_tracked", nil, 2},
		{"kong_watcher_decode_errors_total", nil, 1},
		{"kong_watcher_info", map[string]string{"version": "v0.1.0", "data_path": "nginx-request"}, 1},
		{"kong_watcher_request_duration_seconds", map[string]string{"method": "GET"}, 2},
		{"kong_watcher_upstream_duration_seconds", nil, 2},
		{"kong_watcher_kong_duration_seconds", nil, 3},
		{"kong_watcher_lua_phase_duration_seconds", map[string]string{"phase": "access"}, 2},
	} {
		if got, ok := value(reg, c.name, c.labels); !ok || got != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	for name, wantCount := range map[string]int{"kong_watcher_requests_total": 2, "kong_watcher_request_duration_seconds": 8,
		"kong_watcher_upstream_duration_seconds": 1, "kong_watcher_kong_duration_seconds": 1,
		"kong_watcher_lua_phase_duration_seconds": 4, "kong_watcher_info": 1} {
		if n := seriesCount(reg, name); n != wantCount {
			t.Errorf("%s: %d series, want %d", name, n, wantCount)
		}
	}
	problems, err := promlint.NewWithMetricFamilies(must(reg.Gather())).Lint()
	if err != nil || len(problems) > 0 {
		t.Errorf("lint: %v %+v", err, problems)
	}
}

// value returns a counter or gauge value, or a histogram's sample count, of the series of
// name whose labels include labels.
func value(reg prometheus.Gatherer, name string, labels map[string]string) (float64, bool) {
	for _, mf := range must(reg.Gather()) {
		if mf.GetName() != name {
			continue
		}
	series:
		for _, m := range mf.Metric {
			for _, lp := range m.Label {
				if v, ok := labels[lp.GetName()]; ok && v != lp.GetValue() {
					continue series
				}
			}
			switch {
			case m.Counter != nil:
				return m.Counter.GetValue(), true
			case m.Gauge != nil:
				return m.Gauge.GetValue(), true
			case m.Histogram != nil:
				return float64(m.Histogram.GetSampleCount()), true
			}
		}
	}
	return 0, false
}

func seriesCount(reg prometheus.Gatherer, name string) int {
	for _, mf := range must(reg.Gather()) {
		if mf.GetName() == name {
			return len(mf.Metric)
		}
	}
	return 0
}

// A flood of distinct hosts and paths must not grow the series count past the bounds.
func TestMetricsCardinalityIsBounded(t *testing.T) {
	m, reg := newTestMetrics(t, MetricsOptions{MaxHosts: 10, MaxPaths: 10, MaxSeries: 50})
	for i := 0; i < 20000; i++ {
		m.Observe(&model.Request{Method: []string{"GET", "POST", "X"}[i%3], Host: fmt.Sprintf("h%d.example.com", i),
			URI: fmt.Sprintf("/p%dq/r", i), Status: 200 + i%5})
	}
	n := seriesCount(reg, "kong_watcher_requests_total")
	// 50 series plus the overflow series {method, other, other, code}: 3 methods x 5 codes.
	if n > 50+3*5 {
		t.Errorf("%d series", n)
	}
	if len(m.hosts) > 10 || len(m.paths) > 10 {
		t.Errorf("%d hosts, %d paths interned", len(m.hosts), len(m.paths))
	}
	if got, _ := value(reg, "kong_watcher_requests_total", map[string]string{"method": "GET", "host": "other", "path": "other", "code": "200"}); got == 0 {
		t.Error("overflow series not used")
	}
	var total float64
	for _, mf := range must(reg.Gather()) {
		if mf.GetName() == "kong_watcher_requests_total" {
			for _, s := range mf.Metric {
				total += s.GetCounter().GetValue()
			}
		}
	}
	if total != 20000 {
		t.Errorf("series add up to %v, want 20000", total)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func TestMetricsConcurrent(t *testing.T) {
	m, reg := newTestMetrics(t, MetricsOptions{})
	var wg sync.WaitGroup
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 1000; i++ {
				m.Observe(&model.Request{Method: "GET", Host: fmt.Sprintf("h%d", i%7), URI: "/a", Status: 200})
			}
		}()
	}
	wg.Add(1)
	go func() { defer wg.Done(); _, _ = reg.Gather() }() // scrapes race with observations
	wg.Wait()
	if got, _ := value(reg, "kong_watcher_requests_total", map[string]string{"host": "h1"}); got != 4*143 {
		t.Errorf("h1 = %v", got)
	}
}

func TestMetricsObserveDoesNotAllocate(t *testing.T) {
	m, _ := newTestMetrics(t, MetricsOptions{})
	r := &model.Request{Method: "GET", Host: "api.example.com", URI: "/users/42?x=1", Status: 200, Latency: 3 * time.Millisecond, HasUpstream: true}
	m.Observe(r)
	if n := testing.AllocsPerRun(1000, func() { m.Observe(r) }); n != 0 {
		t.Errorf("Observe allocates %v times", n)
	}
}

func BenchmarkMetricsObserve(b *testing.B) {
	m, _ := newTestMetrics(b, MetricsOptions{})
	reqs := make([]*model.Request, 64)
	for i := range reqs {
		reqs[i] = &model.Request{Method: []string{"GET", "POST"}[i%2], Host: fmt.Sprintf("svc%d.example.com", i%8),
			URI: fmt.Sprintf("/api/v1/users/%d/orders?limit=%d", i*7919, i), Status: 200 + i%3*100,
			Latency: time.Duration(1+i%50) * time.Millisecond, HasUpstream: true, Upstream: time.Millisecond}
	}
	b.ReportAllocs()
	defer reportCPU(b)()
	for i := 0; b.Loop(); i++ {
		m.Observe(reqs[i%len(reqs)])
	}
}

// reportCPU adds a cpu-ns/op metric: the process's CPU time per operation. On a shared,
// oversubscribed machine wall-clock ns/op measures the neighbours; CPU time measures us.
func reportCPU(b *testing.B) func() {
	cpu := func() time.Duration {
		var ru syscall.Rusage
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
	}
	start := cpu()
	return func() { b.ReportMetric(float64(cpu()-start)/float64(b.N), "cpu-ns/op") }
}
