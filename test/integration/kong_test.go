package integration

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// The agent against real Kong Gateway 3.8.1 (hack/kong.sh, KW_KONG): DB-less, 2 workers, the
// routes and plugins of fixture.kongRoutes, HTTP/1.1 keep-alive, TLS and HTTP/2 on the proxy;
// every listener writes the fixture's JSON access log. What the agent counts is compared
// with those logs exactly, and with Kong's own numbers: its Prometheus plugin and the
// X-Kong-*-Latency headers of every answer.

// TestAgentOnKong: steady traffic through every kind of route; the agent equals the access
// logs and agrees with Kong's Prometheus plugin wherever both count the same requests.
func TestAgentOnKong(t *testing.T) {
	k := fixture.StartKongT(t, fixture.KongOptions{})
	a := startAgent(t, k.MasterPID(), nil)
	a.waitReady(t, 30*time.Second)
	// The agent counts from here; so do the logs (Kong's readiness checks are in them).
	if err := k.ResetLogs(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	reqs, err := k.DriveKong(ctx, 270, 4)
	if err != nil {
		t.Logf("traffic: %v", err) // Kong's business; its logs are the truth
	}
	logs, err := k.WaitLogs(ctx, len(reqs))
	if err != nil {
		t.Fatal(err)
	}
	routed := 0
	for _, e := range logs[fixture.KongProxy] {
		if fixture.KongRoute(e) != "" {
			routed++
		}
	}
	metrics := kongMetricsSettled(t, k, routed)
	// Again: the scrapes are Status API requests the agent counts too.
	logs, err = k.WaitLogs(ctx, len(reqs))
	if err != nil {
		t.Fatal(err)
	}
	headline := kongHeadline(t, k, a, logs)
	s := a.waitRequests(t, uint64(len(headline)), 15*time.Second)
	logLayout(t, a)
	t.Logf("Kong: %d proxy requests sent, logs: proxy %d, admin %d, status %d; agent %d",
		len(reqs), len(logs[fixture.KongProxy]), len(logs[fixture.KongAdmin]), len(logs[fixture.KongStatus]), s.Total.Requests)
	if s.DataPath != "nginx-request" {
		t.Errorf("data path %q, want nginx-request", s.DataPath)
	}
	compareKongListeners(t, k, a, s.Total, logs)
	compareKongLatencySplit(t, s.Total, headline)
	compareWithKongMetrics(t, k, s.Total, metrics, headline, reqs)
}

// TestAgentOnKongReloadAndWorkerKill: `kong reload` and a worker's SIGKILL in the middle of
// traffic. Expected: every TCP listener's requests exactly as its access log has them.
// A reload (and a worker's death) also ends the connections of Kong's worker events (the
// server kong_worker_events on a unix socket, which every worker holds open for its
// life): nginx frees each as a request with status 101, seconds long. Those are not requests
// of any listener a client can reach, and no access log has them: the agent's per-listener
// numbers must not count them as proxy (or admin, or status) requests. Until the agent
// attributes requests to listeners (a "listeners" object in /stats), its headline total is
// compared with the access logs of all TCP listeners together, which the worker-events
// requests make it exceed (see compareKongListeners).
func TestAgentOnKongReloadAndWorkerKill(t *testing.T) {
	k := fixture.StartKongT(t, fixture.KongOptions{})
	a := startAgent(t, k.MasterPID(), nil)
	a.waitReady(t, 30*time.Second)
	if err := k.ResetLogs(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	stop := make(chan struct{})
	done := make(chan []fixture.KongRequest, 1)
	go func() {
		var sent []fixture.KongRequest
		for {
			select {
			case <-stop:
				done <- sent
				return
			default:
			}
			rs, _ := k.DriveKong(ctx, 27, 4)
			sent = append(sent, rs...)
		}
	}()
	time.Sleep(time.Second)
	if err := k.Reload(); err != nil {
		close(stop)
		t.Fatalf("kong reload under load: %v", err)
	}
	time.Sleep(time.Second)
	killed, replacement, err := k.KillWorker()
	if err != nil {
		close(stop)
		t.Fatalf("killing a worker under load: %v", err)
	}
	t.Logf("kong reload done, worker %d killed, %d replaces it", killed, replacement)
	time.Sleep(time.Second)
	close(stop)
	reqs := <-done
	// A request on a keep-alive connection the old workers close may never reach Kong; one
	// on a killed worker is never logged: the logs, not what the client sent, are the truth.
	wctx, wcancel := context.WithTimeout(ctx, 10*time.Second)
	logs, _ := k.WaitLogs(wctx, len(reqs))
	wcancel()
	if got := fixture.Traffic(logs[fixture.KongProxy]); got < len(reqs)-20 {
		t.Fatalf("proxy access log has %d lines of traffic for %d requests sent", got, len(reqs))
	}
	s := a.waitRequests(t, uint64(len(kongHeadline(t, k, a, logs))), 15*time.Second)
	logLayout(t, a)
	t.Logf("sent %d proxy requests; logs: proxy %d, admin %d, status %d; agent %d",
		len(reqs), len(logs[fixture.KongProxy]), len(logs[fixture.KongAdmin]), len(logs[fixture.KongStatus]), s.Total.Requests)
	compareKongListeners(t, k, a, s.Total, logs)
}

// agentListeners returns the agent's per-listener summaries since it started (/stats
// total.listeners: listener name, or port, to its requests; no host or path rows), or nil
// while the agent does not attribute requests to listeners.
func agentListeners(t *testing.T, a *agent) map[string]v1alpha1.Summary {
	t.Helper()
	resp, err := http.Get("http://" + a.addr + "/stats")
	if err != nil {
		t.Fatalf("GET /stats: %v", err)
	}
	defer resp.Body.Close()
	var doc struct {
		Total struct {
			Listeners map[string]v1alpha1.Summary `json:"listeners"`
		} `json:"total"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
		t.Fatalf("decoding /stats: %v", err)
	}
	return doc.Total.Listeners
}

// kongHeadline is the part of Kong's logs the agent's headline summary (Total) counts: the
// proxy's requests when the agent attributes requests to listeners, every TCP listener's
// requests until it does.
func kongHeadline(t *testing.T, k *fixture.Kong, a *agent, logs fixture.KongLogs) []fixture.LogEntry {
	t.Helper()
	if agentListeners(t, a) == nil {
		return logs.All()
	}
	return logs[fixture.KongProxy]
}

// compareKongListeners checks the agent against Kong's access logs. With per-listener stats
// the headline summary must equal the proxy's log (hosts and paths too), and every listener
// named proxy, admin, status or by a TCP port its log; other names (unix for unix-domain
// sockets such as Kong's worker events) are no TCP listener and are only logged; every logged
// request must be in a TCP listener. Without them, the headline total is compared with all
// TCP listeners' logs together.
func compareKongListeners(t *testing.T, k *fixture.Kong, a *agent, total v1alpha1.Summary, logs fixture.KongLogs) {
	t.Helper()
	ls := agentListeners(t, a)
	if ls == nil {
		t.Logf("the agent has no per-listener stats: its headline total is compared with the access logs of every TCP listener (proxy, admin, status)")
		compare(t, total, logs.All())
		return
	}
	t.Run("headline=proxy", func(t *testing.T) { compare(t, total, logs[fixture.KongProxy]) })
	var counted uint64
	for name, s := range ls {
		var es []fixture.LogEntry
		switch name {
		case fixture.KongProxy, fixture.KongAdmin, fixture.KongStatus:
			es = logs[name]
		default:
			port, err := strconv.Atoi(name)
			if err != nil {
				t.Logf("agent listener %q (no TCP listener of Kong's): %d requests, status codes %v", name, s.Requests, s.StatusCodes)
				continue
			}
			for _, e := range logs.All() {
				if e.ServerPort == port {
					es = append(es, e)
				}
			}
		}
		counted += s.Requests
		t.Run("listener="+name, func(t *testing.T) { compareCounts(t, s, es) })
	}
	if n := uint64(len(logs.All())); counted != n {
		t.Errorf("the agent's TCP listeners have %d requests, the access logs %d (by port: %s)", counted, n, listenerCounts(k, logs))
	}
}

func listenerCounts(k *fixture.Kong, logs fixture.KongLogs) string {
	byPort := map[int]int{}
	for _, e := range logs.All() {
		byPort[e.ServerPort]++
	}
	var parts []string
	for port, n := range byPort {
		parts = append(parts, fmt.Sprintf("%d (%s): %d", port, k.ListenerOf(fixture.LogEntry{ServerPort: port}), n))
	}
	sort.Strings(parts)
	return strings.Join(parts, ", ")
}

// compareKongLatencySplit checks the agent's Kong latency (total minus upstream for proxied
// requests, total otherwise) against the same computed from the access logs.
func compareKongLatencySplit(t *testing.T, s v1alpha1.Summary, es []fixture.LogEntry) {
	t.Helper()
	var kongMs []float64
	for _, e := range es {
		d := e.RequestTime
		if e.HasUpstream {
			d = max(e.RequestTime-e.UpstreamTime, 0)
		}
		kongMs = append(kongMs, float64(d.Microseconds())/1000)
	}
	sort.Float64s(kongMs)
	if s.KongLatencyMs.Count != uint64(len(kongMs)) {
		t.Errorf("Kong latency count: agent %d, access logs %d", s.KongLatencyMs.Count, len(kongMs))
	}
	for _, p := range []struct {
		name string
		got  float64
		q    float64
	}{{"p50", s.KongLatencyMs.P50, 50}, {"p99", s.KongLatencyMs.P99, 99}} {
		if want := nearestRank(kongMs, p.q); !within(p.got, want) {
			t.Errorf("Kong latency %s: agent %.3f ms, access logs (request_time - upstream_response_time) %.3f ms", p.name, p.got, want)
		}
	}
}

// kongMetricsSettled scrapes Kong's /metrics until it counts at least routed requests and
// two scrapes a second apart agree: each worker adds its counts to the shared ones on a timer
// (every second). After 20 s it returns the last scrape, for the comparison to show.
func kongMetricsSettled(t *testing.T, k *fixture.Kong, routed int) fixture.Samples {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	last := -1.0
	for {
		ms, err := k.Metrics(ctx)
		if err != nil {
			t.Fatalf("scraping Kong's Prometheus plugin: %v", err)
		}
		n := ms.Sum("kong_http_requests_total") + ms.Sum("kong_request_latency_ms_count") +
			ms.Sum("kong_kong_latency_ms_count") + ms.Sum("kong_upstream_latency_ms_count")
		if n == last && ms.Sum("kong_http_requests_total") >= float64(routed) {
			return ms
		}
		last = n
		select {
		case <-ctx.Done():
			t.Logf("Kong's metrics did not settle at %d routed requests within 20 s", routed)
			return ms
		case <-time.After(1100 * time.Millisecond):
		}
	}
}

// compareWithKongMetrics anchors the agent on Kong's own numbers. Kong's Prometheus plugin
// runs in the log phase of the requests a route matched (Kong's 404 for no route, and the 400
// of a request nginx could not parse, never get there) on the proxy listeners; the Admin and
// Status APIs are not counted either. So, exactly (headline: the log entries the agent's
// summary s covers, see kongHeadline):
//   - Kong's kong_http_requests_total by code equals the proxy log's routed requests by code,
//     and the agent's count of each code is Kong's plus the headline's requests Kong does not
//     count;
//   - Kong's kong_request_latency_ms is $request_time: its buckets equal the routed requests'
//     $request_time, which the agent's p50/p99 equal (compare);
//   - kong_upstream_latency_ms counts the routed requests that went to an upstream, as the
//     agent's upstreamLatencyMs counts the proxied ones.
//
// The latency split is measured differently, so only its counts compare: Kong's "kong
// latency" (X-Kong-Proxy-Latency, kong_kong_latency_ms) is the time until the balancer picked
// the upstream, or until Kong answered itself (X-Kong-Response-Latency); its "upstream
// latency" (X-Kong-Upstream-Latency, kong_upstream_latency_ms) runs from there to the first
// byte of the upstream's answer. The agent's upstream latency is $upstream_response_time
// (connect to last byte, every try), its Kong latency the rest of $request_time. Kong's
// histograms are checked against its own headers; the two splits are logged side by side.
func compareWithKongMetrics(t *testing.T, k *fixture.Kong, s v1alpha1.Summary, ms fixture.Samples, headline []fixture.LogEntry, reqs []fixture.KongRequest) {
	t.Helper()
	var routed []fixture.LogEntry
	notCounted := map[string]uint64{} // by code: requests of s Kong's plugin does not count
	for _, e := range headline {
		if k.ListenerOf(e) == fixture.KongProxy && fixture.KongRoute(e) != "" {
			routed = append(routed, e)
		} else {
			notCounted[fmt.Sprintf("%03d", e.Status)]++
		}
	}
	routedByCode := fromAccessLog(routed).codes
	kongByCode := map[string]uint64{}
	for code, v := range ms.SumBy("kong_http_requests_total", "code") {
		kongByCode[fmt.Sprintf("%03s", code)] = uint64(v)
	}
	diffCountsOf(t, "status codes of Kong's kong_http_requests_total and of the proxy log's routed requests differ",
		"Kong", "proxy log", kongByCode, routedByCode)

	codes := map[string]bool{}
	for c := range s.StatusCodes {
		codes[c] = true
	}
	for c := range kongByCode {
		codes[c] = true
	}
	var table []string
	var bad []string
	for c := range codes {
		table = append(table, fmt.Sprintf("%s: agent %d = Kong %d + not counted by Kong %d", c, s.StatusCodes[c], kongByCode[c], notCounted[c]))
		if s.StatusCodes[c] != kongByCode[c]+notCounted[c] {
			bad = append(bad, c)
		}
	}
	sort.Strings(table)
	t.Logf("per status code (not counted by Kong: no route matched, unparsable requests, and the Admin and Status APIs where the agent's summary has them):\n  %s", strings.Join(table, "\n  "))
	if len(bad) > 0 {
		sort.Strings(bad)
		t.Errorf("status codes where the agent is not Kong's count plus what Kong does not count: %v", bad)
	}

	// Total latency: the same $request_time on both sides, so every bucket is equal.
	reqMs := make([]float64, 0, len(routed))
	for _, e := range routed {
		reqMs = append(reqMs, float64(e.RequestTime.Milliseconds()))
	}
	compareKongBuckets(t, ms, "kong_request_latency_ms", reqMs, 0)

	// Counts of the split.
	var proxiedRouted uint64
	for _, e := range routed {
		if e.HasUpstream {
			proxiedRouted++
		}
	}
	if got := uint64(ms.Sum("kong_kong_latency_ms_count")); got != uint64(len(routed)) {
		t.Errorf("kong_kong_latency_ms_count %d, routed requests in the proxy log %d", got, len(routed))
	}
	if got := uint64(ms.Sum("kong_upstream_latency_ms_count")); got != proxiedRouted || got != s.UpstreamLatencyMs.Count {
		t.Errorf("proxied requests: kong_upstream_latency_ms_count %d, routed proxied in the proxy log %d, agent %d",
			got, proxiedRouted, s.UpstreamLatencyMs.Count)
	}

	// Kong's histograms of the split against Kong's own headers on the answers to routed
	// requests. A request whose answer the client never read (a client abort) has no header
	// but is in the histograms.
	var proxyHdr, upstreamHdr []float64
	for _, r := range reqs {
		if fixture.KongRoute(fixture.LogEntry{Method: r.Method, Host: r.Host, RequestURI: r.URI}) == "" {
			continue
		}
		switch {
		case r.ProxyLatency >= 0:
			proxyHdr = append(proxyHdr, float64(r.ProxyLatency))
		case r.ResponseLatency >= 0:
			proxyHdr = append(proxyHdr, float64(r.ResponseLatency))
		}
		if r.UpstreamLatency >= 0 {
			upstreamHdr = append(upstreamHdr, float64(r.UpstreamLatency))
		}
	}
	compareKongBuckets(t, ms, "kong_kong_latency_ms", proxyHdr, len(routed)-len(proxyHdr))
	compareKongBuckets(t, ms, "kong_upstream_latency_ms", upstreamHdr, int(proxiedRouted)-len(upstreamHdr))
	sort.Float64s(proxyHdr)
	sort.Float64s(upstreamHdr)
	t.Logf("latency split, p50/p99 ms: Kong's headers: kong %.0f/%.0f (%d answers), upstream %.0f/%.0f (%d); "+
		"agent: kong %.1f/%.1f (%d requests), upstream %.1f/%.1f (%d); total: agent %.1f/%.1f. "+
		"Kong's split ends at the upstream's first byte, the agent's upstream time at its last byte, "+
		"and the agent's Kong latency also covers the requests Kong does not count",
		nearestRank(proxyHdr, 50), nearestRank(proxyHdr, 99), len(proxyHdr),
		nearestRank(upstreamHdr, 50), nearestRank(upstreamHdr, 99), len(upstreamHdr),
		s.KongLatencyMs.P50, s.KongLatencyMs.P99, s.KongLatencyMs.Count,
		s.UpstreamLatencyMs.P50, s.UpstreamLatencyMs.P99, s.UpstreamLatencyMs.Count,
		s.LatencyMs.P50, s.LatencyMs.P99)
}

// compareKongBuckets checks Kong's histogram name (summed over routes) against values (ms):
// each cumulative bucket holds the values up to its bound, plus at most unknown values that
// Kong observed and the caller could not see.
func compareKongBuckets(t *testing.T, ms fixture.Samples, name string, values []float64, unknown int) {
	t.Helper()
	buckets := map[string]float64{}
	for _, smp := range ms {
		if smp.Name == name+"_bucket" {
			buckets[smp.Labels["le"]] += smp.Value
		}
	}
	if len(buckets) == 0 {
		t.Errorf("%s: no buckets in Kong's /metrics", name)
		return
	}
	var rows, bad []string
	for le, got := range buckets {
		bound := math.Inf(1)
		if le != "+Inf" {
			var err error
			if bound, err = strconv.ParseFloat(le, 64); err != nil {
				t.Errorf("%s: bucket le=%q", name, le)
				continue
			}
		}
		want := 0
		for _, v := range values {
			if v <= bound {
				want++
			}
		}
		rows = append(rows, fmt.Sprintf("%s=%d/%d", le, int(got), want))
		if int(got) < want || int(got) > want+unknown {
			bad = append(bad, fmt.Sprintf("le=%s: Kong %d, expected %d (+ up to %d unseen)", le, int(got), want, unknown))
		}
	}
	sort.Slice(rows, func(i, j int) bool { return leOf(rows[i]) < leOf(rows[j]) })
	t.Logf("%s buckets (Kong/expected): %s", name, strings.Join(rows, " "))
	if len(bad) > 0 {
		sort.Strings(bad)
		t.Errorf("%s:\n  %s", name, strings.Join(bad, "\n  "))
	}
}

func leOf(row string) float64 {
	le, _, _ := strings.Cut(row, "=")
	if le == "+Inf" {
		return math.Inf(1)
	}
	v, _ := strconv.ParseFloat(le, 64)
	return v
}
