//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// Step 3: traffic, the annotations within one stats interval, the Events, HighErrorRate.

// mainPlan is the traffic sent to each gateway pod in step 3: 238 requests to three hosts.
func mainPlan() []req {
	return []req{
		// HTTP/1.1, keep-alive.
		{proto: protoH1, method: "GET", host: "api.kong.test", uri: "/users/123", status: 200, count: 40, proxied: true, norm: "GET /users/{id}"},
		{proto: protoH1, method: "POST", host: "api.kong.test", uri: "/orders", status: 200, count: 20, proxied: true, norm: "POST /orders"},
		{proto: protoH1, method: "GET", host: "shop.kong.test", uri: "/fast", status: 200, count: 40, norm: "GET /fast"},
		{proto: protoH1, method: "GET", host: "shop.kong.test", uri: "/lua/hello", status: 200, count: 20, norm: "GET /lua/hello"},
		// HTTP/1.1 over TLS.
		{proto: protoH1TLS, method: "GET", host: "api.kong.test", uri: "/cart", status: 200, count: 30, proxied: true, norm: "GET /cart"},
		{proto: protoH1TLS, method: "DELETE", host: "api.kong.test", uri: "/users/77", status: 200, count: 10, proxied: true, norm: "DELETE /users/{id}"},
		// HTTP/2 over TLS.
		{proto: protoH2, method: "GET", host: "shop.kong.test", uri: "/api/items/42", status: 200, count: 30, proxied: true, norm: "GET /api/items/{id}"},
		{proto: protoH2, method: "GET", host: "other.kong.test", uri: "/fast", status: 200, count: 20, norm: "GET /fast"},
		{proto: protoH2, method: "PUT", host: "shop.kong.test", uri: "/cart/9", status: 200, count: 10, proxied: true, norm: "PUT /cart/{id}"},
		// Errors: 404 (the service's), 500 (the service's and a Lua plugin's), 502 (a dead
		// service), 503 (the service's).
		{proto: protoH1, method: "GET", host: "api.kong.test", uri: "/status/404", status: 404, count: 10, proxied: true, norm: "GET /status/{id}"},
		{proto: protoH1, method: "GET", host: "api.kong.test", uri: "/status/500", status: 500, count: 2, proxied: true, norm: "GET /status/{id}"},
		{proto: protoH1TLS, method: "GET", host: "shop.kong.test", uri: "/lua/error", status: 500, count: 2, norm: "GET /lua/error"},
		{proto: protoH2, method: "GET", host: "api.kong.test", uri: "/dead", status: 502, count: 2, norm: "GET /dead"},
		{proto: protoH2, method: "GET", host: "other.kong.test", uri: "/status/503", status: 503, count: 2, proxied: true, norm: "GET /status/{id}"},
	}
}

// burstPlan is the 5xx burst that must raise HighErrorRate.
func burstPlan() []req {
	return []req{{proto: protoH1, method: "GET", host: "api.kong.test", uri: "/status/500", status: 500, count: 60, proxied: true, norm: "GET /status/{id}"}}
}

// Step 5's traffic: during the reload, during the agent's restart, and after it.
func reloadReqs() []req {
	return []req{
		{proto: protoH1, method: "GET", host: "api.kong.test", uri: "/lua/hello", status: 200, norm: "GET /lua/hello"},
		{proto: protoH2, method: "GET", host: "shop.kong.test", uri: "/users/5", status: 200, proxied: true, norm: "GET /users/{id}"},
	}
}

func restartBgReq() req {
	return req{proto: protoH1, method: "GET", host: "api.kong.test", uri: "/during-restart", status: 200, proxied: true, norm: "GET /during-restart"}
}

func afterRestartPlan() []req {
	return []req{
		{proto: protoH1, method: "GET", host: "api.kong.test", uri: "/after-restart", status: 200, count: 25, proxied: true, norm: "GET /after-restart"},
		{proto: protoH2, method: "POST", host: "shop.kong.test", uri: "/after-restart/orders", status: 200, count: 15, proxied: true, norm: "POST /after-restart/orders"},
		{proto: protoH1TLS, method: "GET", host: "other.kong.test", uri: "/status/503", status: 503, count: 2, proxied: true, norm: "GET /status/{id}"},
	}
}

func allNorms() map[string]string {
	m := norms(mainPlan(), burstPlan(), reloadReqs(), afterRestartPlan(), []req{restartBgReq()}, afterHarmPlan(), []req{harmBgReq(), killsBgReq()})
	return m
}

// waitAgentReady waits until the agent's /readyz (probes attached to a serving gateway)
// answers 200 on the pod IP.
func waitAgentReady(t *testing.T, p *corev1.Pod, timeout time.Duration) {
	t.Helper()
	url := fmt.Sprintf("http://%s:%d/readyz", p.Status.PodIP, agentPort)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 3 * time.Second}
	waitFor(t, "the agent of "+p.Name+" ready ("+url+")", timeout, 500*time.Millisecond, func(ctx context.Context) (bool, string, error) {
		hr, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, "", err
		}
		resp, err := c.Do(hr)
		if err != nil {
			return false, "", err
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return resp.StatusCode == 200, fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(b.String())), nil
	})
}

// matchResult is what the annotation poll found for one pod.
type matchResult struct {
	after  time.Duration
	stats  kwv1.Stats
	probes uint64
}

// waitCountsMatch waits until, for every pod, the kong-watcher.io/stats annotation's totals
// equal want[pod] (the access log without the kubelet's probes) plus the readiness probes,
// which must agree with the access log too (withProbes), and the short annotations agree
// with the JSON. since[pod] is when the pod's traffic ended.
func (s *suite) waitCountsMatch(t *testing.T, what string, want map[string]*tally, since map[string]time.Time, timeout time.Duration) map[string]matchResult {
	t.Helper()
	res := map[string]matchResult{}
	waitFor(t, what, timeout, 250*time.Millisecond, func(ctx context.Context) (bool, string, error) {
		var msgs []string
		for pod, w := range want {
			if _, done := res[pod]; done {
				continue
			}
			p, err := s.cs.CoreV1().Pods(kongNS).Get(ctx, pod, metav1.GetOptions{})
			if err != nil {
				return false, "", err
			}
			st, err := podStats(p.Annotations)
			if err != nil {
				msgs = append(msgs, pod+": "+err.Error())
				continue
			}
			got := statsTally(st.Total)
			full, probes, bad, err := s.withProbes(pod, w, got, p.Status.PodIP, st.Since, s.probesAttached[pod])
			if err != nil {
				msgs = append(msgs, pod+": "+err.Error())
				continue
			}
			diff := diffTally(got, full)
			if bad != "" {
				diff = append(diff, bad)
			}
			diff = append(diff, checkShortAnnotations(p.Annotations, st.Total)...)
			if len(diff) > 0 {
				msgs = append(msgs, fmt.Sprintf("%s (stats updated %s): %s", pod, st.Updated.Format(time.TimeOnly), strings.Join(diff, "; ")))
				continue
			}
			after := time.Since(since[pod])
			res[pod] = matchResult{after: after, stats: st, probes: probes}
			t.Logf("%s: annotations match %s after its traffic: %d requests (%d of them kubelet probes), dataPath %q, %s",
				pod, after.Round(10*time.Millisecond), st.Total.Requests, probes, st.DataPath, p.Annotations[kwv1.AnnotationRequests])
		}
		return len(res) == len(want), strings.Join(msgs, " | "), nil
	})
	return res
}

func (s *suite) stepTraffic(t *testing.T) {
	pods := map[string]*corev1.Pod{}
	for _, name := range s.gatewayPods {
		p := s.pod(t, name)
		pods[name] = p
		waitAgentReady(t, p, waitShort)
		s.waitEvent(t, p, kwv1.ReasonKongDetected, corev1.EventTypeNormal, s.agentStart[name].Add(-time.Second), waitShort)
		ev := s.waitEvent(t, p, kwv1.ReasonProbesAttached, corev1.EventTypeNormal, s.agentStart[name].Add(-time.Second), waitShort)
		// Event times have second precision: the probes were attached before the next second.
		s.probesAttached[name] = eventFirstTime(ev).Truncate(time.Second).Add(time.Second)
	}

	plan := mainPlan()
	nm := allNorms()
	want := map[string]*tally{}
	trafficBegin := time.Now()
	trafficEnd := map[string]time.Time{}
	for _, name := range s.gatewayPods {
		snd := newSender(pods[name].Status.PodIP)
		defer snd.close() // also on t.Fatalf
		begin := time.Now()
		n := snd.sendAll(t, plan)
		trafficEnd[name] = time.Now()
		snd.close()
		t.Logf("%s (%s): %d requests (HTTP/1.1, HTTP/1.1 over TLS, HTTP/2; 200, 404, 500, 502, 503) in %s, every answer as expected",
			name, pods[name].Status.PodIP, n, time.Since(begin).Round(time.Millisecond))
	}

	// The access log (kubectl logs) is the ground truth; first check it says what was sent.
	exp := expected(plan)
	for _, name := range s.gatewayPods {
		entries := s.accessLog(t, name)
		lt := logTally(t, entries, nm, nil)
		if d := diffTally(lt, exp); len(d) > 0 {
			t.Fatalf("%s: the access log does not hold what the test sent: %s", name, strings.Join(d, "; "))
		}
		checkProtocols(t, name, entries, plan)
		want[name] = lt
	}
	t.Logf("access logs: each pod logged %s", exp)

	res := s.waitCountsMatch(t, "the kong-watcher.io/* annotations of both pods to count what the access logs hold", want, trafficEnd, 2*statsInterval+30*time.Second)
	for _, name := range s.gatewayPods {
		r := res[name]
		if r.after > statsInterval+3*time.Second {
			t.Errorf("%s: the annotations matched %s after the traffic, more than one stats interval (%s) plus 3s",
				name, r.after.Round(10*time.Millisecond), statsInterval)
		}
		s.note("Step 3, %s: the annotations counted the traffic %s after its last request (stats interval %s); %d requests, %d of them kubelet readiness probes; data path %q.",
			name, r.after.Round(100*time.Millisecond), statsInterval, r.stats.Total.Requests, r.probes, r.stats.DataPath)
	}

	// The third place people look: Prometheus /metrics on the agent's port.
	for _, name := range s.gatewayPods {
		mt, err := metricsTally(pods[name].Status.PodIP)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if d := diffTally(mt, want[name]); len(d) > 0 {
			t.Errorf("%s: kong_watcher_requests_total on /metrics does not equal the access log: %s", name, strings.Join(d, "; "))
		} else {
			t.Logf("%s: kong_watcher_requests_total on /metrics equals the access log (%d requests)", name, mt.Requests)
		}
	}

	// TrafficStats: the first one at the first stats window holding at least
	// ALERT_MIN_REQUESTS (20) requests (the kubelet's probes alone never make one), then every
	// TRAFFIC_STATS_EVENT_INTERVAL (5m).
	for _, name := range s.gatewayPods {
		ev := s.waitEvent(t, pods[name], kwv1.ReasonTrafficStats, corev1.EventTypeNormal, s.agentStart[name].Add(-time.Second), 2*statsInterval+30*time.Second)
		checkTrafficStats(t, name, ev, trafficBegin)
		s.note("Step 3, %s: `TrafficStats` %q.", name, ev.Message)
	}

	// What a person sees (after the TrafficStats Events, which it lists too).
	podA := s.gatewayPods[0]
	desc := s.mustKubectl(t, time.Minute, "describe", "pod", "-n", kongNS, podA)
	t.Logf("kubectl describe pod %s:\n%s", podA, desc)
	for _, k := range []string{kwv1.AnnotationRequests, kwv1.AnnotationLatency, kwv1.AnnotationMethods, kwv1.AnnotationStatus,
		kwv1.AnnotationTopHosts, kwv1.AnnotationTopPaths, kwv1.AnnotationStats, kwv1.AnnotationInjected} {
		if !strings.Contains(desc, k+":") {
			t.Errorf("kubectl describe pod %s shows no %s annotation", podA, k)
		}
	}
	if !strings.Contains(desc, "kong-watcher.io/requests:  total=") && !strings.Contains(desc, "kong-watcher.io/requests: total=") {
		t.Errorf("kubectl describe pod %s: no `kong-watcher.io/requests: total=...` line", podA)
	}
	checkDescribeCounts(t, podA, desc, want[podA])
	for _, reason := range []string{kwv1.ReasonKongDetected, kwv1.ReasonProbesAttached, kwv1.ReasonTrafficStats} {
		if !strings.Contains(desc, reason) {
			t.Errorf("kubectl describe pod %s lists no %s Event", podA, reason)
		}
	}
	for _, name := range s.gatewayPods {
		out := s.mustKubectl(t, time.Minute, "get", "events", "-n", kongNS, "--field-selector", "involvedObject.name="+name)
		t.Logf("events of %s:\n%s", name, out)
		for _, reason := range []string{kwv1.ReasonKongDetected, kwv1.ReasonProbesAttached, kwv1.ReasonTrafficStats} {
			if !strings.Contains(out, reason) {
				t.Errorf("kubectl get events for %s lists no %s", name, reason)
			}
		}
	}

	// Did the mixed traffic (about 3% 5xx, spread evenly) already raise HighErrorRate? It
	// should not have; a note, not a failure (a window holding only part of the traffic may
	// hold more than 5%).
	ctx, cancel := ctx30()
	for _, name := range s.gatewayPods {
		evs, err := s.podEvents(ctx, pods[name])
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			if e.Reason == kwv1.ReasonHighErrorRate {
				t.Logf("note: %s already had HighErrorRate before the burst: %s", name, e.Message)
			}
		}
	}
	cancel()

	// A burst of 5xx raises HighErrorRate (default threshold 5%, at least 20 requests in the
	// window), then, once the window is quiet again, HighErrorRateResolved.
	burst := burstPlan()
	burstStart := time.Now()
	burstEnd := map[string]time.Time{}
	for _, name := range s.gatewayPods {
		snd := newSender(pods[name].Status.PodIP)
		defer snd.close() // also on t.Fatalf
		snd.sendAll(t, burst)
		burstEnd[name] = time.Now()
		snd.close()
	}
	for _, name := range s.gatewayPods {
		ev := s.waitEvent(t, pods[name], kwv1.ReasonHighErrorRate, corev1.EventTypeWarning, burstStart, 2*statsInterval+30*time.Second)
		s.note("Step 3, %s: `HighErrorRate` %s after a burst of %d requests answered 500: %q", name,
			eventTime(ev).Sub(burstStart.Truncate(time.Second)).Round(time.Second), sent(burst), ev.Message)
	}
	for _, name := range s.gatewayPods {
		s.waitEvent(t, pods[name], kwv1.ReasonHighErrorRateResolved, corev1.EventTypeNormal, burstStart, 3*statsInterval+30*time.Second)
	}
	bexp := expected(burst)
	for _, name := range s.gatewayPods {
		entries := s.accessLog(t, name)
		lt := logTally(t, entries, nm, nil)
		sum := cloneTally(want[name])
		addTally(sum, bexp)
		if d := diffTally(lt, sum); len(d) > 0 {
			t.Fatalf("%s: the access log after the burst does not hold what the test sent: %s", name, strings.Join(d, "; "))
		}
		want[name] = lt
	}
	s.waitCountsMatch(t, "the annotations to count the burst too", want, burstEnd, 2*statsInterval+30*time.Second)
	s.describe["after step 3 ("+podA+")"] = desc
}

func addTally(dst, src *tally) {
	dst.Requests += src.Requests
	dst.Errors += src.Errors
	dst.ClientErrors += src.ClientErrors
	for _, m := range []struct{ d, s map[string]uint64 }{{dst.Methods, src.Methods}, {dst.Status, src.Status}, {dst.Hosts, src.Hosts}, {dst.Paths, src.Paths}} {
		for k, v := range m.s {
			m.d[k] += v
		}
	}
}

// checkProtocols checks that the client-facing log lines have the protocols and ports of
// the plan: HTTP/1.1 on 8000, HTTP/1.1 and HTTP/2.0 over TLS on 8443.
func checkProtocols(t *testing.T, pod string, entries []fixture.LogEntry, plan []req) {
	t.Helper()
	want := map[string]int{}
	for _, r := range plan {
		switch r.proto {
		case protoH1:
			want[fmt.Sprintf("http HTTP/1.1 %d", httpPort)] += r.count
		case protoH1TLS:
			want[fmt.Sprintf("https HTTP/1.1 %d", tlsPort)] += r.count
		case protoH2:
			want[fmt.Sprintf("https HTTP/2.0 %d", tlsPort)] += r.count
		}
	}
	got := map[string]int{}
	for _, e := range entries {
		if !isProbe(e) {
			got[fmt.Sprintf("%s %s %d", e.Scheme, e.Protocol, e.ServerPort)]++
		}
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: access log has %d requests %q, want %d (all: %v)", pod, got[k], k, v, got)
		}
	}
	for k, v := range got {
		if want[k] == 0 {
			t.Errorf("%s: access log has %d requests %q the test did not send (all: %v)", pod, v, k, got)
		}
	}
}
