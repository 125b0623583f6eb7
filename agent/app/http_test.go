package app

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/agent/report"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// holdPort listens on a free loopback port, standing for whatever holds the agent's
// METRICS_ADDR (Kong, another container, another hostNetwork pod).
func holdPort(t *testing.T) net.Listener {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// testPipeline is the agent's pipeline (aggregator, metrics, request log) without the BPF
// data paths: tests feed its sink as a data path would.
func testPipeline(t *testing.T) *Agent {
	t.Helper()
	cfg, err := FromEnv(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	return newPipeline(cfg, logr.Discard(), Options{})
}

// feed hands n requests to the pipeline's sink, spread over a few hosts, paths and statuses.
func feed(a *Agent, n int) {
	for i := range n {
		a.sink.Observe(&model.Request{
			End:    time.Now(),
			Method: []string{"GET", "POST", "GET", "DELETE"}[i%4],
			Host:   fmt.Sprintf("svc%d.example.com", i%10),
			URI:    fmt.Sprintf("/api/v1/items%d/%d?token=x", i%20, i),
			Status: []int{200, 200, 201, 404, 503}[i%5], Latency: time.Duration(i%50) * time.Millisecond,
		})
	}
}

// counted returns what the aggregator and the Prometheus counter have counted.
func counted(t *testing.T, a *Agent) (aggregated, metrics uint64) {
	t.Helper()
	mfs, err := a.Registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "kong_watcher_requests_total" {
			for _, m := range mf.GetMetric() {
				metrics += uint64(m.GetCounter().GetValue())
			}
		}
	}
	return a.Aggregator.Snapshot().Total.Requests, metrics
}

func httpGet(c *http.Client, url string) (int, string, error) {
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

// waitServing waits for srv to be bound and /healthz to answer 200; it returns the base URL.
func waitServing(t *testing.T, srv *report.Server, timeout time.Duration) string {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(timeout)
	for {
		if addr := srv.Addr(); addr != "" {
			if code, _, _ := httpGet(c, "http://"+addr+"/healthz"); code == 200 {
				return "http://" + addr
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("not serving /healthz after %v", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

type portEvents struct {
	mu    sync.Mutex
	calls []string
	errs  []error
}

func (p *portEvents) MetricsPortUnavailable(addr string, err error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.calls = append(p.calls, addr)
	p.errs = append(p.errs, err)
}

func (p *portEvents) get() ([]string, []error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]string(nil), p.calls...), append([]error(nil), p.errs...)
}

// The metrics port is held by another listener (Kong, another container, another hostNetwork
// pod): the agent keeps counting, reports it once, and serves once the port frees.
func TestStartHTTPPortTakenKeepsCountingAndServesOnceFreed(t *testing.T) {
	holder := holdPort(t)
	defer holder.Close()
	addr := holder.Addr().String()
	a := testPipeline(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	events := &portEvents{}
	srv := StartHTTP(ctx, HTTPOptions{Addr: addr, Stats: a.Stats, Ready: a.Ready, Registry: a.Registry,
		Notify: events, MaxBindRetry: 200 * time.Millisecond, Log: logr.Discard()})

	deadline := time.Now().Add(10 * time.Second)
	for calls, _ := events.get(); len(calls) == 0; calls, _ = events.get() {
		if time.Now().After(deadline) {
			t.Fatal("no MetricsPortUnavailable notification while the port is taken")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Counting goes on while nothing can be served.
	const n = 5000
	feed(a, n)
	time.Sleep(time.Second) // a few more bind attempts
	if agg, met := counted(t, a); agg != n || met != n {
		t.Errorf("while the port is taken: counted %d (aggregator), %d (metrics), fed %d", agg, met, n)
	}
	calls, errs := events.get()
	if len(calls) != 1 || calls[0] != addr || !errors.Is(errs[0], syscall.EADDRINUSE) {
		t.Errorf("notifications %q %v, want one for %s with EADDRINUSE", calls, errs, addr)
	}
	if srv.Addr() != "" {
		t.Errorf("Addr() = %q while the port is taken", srv.Addr())
	}

	holder.Close()
	base := waitServing(t, srv, 20*time.Second)
	if base != "http://"+addr {
		t.Errorf("serving on %s, want %s", base, addr)
	}
	c := &http.Client{Timeout: 5 * time.Second}
	var st v1alpha1.Stats
	deadline = time.Now().Add(5 * time.Second) // /stats may be up to report.StatsRefresh old
	for st.Total.Requests != n && time.Now().Before(deadline) {
		_, body, _ := httpGet(c, base+"/stats")
		_ = json.Unmarshal([]byte(body), &st)
		time.Sleep(50 * time.Millisecond)
	}
	if st.Total.Requests != n {
		t.Errorf("/stats total = %d, want %d", st.Total.Requests, n)
	}
	_, body, _ := httpGet(c, base+"/metrics")
	if !strings.Contains(body, "kong_watcher_http_bind_failures_total ") || strings.Contains(body, "kong_watcher_http_bind_failures_total 0\n") {
		t.Errorf("/metrics lacks the bind failures:\n%.400s", body)
	}
}

// A flood of /stats and /metrics neither stalls the counting nor delays /healthz.
func TestHTTPFloodDoesNotStallCountingOrHealthz(t *testing.T) {
	a := testPipeline(t)
	var snapshots atomic.Int64
	stats := func() v1alpha1.Stats { snapshots.Add(1); return a.Stats() }
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	srv := StartHTTP(ctx, HTTPOptions{Addr: "127.0.0.1:0", Stats: stats, Ready: a.Ready, Registry: a.Registry, Log: logr.Discard()})
	base := waitServing(t, srv, 10*time.Second)
	const prefed = 2000
	feed(a, prefed) // full tables: the snapshots and /metrics cost what they cost in production
	fed := prefed

	// The flood comes from this process, which a loaded machine can leave without a CPU for
	// seconds: a window whose flood stayed under the wanted rate proves nothing either way
	// and is tried again. Every window must count every request and answer every probe.
	const wantRate, attempts = 500, 5
	for attempt := 1; ; attempt++ {
		snapshots.Store(0)
		w := floodWindow(t, a, base)
		fed += w.fed
		agg, met := counted(t, a)
		t.Logf("flood: %d requests (%d to /metrics, the rest to /stats) in %v (%.0f req/s): %d answered 200, %d 503, %d other; "+
			"%d snapshots taken; fed %d requests in all, counted %d (aggregator) %d (metrics), slowest batch of %d Observe %v; "+
			"%d /healthz probes, %d failed, slowest %v; the process stalled for up to %v",
			w.sent, w.toMetrics, w.elapsed.Round(time.Millisecond), w.rate(), w.ok200, w.rejected, w.failed, snapshots.Load(),
			fed, agg, met, feedBatch, w.worstFeed, w.probes, w.probeFailures, w.worstProbe, w.worstStall)
		if w.failed > 0 {
			t.Errorf("%d flood requests answered neither 200 nor 503", w.failed)
		}
		if agg != uint64(fed) || met != uint64(fed) {
			t.Errorf("fed %d requests, counted %d (aggregator), %d (metrics)", fed, agg, met)
		}
		if most := int64(w.elapsed/report.StatsRefresh) + 2; snapshots.Load() > most {
			t.Errorf("%d snapshots in %v, want at most one per %v", snapshots.Load(), w.elapsed, report.StatsRefresh)
		}
		if w.probes < 3 || w.probeFailures > 0 || w.worstProbe > generous+w.worstStall {
			t.Errorf("%d /healthz probes, %d failed, slowest %v: want every probe answered 200 within %v (plus the process's stalls, %v)",
				w.probes, w.probeFailures, w.worstProbe, generous, w.worstStall)
		}
		if w.worstFeed > generous+w.worstStall {
			t.Errorf("a batch of %d requests took %v to count: the flood stalls the pipeline", feedBatch, w.worstFeed)
		}
		if w.rate() >= wantRate || t.Failed() {
			break
		}
		if attempt == attempts {
			t.Errorf("the flood never reached %d req/s in %d windows", wantRate, attempts)
			break
		}
		t.Logf("the flood stayed under %d req/s (the process stalled for up to %v): another window", wantRate, w.worstStall)
	}
}

const (
	floodFor     = 4 * time.Second
	floodWorkers = 16 // connections: more than the /stats and /metrics in-flight limits together
	feedEvery    = 10 * time.Millisecond
	feedBatch    = 50 // 5,000 requests/s into the pipeline
	// generous bounds the /healthz answers and the feeder's batches, beyond the stalls of the
	// whole test process: the machines that run these tests are shared and loaded, and a
	// process can wait for a CPU for a second or more. What must not happen is a probe
	// waiting on the flood itself (a lock, a queue, a limit).
	generous = time.Second
)

type floodResult struct {
	elapsed                           time.Duration
	sent, ok200, rejected, failed     int64
	toMetrics                         int64
	fed                               int
	worstFeed, worstProbe, worstStall time.Duration
	probes, probeFailures             int
}

func (r floodResult) rate() float64 { return float64(r.sent) / r.elapsed.Seconds() }

// floodWindow floods base's /stats and /metrics for floodFor while it feeds the pipeline and
// probes /healthz, and measures the process's own stalls (how late a sleeping goroutine wakes).
func floodWindow(t *testing.T, a *Agent, base string) floodResult {
	var r floodResult
	stop := make(chan struct{})
	var wg sync.WaitGroup
	var ok200, rejected, failed, toMetrics atomic.Int64
	for i := range floodWorkers {
		path := "/stats"
		if i%5 == 4 {
			path = "/metrics"
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := flood(base, path, stop, func(code int) {
				if path == "/metrics" {
					toMetrics.Add(1)
				}
				switch code {
				case 200:
					ok200.Add(1)
				case http.StatusServiceUnavailable:
					rejected.Add(1)
				default:
					failed.Add(1)
				}
			}); err != nil {
				t.Errorf("flooding %s: %v", path, err)
			}
		}()
	}
	wg.Add(3)
	go func() {
		defer wg.Done()
		tick := time.NewTicker(feedEvery)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
			}
			start := time.Now()
			feed(a, feedBatch)
			r.worstFeed = max(r.worstFeed, time.Since(start))
			r.fed += feedBatch
		}
	}()
	go func() {
		defer wg.Done()
		c := &http.Client{Timeout: 10 * time.Second}
		defer c.CloseIdleConnections()
		for {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			start := time.Now()
			code, body, err := httpGet(c, base+"/healthz")
			r.worstProbe = max(r.worstProbe, time.Since(start))
			r.probes++
			if code != 200 || body != "ok\n" {
				r.probeFailures++
				t.Logf("/healthz during the flood: %d %q %v", code, body, err)
			}
		}
	}()
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			t0 := time.Now()
			time.Sleep(5 * time.Millisecond)
			r.worstStall = max(r.worstStall, time.Since(t0)-5*time.Millisecond)
		}
	}()
	start := time.Now()
	time.Sleep(floodFor)
	close(stop)
	wg.Wait()
	r.elapsed = time.Since(start)
	r.ok200, r.rejected, r.failed, r.toMetrics = ok200.Load(), rejected.Load(), failed.Load(), toMetrics.Load()
	r.sent = r.ok200 + r.rejected + r.failed
	return r
}

// floodDepth is how many requests a flood connection sends at once.
const floodDepth = 4

// flood sends GET path on one kept-alive connection, floodDepth requests at a time
// (pipelined, as a misbehaving client may), as fast as the server answers, until stop is
// closed; done hears each status. It is a bare HTTP/1.1 client: net/http's costs more CPU
// per request than the server it tests, and the flood would measure the client.
func flood(base, path string, stop <-chan struct{}, done func(code int)) error {
	conn, err := net.Dial("tcp", strings.TrimPrefix(base, "http://"))
	if err != nil {
		return err
	}
	defer conn.Close()
	req := []byte("GET " + path + " HTTP/1.1\r\nHost: agent\r\nUser-Agent: flood\r\n\r\n")
	batch := bytes.Repeat(req, floodDepth)
	r := bufio.NewReaderSize(conn, 64<<10)
	for {
		select {
		case <-stop:
			return nil
		default:
		}
		_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
		if _, err := conn.Write(batch); err != nil {
			return err
		}
		for range floodDepth {
			resp, err := http.ReadResponse(r, nil)
			if err != nil {
				return err
			}
			_, err = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if err != nil {
				return err
			}
			done(resp.StatusCode)
		}
	}
}

// An address with a host part serves on that address only: what the webhook sets for a
// hostNetwork pod, whose IP is the node's, so that /stats is not exposed on the node.
func TestStartHTTPLoopbackAddress(t *testing.T) {
	a := testPipeline(t)
	feed(a, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// A free port on the loopback address, then the address with a host part, as METRICS_ADDR.
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cfg, err := FromEnv(env(map[string]string{"METRICS_ADDR": addr}))
	if err != nil {
		t.Fatal(err)
	}
	a.cfg.MetricsAddr = cfg.MetricsAddr
	srv := a.StartHTTP(ctx, nil)
	base := waitServing(t, srv, 20*time.Second)
	if base != "http://"+addr {
		t.Fatalf("serving on %s, want %s", base, addr)
	}
	c := &http.Client{Timeout: 5 * time.Second}
	for _, p := range []string{"/stats", "/metrics", "/readyz"} {
		code, body, err := httpGet(c, base+p)
		if err != nil || (p != "/readyz" && code != 200) || (p == "/readyz" && code != 503) {
			t.Errorf("%s = %d %v", p, code, err)
		}
		if p == "/stats" && !strings.Contains(body, `"requests":10`) {
			t.Errorf("/stats = %.200s", body)
		}
	}
	_, port, _ := net.SplitHostPort(addr)
	ifAddrs, _ := net.InterfaceAddrs()
	tried := 0
	for _, ia := range ifAddrs {
		ipn, ok := ia.(*net.IPNet)
		if !ok || ipn.IP.IsLoopback() || ipn.IP.To4() == nil {
			continue
		}
		tried++
		conn, err := net.DialTimeout("tcp", net.JoinHostPort(ipn.IP.String(), port), 2*time.Second)
		if err == nil {
			conn.Close()
			t.Errorf("the agent bound to %s answers on %s too", addr, ipn.IP)
		}
	}
	if tried == 0 {
		t.Log("no non-loopback IPv4 address here: only the loopback side was checked")
	}
}
