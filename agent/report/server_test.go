package report

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

func get(t *testing.T, h http.Handler, path string) (int, string, http.Header) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String(), rec.Header()
}

func TestServerEndpoints(t *testing.T) {
	reg := NewRegistry()
	m := NewMetrics(MetricsOptions{})
	if err := m.Register(reg); err != nil {
		t.Fatal(err)
	}
	m.Observe(&model.Request{Method: "GET", Host: "api.example.com", URI: "/users/1", Status: 200, Latency: 3 * time.Millisecond})
	var ready atomic.Bool
	s := NewServer("127.0.0.1:0", sampleStats, func() (bool, string) {
		if ready.Load() {
			return true, "probes attached"
		}
		return false, "no Kong process found yet"
	}, reg, logr.Discard())
	h := s.Handler()

	code, body, hdr := get(t, h, "/stats")
	var st v1alpha1.Stats
	if code != 200 || hdr.Get("Content-Type") != "application/json" || json.Unmarshal([]byte(body), &st) != nil || st.Total.Requests != 1234 {
		t.Errorf("/stats = %d %q %q", code, hdr.Get("Content-Type"), body)
	}
	if _, body, _ = get(t, h, "/stats?pretty"); !strings.Contains(body, "\n  \"apiVersion\"") {
		t.Errorf("/stats?pretty not indented: %.80q", body)
	}
	code, body, _ = get(t, h, "/metrics")
	for _, want := range []string{`kong_watcher_requests_total{code="200",host="api.example.com",listener="proxy",method="GET",path="/users/{id}"} 1`,
		"kong_watcher_request_duration_seconds_bucket", "go_goroutines", "process_cpu_seconds_total"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics (%d) lacks %s", code, want)
		}
	}
	if code, body, _ = get(t, h, "/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, body, _ = get(t, h, "/readyz"); code != 503 || body != "no Kong process found yet\n" {
		t.Errorf("/readyz not ready = %d %q", code, body)
	}
	ready.Store(true)
	if code, body, _ = get(t, h, "/readyz"); code != 200 || body != "probes attached\n" {
		t.Errorf("/readyz ready = %d %q", code, body)
	}
	if code, _, _ = get(t, h, "/nope"); code != 404 {
		t.Errorf("/nope = %d", code)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/stats", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /stats = %d", rec.Code)
	}
}

func TestServerStartAndShutdown(t *testing.T) {
	s := NewServer("127.0.0.1:0", func() v1alpha1.Stats { return v1alpha1.Stats{} }, nil, NewRegistry(), logr.Discard())
	if s.Addr() != "" {
		t.Error("Addr set before Start")
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + s.Addr() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok\n" {
		t.Errorf("/readyz with nil ready func = %d %q", resp.StatusCode, body)
	}
	// A second server on the same address fails to start, with the bind error.
	if err := NewServer(s.Addr(), nil, nil, NewRegistry(), logr.Discard()).Start(context.Background()); err == nil {
		t.Error("second Start on a used address succeeded")
	}
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := http.Get("http://" + s.Addr() + "/healthz")
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("server still serving after its context ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown after stop: %v", err)
	}
}

// startServer starts s on a free loopback port and stops it when the test ends.
func startServer(t *testing.T, s *Server) string {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(func() {
		cancel()
		sctx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		_ = s.Shutdown(sctx)
	})
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return "http://" + s.Addr()
}

func fetch(c *http.Client, url string) (int, http.Header, string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, resp.Header, string(b), err
}

// counter returns a metric's value in a /metrics body (-1 when absent).
func counter(body, series string) float64 {
	for _, l := range strings.Split(body, "\n") {
		if v, ok := strings.CutPrefix(l, series+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err == nil {
				return f
			}
		}
	}
	return -1
}

func TestServerStatsSnapshotAtMostOncePerRefresh(t *testing.T) {
	var calls atomic.Int64
	stats := func() v1alpha1.Stats {
		n := calls.Add(1)
		s := sampleStats()
		s.Total.Requests = uint64(n)
		return s
	}
	h := NewServer("127.0.0.1:0", stats, nil, NewRegistry(), logr.Discard()).Handler()
	start := time.Now()
	for range 300 {
		if code, _, _ := get(t, h, "/stats"); code != 200 {
			t.Fatalf("/stats = %d", code)
		}
	}
	// One snapshot per StatsRefresh started, whatever the request rate (a loaded machine may
	// take more than one refresh interval for the loop).
	if n, most := calls.Load(), int64(time.Since(start)/StatsRefresh)+1; n > most {
		t.Errorf("%d snapshots for 300 requests in %v, want at most %d", n, time.Since(start), most)
	}
	_, body, _ := get(t, h, "/stats?pretty")
	if !strings.Contains(body, "\n  \"apiVersion\"") || !strings.HasSuffix(body, "}\n") {
		t.Errorf("/stats?pretty not indented: %.80q", body)
	}
	// Once the document is older than StatsRefresh the next request takes a new one.
	before := calls.Load()
	time.Sleep(StatsRefresh + 100*time.Millisecond)
	var st v1alpha1.Stats
	_, body, _ = get(t, h, "/stats")
	if err := json.Unmarshal([]byte(body), &st); err != nil || st.Total.Requests <= uint64(before) {
		t.Errorf("after %v: total %d (err %v), want a new snapshot (> %d)", StatsRefresh, st.Total.Requests, err, before)
	}
}

func TestServerStatsServesPreviousDocumentWhileRefreshing(t *testing.T) {
	var calls atomic.Int64
	release := make(chan struct{})
	stats := func() v1alpha1.Stats {
		if calls.Add(1) == 2 {
			<-release // the second snapshot is slow (the aggregator's lock is busy)
		}
		return sampleStats()
	}
	base := startServer(t, NewServer("127.0.0.1:0", stats, nil, NewRegistry(), logr.Discard()))
	c := &http.Client{Timeout: 10 * time.Second}
	if code, _, _, err := fetch(c, base+"/stats"); code != 200 {
		t.Fatalf("/stats = %d %v", code, err)
	}
	time.Sleep(StatsRefresh + 50*time.Millisecond)
	slow := make(chan int, 1)
	go func() { code, _, _, _ := fetch(c, base+"/stats"); slow <- code }()
	for calls.Load() < 2 {
		time.Sleep(time.Millisecond)
	}
	// The refresh is stuck: other requests get the previous document at once.
	for range 5 {
		code, _, body, err := fetch(c, base+"/stats")
		if code != 200 || !strings.Contains(body, `"requests":1234`) {
			t.Errorf("/stats during a refresh = %d %v %.60q", code, err, body)
		}
	}
	close(release)
	if code := <-slow; code != 200 {
		t.Errorf("the refreshing request = %d", code)
	}
}

// blockingCollector makes /metrics wait until release is closed.
type blockingCollector struct{ release chan struct{} }

func (b blockingCollector) Describe(chan<- *prometheus.Desc) {}
func (b blockingCollector) Collect(chan<- prometheus.Metric) { <-b.release }

func TestServerInFlightLimits(t *testing.T) {
	reg := NewRegistry()
	bc := blockingCollector{release: make(chan struct{})}
	reg.MustRegister(bc)
	var statsCalls atomic.Int64
	statsRelease := make(chan struct{})
	stats := func() v1alpha1.Stats {
		statsCalls.Add(1)
		<-statsRelease
		return sampleStats()
	}
	srv := NewServer("127.0.0.1:0", stats, nil, reg, logr.Discard())
	base := startServer(t, srv)
	c := &http.Client{Timeout: 30 * time.Second}

	// Fill every /metrics and /stats slot with a request that cannot finish.
	var wg sync.WaitGroup
	codes := make(chan int, MaxInFlightMetrics+MaxInFlightStats)
	for i := range MaxInFlightMetrics + MaxInFlightStats {
		path := "/metrics"
		if i >= MaxInFlightMetrics {
			path = "/stats"
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			code, _, _, _ := fetch(c, base+path)
			codes <- code
		}()
	}
	// One /stats request takes the snapshot (blocked), the others wait for that first document.
	deadline := time.Now().Add(20 * time.Second)
	for len(srv.statsLimit.slots) < MaxInFlightStats || len(srv.metricsLimit.slots) < MaxInFlightMetrics {
		if time.Now().After(deadline) {
			t.Fatalf("slots taken: /stats %d, /metrics %d", len(srv.statsLimit.slots), len(srv.metricsLimit.slots))
		}
		time.Sleep(5 * time.Millisecond)
	}
	for _, p := range []string{"/stats", "/metrics"} {
		start := time.Now()
		code, hdr, _, err := fetch(c, base+p)
		if code != http.StatusServiceUnavailable || hdr.Get("Retry-After") != "1" {
			t.Errorf("%s with every slot taken = %d %q %v, want 503 with Retry-After", p, code, hdr.Get("Retry-After"), err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Errorf("%s: the 503 took %v: it must not wait for a slot", p, d)
		}
	}
	// /healthz and /readyz depend on neither limit.
	for _, p := range []string{"/healthz", "/readyz"} {
		if code, _, _, err := fetch(c, base+p); code != 200 {
			t.Errorf("%s with every slot taken = %d %v", p, code, err)
		}
	}
	close(bc.release)
	close(statsRelease)
	wg.Wait()
	close(codes)
	for code := range codes {
		if code != 200 {
			t.Errorf("a request holding a slot ended with %d", code)
		}
	}
	if n := statsCalls.Load(); n != 1 {
		t.Errorf("%d snapshots, want 1 (the waiting requests share it)", n)
	}
	_, _, body, _ := fetch(c, base+"/metrics")
	if v := counter(body, `kong_watcher_http_rejected_total{path="/metrics"}`); v < 1 {
		t.Errorf("rejected /metrics not counted: %v", v)
	}
	if v := counter(body, `kong_watcher_http_rejected_total{path="/stats"}`); v < 1 {
		t.Errorf("rejected /stats not counted: %v", v)
	}
}

func TestServerLimitsHeaderSize(t *testing.T) {
	base := startServer(t, NewServer("127.0.0.1:0", nil, nil, nil, logr.Discard()))
	req, _ := http.NewRequest(http.MethodGet, base+"/healthz", nil)
	req.Header.Set("X-Big", strings.Repeat("a", 64<<10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("64 KiB of headers = %d, want 431", resp.StatusCode)
	}
}

func TestServerStartRetryingServesOnceThePortFrees(t *testing.T) {
	holder, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	addr := holder.Addr().String()
	reg := NewRegistry()
	s := NewServer(addr, nil, nil, reg, logr.Discard())
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	unavailable := make(chan error, 10)
	s.StartRetrying(ctx, BindRetry{Max: 100 * time.Millisecond, Unavailable: func(err error) { unavailable <- err }})

	select {
	case err := <-unavailable:
		if !errors.Is(err, syscall.EADDRINUSE) {
			t.Errorf("Unavailable(%v), want EADDRINUSE", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Unavailable not called while the port is taken")
	}
	// Several more attempts, however slowly a busy machine schedules them.
	for deadline := time.Now().Add(20 * time.Second); bindFailures(t, reg) < 3; time.Sleep(20 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%v bind attempts in 20s while the port is taken, want them retried", bindFailures(t, reg))
		}
	}
	if len(unavailable) != 0 {
		t.Errorf("Unavailable called at every attempt (%d more), want once then every 10 minutes", len(unavailable))
	}
	if s.Addr() != "" {
		t.Errorf("Addr() = %q while the port is taken", s.Addr())
	}
	holder.Close()
	c := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(20 * time.Second)
	for {
		code, _, _, _ := fetch(c, "http://"+addr+"/healthz")
		if code == 200 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("not serving 20s after the port freed")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if s.Addr() != addr {
		t.Errorf("Addr() = %q, want %q", s.Addr(), addr)
	}
	_, _, body, _ := fetch(c, "http://"+addr+"/metrics")
	if v := counter(body, "kong_watcher_http_bind_failures_total"); v < 2 {
		t.Errorf("kong_watcher_http_bind_failures_total = %v, want the failed attempts", v)
	}
	cancel()
	deadline = time.Now().Add(10 * time.Second)
	for s.Addr() != "" {
		if time.Now().After(deadline) {
			t.Fatal("still serving after ctx ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func TestServerShutdownStopsBindRetries(t *testing.T) {
	holder, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := NewServer(holder.Addr().String(), nil, nil, NewRegistry(), logr.Discard())
	s.StartRetrying(context.Background(), BindRetry{Max: time.Hour})
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := s.Shutdown(sctx); err != nil || sctx.Err() != nil {
		t.Errorf("Shutdown while retrying: %v (ctx %v)", err, sctx.Err())
	}
	holder.Close()
	time.Sleep(50 * time.Millisecond)
	if s.Addr() != "" {
		t.Errorf("bound %s after Shutdown", s.Addr())
	}
}

// bindFailures reads kong_watcher_http_bind_failures_total from reg (the server is not serving
// /metrics while its port is taken).
func bindFailures(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "kong_watcher_http_bind_failures_total" {
			var v float64
			for _, m := range mf.GetMetric() {
				v += m.GetCounter().GetValue()
			}
			return v
		}
	}
	return 0
}
