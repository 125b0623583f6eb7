package aggregate

import (
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/agent/pathnorm"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// fakeClock is a settable clock for Options.Now.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

var t0 = time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)

func req(method, host, uri string, status int, latency time.Duration) *model.Request {
	return &model.Request{Method: method, Host: host, URI: uri, Status: status, Latency: latency, End: t0}
}

func TestCountsAndWindows(t *testing.T) {
	clk := &fakeClock{t: t0}
	a := New(Options{Now: clk.Now})
	a.SetDataPath("nginx-request")
	obs := func(r *model.Request) { r.End = clk.Now(); a.Observe(r) }

	up := req("GET", "API.example.com", "/users/1?token=x", 200, 10*time.Millisecond)
	up.HasUpstream, up.Upstream, up.BytesSent = true, 7*time.Millisecond, 100
	obs(up)
	obs(req("POST", "api.example.com", "/users/2", 201, 20*time.Millisecond))
	obs(req("PURGE", "cdn.example.com", "/cache", 404, 1*time.Millisecond))
	obs(req("GET", "", "/health", 503, 2*time.Millisecond))
	lua := req("GET", "api.example.com", "/users/3", 0, 30*time.Millisecond)
	lua.HasLua = true
	lua.LuaPhases[model.LuaAccess] = 3 * time.Millisecond
	obs(lua)
	a.AddDropped(3)

	clk.Add(10 * time.Second)
	s := a.Snapshot()
	// Before the first Rotate, Window is the open window and equals Total.
	for name, sum := range map[string]v1alpha1.Summary{"total": s.Total, "window": s.Window} {
		t.Run(name, func(t *testing.T) {
			check := func(what string, got, want any) {
				t.Helper()
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("%s = %v, want %v", what, got, want)
				}
			}
			check("requests", sum.Requests, 5)
			check("responses", sum.Responses, 4)
			check("errors", sum.Errors, 2) // 503 + no response
			check("clientErrors", sum.ClientErrors, 1)
			check("rps", sum.RequestsPerSecond, 0.5)
			check("period", sum.PeriodSeconds, 10)
			check("methods", sum.Methods, map[string]uint64{"GET": 3, "POST": 1, "OTHER": 1})
			check("codes", sum.StatusCodes, map[string]uint64{"200": 1, "201": 1, "404": 1, "503": 1, "000": 1})
			check("classes", sum.StatusClasses, map[string]uint64{"2xx": 2, "4xx": 1, "5xx": 1, "none": 1})
			check("hosts", sum.Hosts, []v1alpha1.Row{{Name: "api.example.com", Requests: 3, Errors: 1, P99Ms: 30}, {Name: "cdn.example.com", Requests: 1, Errors: 0, P99Ms: 1}, {Name: "{none}", Requests: 1, Errors: 1, P99Ms: 2}})
			check("paths", sum.Paths, []v1alpha1.Row{{Name: "GET /users/{id}", Requests: 2, Errors: 1, P99Ms: 30}, {Name: "GET /health", Requests: 1, Errors: 1, P99Ms: 2}, {Name: "OTHER /cache", Requests: 1, Errors: 0, P99Ms: 1}, {Name: "POST /users/{id}", Requests: 1, Errors: 0, P99Ms: 20}})
			check("latency", sum.LatencyMs, v1alpha1.Latency{Count: 5, Avg: 12.6, P50: 10, P95: 30, P99: 30, Max: 30})
			check("upstream", sum.UpstreamLatencyMs, v1alpha1.Latency{Count: 1, Avg: 7, P50: 7, P95: 7, P99: 7, Max: 7})
			check("kong p99", sum.KongLatencyMs.P99, 30)
			check("kong p50", sum.KongLatencyMs.P50, 3) // 3, 20, 1, 2, 30 -> sorted 1 2 3 20 30
			check("lua", sum.LuaPhasesMs["access"], v1alpha1.Latency{Count: 1, Avg: 3, P50: 3, P95: 3, P99: 3, Max: 3})
			check("lua phases", len(sum.LuaPhasesMs), 1) // only the phase that ran
			check("bytes", sum.BytesSent, 100)
			check("dropped", sum.DroppedEvents, 3)
			check("last", sum.LastRequestTime.Equal(t0), true)
		})
	}
	if s.APIVersion != v1alpha1.StatsAPIVersion || s.Kind != "Stats" || s.DataPath != "nginx-request" || !s.Since.Equal(t0) || !s.Updated.Equal(t0.Add(10*time.Second)) {
		t.Errorf("header = %+v", s)
	}

	// Close the window; a new window with one request, 20 s later.
	a.Rotate()
	clk.Add(20 * time.Second)
	obs(req("DELETE", "api.example.com", "/users/9", 204, 5*time.Millisecond))
	clk.Add(10 * time.Second)
	s = a.Snapshot()
	if s.Window.Requests != 5 || s.Window.PeriodSeconds != 10 {
		t.Errorf("window after Rotate = %d requests over %vs, want the closed window (5 over 10s)", s.Window.Requests, s.Window.PeriodSeconds)
	}
	if s.Total.Requests != 6 || s.Total.PeriodSeconds != 40 || s.Total.RequestsPerSecond != 6.0/40 {
		t.Errorf("total = %d requests over %vs at %v/s, want 6 over 40s", s.Total.Requests, s.Total.PeriodSeconds, s.Total.RequestsPerSecond)
	}
	if s.Total.Hosts[0] != (v1alpha1.Row{Name: "api.example.com", Requests: 4, Errors: 1, P99Ms: 30}) {
		t.Errorf("total hosts[0] = %+v", s.Total.Hosts[0])
	}
	a.Rotate()
	s = a.Snapshot()
	if s.Window.Requests != 1 || s.Window.Methods["DELETE"] != 1 || s.Window.PeriodSeconds != 30 || s.Total.Requests != 6 {
		t.Errorf("after second Rotate: window %+v total %d", s.Window, s.Total.Requests)
	}
	// An empty window renders with zero values and no last request.
	a.Rotate()
	if s = a.Snapshot(); s.Window.Requests != 0 || s.Window.LastRequestTime != nil || len(s.Window.Hosts) != 0 {
		t.Errorf("empty window = %+v", s.Window)
	}
}

func TestSnapshotIsACopy(t *testing.T) {
	a := New(Options{})
	a.Observe(req("GET", "h", "/", 200, time.Millisecond))
	a.Rotate()
	s := a.Snapshot()
	s.Window.Methods["GET"] = 99
	s.Window.Hosts[0].Requests = 99
	if s2 := a.Snapshot(); s2.Window.Methods["GET"] != 1 || s2.Window.Hosts[0].Requests != 1 {
		t.Errorf("editing a snapshot changed the aggregator: %+v", s2.Window)
	}
}

// The headline counts the proxy's requests only; every listener has its own summary, the
// proxy's equal to the headline; listeners beyond the bound fold into other.
func TestListeners(t *testing.T) {
	clk := &fakeClock{t: t0}
	a := New(Options{Now: clk.Now})
	obs := func(listener string, status int, latency time.Duration) {
		r := req("GET", "api.example.com", "/users/1", status, latency)
		r.Listener, r.End = listener, clk.Now()
		a.Observe(r)
	}
	obs("", 200, 10*time.Millisecond)
	obs(model.ListenerProxy, 503, 20*time.Millisecond)
	obs("admin", 200, 5*time.Millisecond)
	obs("status", 200, time.Millisecond)
	obs("status", 404, time.Millisecond)
	obs(model.ListenerUnix, 101, 4*time.Second)
	obs(model.ListenerUnknown, 200, time.Millisecond)
	clk.Add(10 * time.Second)
	a.Rotate()
	obs("admin", 500, 7*time.Millisecond)
	clk.Add(10 * time.Second)
	s := a.Snapshot()

	if s.Total.Requests != 2 || s.Total.Errors != 1 || s.Total.LatencyMs.Max != 20 || len(s.Total.Paths) != 1 || s.Total.Paths[0].Requests != 2 {
		t.Errorf("headline %d requests, %d errors, max %v, paths %+v: want the proxy's 2, 1, 20 ms", s.Total.Requests, s.Total.Errors, s.Total.LatencyMs.Max, s.Total.Paths)
	}
	want := map[string]string{
		model.ListenerProxy:   "2 1 0 map[200:1 503:1] 20",
		"admin":               "2 1 0 map[200:1 500:1] 7",
		"status":              "2 0 1 map[200:1 404:1] 1",
		model.ListenerUnix:    "1 0 0 map[101:1] 4000",
		model.ListenerUnknown: "1 0 0 map[200:1] 1",
	}
	got := map[string]string{}
	for name, l := range s.Total.Listeners {
		got[name] = fmt.Sprint(l.Requests, l.Errors, l.ClientErrors, l.StatusCodes, l.LatencyMs.Max)
		if l.Histograms == nil || l.RequestsPerSecond != float64(l.Requests)/20 {
			t.Errorf("listener %s: histograms %v, rate %v", name, l.Histograms, l.RequestsPerSecond)
		}
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("total listeners %v, want %v", got, want)
	}
	if p := s.Total.Listeners[model.ListenerProxy]; p.LatencyMs != s.Total.LatencyMs || p.StatusClasses["5xx"] != 1 {
		t.Errorf("the proxy listener %+v is not the headline %+v", p.LatencyMs, s.Total.LatencyMs)
	}
	// The window closed before the last admin request.
	if w := s.Window.Listeners; len(w) != 5 || w["admin"].Requests != 1 || w["unix"].Requests != 1 || w[model.ListenerProxy].Requests != 2 || s.Window.Requests != 2 {
		t.Errorf("window listeners %+v", w)
	}
	// Editing a snapshot's listeners changes nothing.
	s.Window.Listeners["admin"].StatusCodes["200"] = 99
	if s2 := a.Snapshot(); s2.Window.Listeners["admin"].StatusCodes["200"] != 1 {
		t.Error("editing a snapshot's listener changed the aggregator")
	}

	// Listener names come from configuration, but a port per request must not grow it.
	for p := range 100 {
		obs(fmt.Sprint(9000+p), 200, time.Millisecond)
	}
	s = a.Snapshot()
	if n := len(s.Total.Listeners); n != v1alpha1.MaxListeners || s.Total.Listeners[OtherListener].Requests != 100-(v1alpha1.MaxListeners-2-4) {
		t.Errorf("%d listeners, other %d", n, s.Total.Listeners[OtherListener].Requests)
	}
	if err := Validate(&s); err != nil {
		t.Error(err)
	}
}

// nearestRank is the reference percentile: the ceil(q*n)-th smallest value.
func nearestRank(sorted []float64, q float64) float64 {
	i := int(math.Ceil(q*float64(len(sorted)))) - 1
	return sorted[min(max(i, 0), len(sorted)-1)]
}

// Percentiles are within 1 ms or 2% of the exact nearest-rank value, for every distribution
// we could think of; for whole-millisecond data (what nginx reports) under 100 ms they are
// exact.
func TestPercentilesMatchNearestRank(t *testing.T) {
	r := rand.New(rand.NewPCG(7, 9))
	dists := map[string]func() time.Duration{
		"whole-ms-small":  func() time.Duration { return time.Duration(r.IntN(100)) * time.Millisecond },
		"whole-ms-wide":   func() time.Duration { return time.Duration(r.IntN(60000)) * time.Millisecond },
		"us-lognormal":    func() time.Duration { return time.Duration(math.Exp(r.NormFloat64()*1.5+8)) * time.Microsecond },
		"us-heavy-tail":   func() time.Duration { return time.Duration(1000/math.Pow(r.Float64()+1e-9, 1.2)) * time.Microsecond },
		"sub-ms":          func() time.Duration { return time.Duration(r.IntN(2000)) * time.Microsecond },
		"bimodal":         func() time.Duration { return time.Duration([]int{3, 90}[r.IntN(2)]+r.IntN(3)) * time.Millisecond },
		"bimodal-wide":    func() time.Duration { return time.Duration([]int{3, 250}[r.IntN(2)]+r.IntN(3)) * time.Millisecond },
		"huge":            func() time.Duration { return time.Duration(r.IntN(7200)) * time.Second }, // WebSockets
		"constant-137ms":  func() time.Duration { return 137 * time.Millisecond },
		"whole-ms-mid":    func() time.Duration { return time.Duration(100+r.IntN(900)) * time.Millisecond },
		"negative-and-0s": func() time.Duration { return time.Duration(r.IntN(3)-2) * time.Millisecond },
	}
	for name, gen := range dists {
		for _, n := range []int{1, 2, 7, 100, 1000, 50000} {
			h := newHistogram(summarySubBits, true)
			rowH := newHistogram(rowSubBits, false)
			exact := make([]float64, n)
			for i := range exact {
				d := gen()
				h.record(d)
				rowH.record(d)
				exact[i] = float64(max(d, 0)/time.Microsecond) / 1000
			}
			slices.Sort(exact)
			for _, q := range []float64{0.01, 0.5, 0.9, 0.95, 0.99, 0.999, 1} {
				want := nearestRank(exact, q)
				tol := max(1, want*0.02)
				if name == "whole-ms-small" || name == "bimodal" || name == "constant-137ms" {
					tol = 1e-9
				}
				if got := h.quantileMs(q); math.Abs(got-want) > tol {
					t.Errorf("%s n=%d q=%v: summary histogram %v, exact %v", name, n, q, got, want)
				}
				if got := rowH.quantileMs(q); math.Abs(got-want) > max(1, want*0.02) {
					t.Errorf("%s n=%d q=%v: row histogram %v, exact %v", name, n, q, got, want)
				}
			}
		}
	}
}

func TestHistogramIndexIsMonotonic(t *testing.T) {
	for _, bits := range []uint{rowSubBits, summarySubBits} {
		h := newHistogram(bits, false)
		prev := 0
		for u := uint64(0); u < 1<<histMaxBits; u += 1 + u/512 {
			i := h.index(u)
			lower, width := h.bounds(i)
			if i < prev || u < lower || u >= lower+width || i >= len(h.counts) {
				t.Fatalf("subBits %d: unit %d -> bucket %d [%d, +%d), prev %d", bits, u, i, lower, width, prev)
			}
			prev = i
		}
		if i := h.index(math.MaxUint64); i != len(h.counts)-1 {
			t.Errorf("huge value -> bucket %d, want the last (%d)", i, len(h.counts)-1)
		}
	}
}

// A million distinct hosts and paths must not grow memory: rows stay bounded and the heap
// stays flat once the tables are full.
func TestBoundedMemory(t *testing.T) {
	if testing.Short() {
		t.Skip("slow")
	}
	a := New(Options{MaxHosts: 50, MaxPaths: 50})
	r := &model.Request{Method: "GET", Status: 200, Latency: 3 * time.Millisecond, End: t0}
	heap := func() uint64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return m.HeapAlloc
	}
	feed := func(from, to int) {
		for i := from; i < to; i++ {
			r.Host = fmt.Sprintf("h%d.example.com", i)
			r.URI = fmt.Sprintf("/p%dx/q", i)
			a.Observe(r)
			if i%100000 == 0 {
				a.Rotate()
				a.Snapshot()
			}
		}
	}
	feed(0, 10000)
	a.Rotate()
	a.Snapshot()
	before := heap()
	runtime.KeepAlive(a)
	feed(10000, 1000000)
	a.Rotate()
	s := a.Snapshot()
	after := heap()
	runtime.KeepAlive(a) // else the collector frees it before the measurement
	if len(s.Total.Hosts) > 51 || len(s.Total.Paths) > 51 || len(s.Window.Hosts) > 51 {
		t.Errorf("rows not bounded: %d hosts, %d paths", len(s.Total.Hosts), len(s.Total.Paths))
	}
	if s.Total.Requests != 1000000 {
		t.Errorf("total = %d", s.Total.Requests)
	}
	var sum uint64
	for _, h := range s.Total.Hosts {
		sum += h.Requests
	}
	if sum != s.Total.Requests {
		t.Errorf("host rows sum to %d, want %d (folded rows must land in other)", sum, s.Total.Requests)
	}
	growth := int64(after) - int64(before)
	t.Logf("heap before %d KiB, after 990000 more distinct hosts/paths %d KiB", before>>10, after>>10)
	if growth > 256<<10 {
		t.Errorf("heap grew by %d KiB", growth>>10)
	}
}

// A host that turns busy after the tables filled still earns a row in the total.
func TestLateHeavyHitterEntersTotal(t *testing.T) {
	a := New(Options{MaxHosts: 3})
	for _, h := range []string{"a", "b", "c"} {
		a.Observe(req("GET", h, "/", 200, time.Millisecond))
	}
	a.Rotate()
	for i := 0; i < 10; i++ {
		a.Observe(req("GET", "late", "/", 200, time.Millisecond))
	}
	s := a.Snapshot()
	if s.Total.Hosts[0].Name != "late" || s.Total.Hosts[0].Requests != 10 {
		t.Errorf("total hosts = %+v, want late first", s.Total.Hosts)
	}
	if s.Total.Hosts[len(s.Total.Hosts)-1] != (v1alpha1.Row{Name: "other", Requests: 1, Errors: 0, P99Ms: 1}) {
		t.Errorf("total hosts = %+v, want one evicted row in other", s.Total.Hosts)
	}
}

func TestConcurrentUse(t *testing.T) {
	a := New(Options{MaxHosts: 10, MaxPaths: 10})
	var wg sync.WaitGroup
	const writers, each = 4, 2000
	for w := 0; w < writers; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < each; i++ {
				a.Observe(req("GET", fmt.Sprintf("h%d", i%20), fmt.Sprintf("/p/%d", i), 200+i%400, time.Duration(i)*time.Microsecond))
				if i%500 == 0 {
					a.AddDropped(1)
				}
			}
		}()
	}
	stop := make(chan struct{})
	var readers sync.WaitGroup
	readers.Add(1)
	go func() {
		defer readers.Done()
		for {
			select {
			case <-stop:
				return
			default:
				a.Rotate()
				_ = a.Snapshot()
				a.SetDataPath("wire")
			}
		}
	}()
	wg.Wait()
	close(stop)
	readers.Wait()
	if s := a.Snapshot(); s.Total.Requests != writers*each || s.Total.DroppedEvents != writers*4 {
		t.Errorf("total = %d requests, %d dropped", s.Total.Requests, s.Total.DroppedEvents)
	}
}

func TestObserveDoesNotAllocate(t *testing.T) {
	a := New(Options{})
	r := req("GET", "api.example.com", "/users/12345/orders?limit=10", 200, 3*time.Millisecond)
	r.HasUpstream, r.Upstream, r.HasLua = true, 2*time.Millisecond, true
	a.Observe(r)
	if n := testing.AllocsPerRun(1000, func() { a.Observe(r) }); n != 0 {
		t.Errorf("Observe allocates %v times per request", n)
	}
	r.Listener = "admin"
	a.Observe(r)
	if n := testing.AllocsPerRun(1000, func() { a.Observe(r) }); n != 0 {
		t.Errorf("Observe allocates %v times per admin request", n)
	}
}

func BenchmarkObserve(b *testing.B) {
	a := New(Options{})
	reqs := make([]*model.Request, 64)
	for i := range reqs {
		reqs[i] = req([]string{"GET", "POST"}[i%2], fmt.Sprintf("svc%d.example.com", i%8),
			fmt.Sprintf("/api/v1/users/%d/orders?limit=%d", i*7919, i), 200+i%3*100, time.Duration(1+i%50)*time.Millisecond)
		reqs[i].HasUpstream, reqs[i].Upstream = true, time.Millisecond
		reqs[i].Route = pathnorm.AppendCut(nil, reqs[i].URI, false) // as the agent's pipeline hands it on
	}
	b.ReportAllocs()
	defer reportCPU(b)()
	for i := 0; b.Loop(); i++ {
		a.Observe(reqs[i%len(reqs)])
	}
}

// Worst case: every request has a new host and path (a scan or an attack).
func BenchmarkObserveDistinct(b *testing.B) {
	a := New(Options{})
	reqs := make([]*model.Request, 4096)
	for i := range reqs {
		reqs[i] = req("GET", fmt.Sprintf("h%d.example.com", i), fmt.Sprintf("/p%dx", i), 200, time.Millisecond)
	}
	b.ReportAllocs()
	defer reportCPU(b)()
	for i := 0; b.Loop(); i++ {
		a.Observe(reqs[i%len(reqs)])
	}
}

func BenchmarkSnapshot(b *testing.B) {
	a := New(Options{})
	for i := 0; i < 10000; i++ {
		a.Observe(req("GET", fmt.Sprintf("h%d", i%150), fmt.Sprintf("/p%dx", i%300), 200, time.Duration(i)*time.Microsecond))
	}
	a.Rotate()
	b.ReportAllocs()
	defer reportCPU(b)()
	for b.Loop() {
		a.Snapshot()
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

// A route the agent computed once (model.Request.Route) counts exactly as the URI it came from.
func TestObserveWithRoute(t *testing.T) {
	clk := &fakeClock{t: t0}
	with, without := New(Options{Now: clk.Now}), New(Options{Now: clk.Now})
	for i := range 500 {
		r := req([]string{"GET", "POST"}[i%2], fmt.Sprintf("svc%d.example.com", i%5),
			fmt.Sprintf("/api/v1/users/%d/orders?limit=%d", i*31, i), 200+i%4*100, time.Duration(1+i%40)*time.Millisecond)
		r.URITruncated = i%7 == 0
		without.Observe(r)
		r.Route = pathnorm.AppendCut(nil, r.URI, r.URITruncated)
		with.Observe(r)
	}
	a, b := with.Snapshot().Total, without.Snapshot().Total
	show := func(s v1alpha1.Summary) string {
		return fmt.Sprintf("%+v %+v %v %v %+v", s.Hosts, s.Paths, s.Methods, s.StatusCodes, s.LatencyMs)
	}
	if show(a) != show(b) || len(a.Paths) != 2 {
		t.Fatalf("with the route:\n%s\nwithout:\n%s", show(a), show(b))
	}
}
