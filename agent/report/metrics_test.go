package report

import (
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil/promlint"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/agent/pathnorm"
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
	m.SetWireBuffered(4096)
	m.AddWireGivenUp(5)
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
		{"kong_watcher_wire_buffered_bytes", nil, 4096},
		{"kong_watcher_wire_connections_given_up_total", nil, 5},
		{"kong_watcher_info", map[string]string{"version": "v0.1.0", "data_path": "nginx-request"}, 1},
		{"kong_watcher_request_duration_seconds", map[string]string{"method": "GET"}, 2},
		{"kong_watcher_upstream_duration_seconds", nil, 2},
		{"kong_watcher_kong_duration_seconds", nil, 3},
		{"kong_watcher_lua_phase_duration_seconds", map[string]string{"phase": "access"}, 2},
		{"kong_watcher_lua_phase_duration_seconds", map[string]string{"phase": "balancer"}, 0}, // ran no Lua
	} {
		if got, ok := value(reg, c.name, c.labels); !ok || got != c.want {
			t.Errorf("%s%v = %v (found %v), want %v", c.name, c.labels, got, ok, c.want)
		}
	}
	for name, wantCount := range map[string]int{"kong_watcher_requests_total": 2, "kong_watcher_request_duration_seconds": 8,
		"kong_watcher_upstream_duration_seconds": 1, "kong_watcher_kong_duration_seconds": 1,
		"kong_watcher_lua_phase_duration_seconds": 7, "kong_watcher_info": 1} {
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
	if m.rank[hostDim].Len() > 10 || m.rank[pathDim].Len() > 10 {
		t.Errorf("%d hosts, %d paths with a place", m.rank[hostDim].Len(), m.rank[pathDim].Len())
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
	// The paths normalise to 1,000 distinct values seen once and "/{id}/r" seen 19,000
	// times, which takes the place of one of the first ten: that one's series (one request)
	// is deleted.
	if total > 20000 || total < 20000-10 {
		t.Errorf("series add up to %v, want 20000 less the few deleted", total)
	}
	if got, _ := value(reg, "kong_watcher_requests_total", map[string]string{"path": "/{id}/r"}); got == 0 {
		t.Error(`"/{id}/r" has no series of its own`)
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
		reqs[i].Route = pathnorm.AppendCut(nil, reqs[i].URI, false) // as the agent's pipeline hands it on
	}
	b.ReportAllocs()
	defer reportCPU(b)()
	for i := 0; b.Loop(); i++ {
		m.Observe(reqs[i%len(reqs)])
	}
}

// Worst case: junk hosts and paths in pairs, so that places and series keep changing hands.
func BenchmarkMetricsObservePairs(b *testing.B) {
	m, _ := newTestMetrics(b, MetricsOptions{})
	reqs := make([]*model.Request, 8192)
	for i := range reqs {
		reqs[i] = &model.Request{Method: "GET", Host: fmt.Sprintf("h%d.example.com", i/2), URI: junkPath(i / 2),
			Status: 200, Latency: time.Millisecond}
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

// labelValues returns the requests_total series as label -> value -> summed count.
func labelValues(reg prometheus.Gatherer) map[string]map[string]float64 {
	out := map[string]map[string]float64{"host": {}, "path": {}}
	for _, mf := range must(reg.Gather()) {
		if mf.GetName() != "kong_watcher_requests_total" {
			continue
		}
		for _, m := range mf.Metric {
			for _, lp := range m.Label {
				if v, ok := out[lp.GetName()]; ok {
					v[lp.GetValue()] += m.Counter.GetValue()
				}
			}
		}
	}
	return out
}

// Every request metric has the listener; the labels are bounded: a few port numbers, then
// "other".
func TestMetricsListeners(t *testing.T) {
	m, reg := newTestMetrics(t, MetricsOptions{})
	obs := func(listener string, n int) {
		for range n {
			r := &model.Request{Method: "GET", Host: "h", URI: "/status", Status: 200, Latency: time.Millisecond,
				HasUpstream: true, Upstream: time.Millisecond, BytesSent: 10, HasLua: true, Listener: listener}
			r.LuaPhases[model.LuaAccess] = 100 * time.Microsecond
			m.Observe(r)
		}
	}
	obs("", 1)
	obs(model.ListenerProxy, 1)
	obs("admin", 2)
	obs(model.ListenerUnix, 3)
	for p := range 10 {
		obs(fmt.Sprint(9000+p), 1)
	}
	for _, c := range []struct {
		name     string
		listener string
		want     float64
	}{
		{"kong_watcher_requests_total", model.ListenerProxy, 2}, {"kong_watcher_requests_total", "admin", 2},
		{"kong_watcher_requests_total", model.ListenerUnix, 3}, {"kong_watcher_requests_total", "9003", 1},
		{"kong_watcher_requests_total", "other", 6}, {"kong_watcher_response_bytes_total", "admin", 20},
		{"kong_watcher_request_duration_seconds", "admin", 2}, {"kong_watcher_upstream_duration_seconds", model.ListenerUnix, 3},
		{"kong_watcher_kong_duration_seconds", "other", 6}, {"kong_watcher_lua_phase_duration_seconds", model.ListenerProxy, 2},
	} {
		labels := map[string]string{"listener": c.listener, "method": "GET", "phase": "access"}
		if got, ok := value(reg, c.name, labels); !ok || got != c.want {
			t.Errorf("%s{listener=%q} = %v (found %v), want %v", c.name, c.listener, got, ok, c.want)
		}
	}
	if _, ok := value(reg, "kong_watcher_requests_total", map[string]string{"listener": "9004"}); ok {
		t.Error("a fifth port number has a label of its own")
	}
	checkSeries(t, m, reg)
}

// checkSeries fails unless the cached series are exactly those registered and the slot
// lists hold each series with a named host or path once.
func checkSeries(t testing.TB, m *Metrics, reg prometheus.Gatherer) {
	t.Helper()
	if n := seriesCount(reg, "kong_watcher_requests_total"); n != len(m.series.index) {
		t.Fatalf("%d series registered, %d cached", n, len(m.series.index))
	}
	if live := len(m.series.entries) - len(m.series.free); live != len(m.series.index) {
		t.Fatalf("%d live entries, %d indexed", live, len(m.series.index))
	}
	for dim, heads := range m.series.heads {
		listed := 0
		for slot, i := range heads {
			for prev := int32(-1); i >= 0; prev, i = i, m.series.entries[i].next[dim] {
				e := m.series.entries[i]
				if e.key.slot(dim) != int32(slot) || e.prev[dim] != prev || m.series.index[e.key] != i {
					t.Fatalf("dim %d slot %d: entry %d %+v (prev %d) is not in its list", dim, slot, i, e, prev)
				}
				listed++
			}
		}
		want := 0
		for k := range m.series.index {
			if k.slot(dim) >= 0 {
				want++
			}
		}
		if listed != want {
			t.Fatalf("dim %d: %d series listed, %d have a slot", dim, listed, want)
		}
	}
}

// junkPath returns a distinct path of words (pathnorm keeps them) for each i.
func junkPath(i int) string {
	b := []byte("/junk/")
	for ; ; i /= 26 {
		b = append(b, byte('a'+i%26))
		if i < 26 {
			break
		}
	}
	return string(b)
}

// 1,000 junk hosts and paths right after the start, then a few real ones at a steady rate:
// within a few requests each the real values have series of their own, and the junk counts
// under "other" but for the places nobody else wants.
func TestMetricsJunkFirstCannotPoisonLabels(t *testing.T) {
	const max = 10
	m, reg := newTestMetrics(t, MetricsOptions{MaxHosts: max, MaxPaths: max})
	for i := 0; i < 1000; i++ {
		m.Observe(&model.Request{Method: "GET", Host: fmt.Sprintf("junk%d.example.com", i), URI: junkPath(i), Status: 404})
	}
	hosts := []string{"api.example.com", "shop.example.com", "auth.example.com"}
	paths := []string{"/users", "/orders", "/login"}
	sent := map[string]float64{}
	for i := 0; i < 90; i++ {
		h, p := hosts[i%3], paths[i/3%3]
		m.Observe(&model.Request{Method: "GET", Host: h, URI: p, Status: 200})
		sent[h]++
		sent[p]++
	}
	got := labelValues(reg)
	for label, want := range map[string][]string{"host": hosts, "path": paths} {
		junk := 0
		for v := range got[label] {
			if strings.Contains(v, "junk") {
				junk++
			}
		}
		if junk > max-3 {
			t.Errorf("%s: %d junk values have series", label, junk)
		}
		// The junk displaced from its place had its series deleted; what stays is under other.
		if o := got[label]["other"]; o < 1000-max {
			t.Errorf(`%s="other" counts %v, want the junk`, label, o)
		}
		for _, v := range want {
			// At most a value's first two requests count under other.
			if got[label][v] > sent[v] || got[label][v]+2 < sent[v] {
				t.Errorf("%s=%q counts %v of %v", label, v, got[label][v], sent[v])
			}
		}
	}
	checkSeries(t, m, reg)
}

// Junk that was heavy for a while is forgotten after a few halving periods of later
// traffic: the real values get series of their own and the junk's are deleted.
func TestMetricsHeavyJunkBurstIsForgotten(t *testing.T) {
	const max = 10
	m, reg := newTestMetrics(t, MetricsOptions{MaxHosts: max, MaxPaths: max})
	for i := 0; i < 2000; i++ {
		m.Observe(&model.Request{Method: "GET", Host: fmt.Sprintf("junk%d.example.com", i%max), URI: junkPath(i % max), Status: 404})
	}
	hosts := []string{"api.example.com", "shop.example.com", "auth.example.com"}
	bound := 4 * 16 * max // four halving periods
	n := 0
	for ; n < bound; n++ {
		m.Observe(&model.Request{Method: "GET", Host: hosts[n%3], URI: "/users", Status: 200})
		got := labelValues(reg)
		if got["host"][hosts[0]] > 0 && got["host"][hosts[1]] > 0 && got["host"][hosts[2]] > 0 && got["path"]["/users"] > 0 {
			break
		}
	}
	t.Logf("real values have series after %d requests", n)
	if n >= bound {
		t.Fatalf("no series of their own after %d requests: %v", bound, labelValues(reg))
	}
	junk := 0
	for v := range labelValues(reg)["host"] {
		if strings.Contains(v, "junk") {
			junk++
		}
	}
	if junk > max-3 {
		t.Errorf("%d junk hosts still have series", junk)
	}
	checkSeries(t, m, reg)
}

// A value that loses its place loses its series and counts under "other"; when it gains a
// place again it has a series again, counting from zero.
func TestMetricsPlaceChangesHands(t *testing.T) {
	m, reg := newTestMetrics(t, MetricsOptions{MaxHosts: 2})
	obs := func(host string, n int) {
		for i := 0; i < n; i++ {
			m.Observe(&model.Request{Method: "GET", Host: host, URI: "/", Status: 200})
		}
	}
	hostCount := func(h string) float64 { return labelValues(reg)["host"][h] }
	obs("a", 4)
	obs("b", 1)
	obs("c", 2) // 1 under other, then heavier than b (1): takes b's place
	if hostCount("b") != 0 || hostCount("c") != 1 || hostCount("other") != 1 || hostCount("a") != 4 {
		t.Fatalf("after c: %v", labelValues(reg)["host"])
	}
	obs("b", 1) // a candidate again (weight 1 + 1), not heavier than c by the margin
	if hostCount("b") != 0 || hostCount("other") != 2 {
		t.Fatalf("b without a place: %v", labelValues(reg)["host"])
	}
	obs("b", 5)
	if hostCount("b") == 0 || hostCount("c") != 0 {
		t.Fatalf("b heavier again: %v", labelValues(reg)["host"])
	}
	checkSeries(t, m, reg)
}

// A host literally called "other" shares the other series instead of clashing with it.
func TestMetricsHostCalledOther(t *testing.T) {
	m, reg := newTestMetrics(t, MetricsOptions{MaxHosts: 2})
	for _, h := range []string{"other", "a", "OTHER", "b", "b"} {
		m.Observe(&model.Request{Method: "GET", Host: h, URI: "/", Status: 200})
	}
	if got := labelValues(reg)["host"]; len(got) != 3 || got["other"] != 2 || got["a"] != 1 || got["b"] != 2 {
		t.Errorf("hosts = %v", got)
	}
	checkSeries(t, m, reg)
}

// A long random stream (distinct values, pairs, a skewed mix, many methods and codes) keeps
// the series and the bookkeeping bounded and consistent.
func TestMetricsBoundedUnderRandomStream(t *testing.T) {
	n := 300000
	if testing.Short() {
		n = 30000
	}
	const maxSeries = 200
	m, reg := newTestMetrics(t, MetricsOptions{MaxHosts: 20, MaxPaths: 20, MaxSeries: maxSeries})
	rng := rand.New(rand.NewPCG(8, 9))
	zipf := rand.NewZipf(rng, 1.2, 1, 10000)
	methods := []string{"GET", "POST", "PUT", "BREW"}
	var maxEntries int
	for i := 0; i < n; i++ {
		var k int
		switch rng.IntN(4) {
		case 0:
			k = i
		case 1:
			k = i / 2
		case 2:
			k = int(zipf.Uint64())
		default:
			k = rng.IntN(10)
		}
		m.Observe(&model.Request{Method: methods[rng.IntN(len(methods))], Host: fmt.Sprintf("h%d", k),
			URI: junkPath(k + rng.IntN(2)), Status: 200 + rng.IntN(4)*100 + rng.IntN(3)})
		maxEntries = max(maxEntries, len(m.series.entries))
		if i%20000 == 0 {
			checkSeries(t, m, reg)
		}
	}
	checkSeries(t, m, reg)
	// Beyond MaxSeries only {method, other, other, code} series: 4 methods x 12 codes here.
	if bound := maxSeries + 4*12; maxEntries > bound || seriesCount(reg, "kong_watcher_requests_total") > bound {
		t.Errorf("%d entries at most, %d series now, bound %d", maxEntries, seriesCount(reg, "kong_watcher_requests_total"), bound)
	}
	got := labelValues(reg)
	for k := 0; k < 10; k++ { // ~2.5% of the traffic each
		if got["host"][fmt.Sprintf("h%d", k)] == 0 {
			t.Errorf("h%d has no series: %v", k, got["host"])
		}
	}
}

// A route the agent computed once (model.Request.Route) gives the same series as the URI.
func TestMetricsObserveWithRoute(t *testing.T) {
	with, regWith := newTestMetrics(t, MetricsOptions{})
	without, regWithout := newTestMetrics(t, MetricsOptions{})
	for i := range 300 {
		r := &model.Request{Method: []string{"GET", "PUT"}[i%2], Host: fmt.Sprintf("h%d.example.com", i%4),
			URI: fmt.Sprintf("/api/items/%d?q=%d", i*17, i), URITruncated: i%5 == 0, Status: 200 + i%3*100,
			Latency: time.Duration(1+i%9) * time.Millisecond}
		without.Observe(r)
		r.Route = pathnorm.AppendCut(nil, r.URI, r.URITruncated)
		with.Observe(r)
	}
	// The series and their values (not their creation times).
	series := func(reg *prometheus.Registry) string {
		var sb strings.Builder
		for _, mf := range must(reg.Gather()) {
			for _, m := range mf.GetMetric() {
				fmt.Fprintf(&sb, "%s%v %v %v\n", mf.GetName(), m.GetLabel(), m.GetCounter().GetValue(), m.GetHistogram().GetSampleCount())
			}
		}
		return sb.String()
	}
	a, b := series(regWith), series(regWithout)
	if a != b || !strings.Contains(a, `value:"/api/items/{id}"`) {
		t.Fatalf("with the route:\n%s\nwithout:\n%s", a, b)
	}
}
