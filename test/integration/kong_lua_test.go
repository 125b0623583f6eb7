package integration

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// TestKongLuaPhases: Kong runs its plugins in the lua module's rewrite, access,
// header_filter, body_filter, log and balancer handlers (its nginx template puts a
// *_by_lua_block calling Kong.<phase>() in each). With Lua timing on for every request
// (KONG_WATCHER_LUA_PHASES=on), each proxy request's phases are timed, counted once per
// request in which the phase ran, and the counting stays exact against the access logs.
//
// The per-phase counts are checked against what Kong's logs say must have happened, over
// a second batch of traffic (the first teaches the agent nginx's layout: calibration events
// carry no Lua timing):
//   - balancer: once for every proxied request (Kong's balancer_by_lua picks each try's
//     peer), never for the others (request-termination, key-auth refusals, no route);
//   - log: every proxy request that reached Kong's location, that is all but the ones nginx
//     itself refused while reading the request (400 without a method);
//   - rewrite and access: as log, minus at most the requests whose client went away before
//     the access phase ran;
//   - header_filter: as rewrite (every answer Kong sends passes its header filter);
//   - content: only for the answers nginx itself made of an upstream failure (502, 503,
//     504): Kong's error_page sends them to its /kong_error_handler location, whose
//     content_by_lua_block writes Kong's error body; Kong proxies with proxy_pass otherwise.
func TestKongLuaPhases(t *testing.T) {
	k := fixture.StartKongT(t, fixture.KongOptions{})
	a := startAgent(t, k.MasterPID(), nil, "KONG_WATCHER_LUA_PHASES=on")
	a.waitReady(t, 30*time.Second)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	// Batch 1: the layout is learnt, everything counted.
	if err := k.ResetLogs(); err != nil {
		t.Fatal(err)
	}
	reqs, err := k.DriveKong(ctx, 60, 2)
	if err != nil {
		t.Logf("traffic: %v", err)
	}
	logs, err := k.WaitLogs(ctx, len(reqs))
	if err != nil {
		t.Fatal(err)
	}
	before := a.waitRequests(t, uint64(len(logs[fixture.KongProxy])), 15*time.Second).Total
	if !strings.Contains(a.log.String(), "learnt nginx request layout") {
		t.Fatalf("no layout learnt after %d requests", len(reqs))
	}

	// Batch 2: every proxy request has Lua timing.
	if err := k.ResetLogs(); err != nil {
		t.Fatal(err)
	}
	reqs, err = k.DriveKong(ctx, 270, 4)
	if err != nil {
		t.Logf("traffic: %v", err)
	}
	logs2, err := k.WaitLogs(ctx, len(reqs))
	if err != nil {
		t.Fatal(err)
	}
	proxy := logs2[fixture.KongProxy]
	after := a.waitRequests(t, before.Requests+uint64(len(proxy)), 15*time.Second).Total
	if got := after.Requests - before.Requests; got != uint64(len(proxy)) {
		t.Errorf("proxy requests in batch 2: agent %d, access log %d", got, len(proxy))
	}

	var proxied, located, aborted, upstreamFailed int
	for _, e := range proxy {
		if e.HasUpstream {
			proxied++
			if e.Status >= 502 && e.Status <= 504 {
				upstreamFailed++
			}
		}
		if e.Method != "" {
			located++
		}
		if e.Status == 499 {
			aborted++
		}
	}
	delta := func(phase string) (uint64, v1alpha1.Latency) {
		a, b := after.LuaPhasesMs[phase], before.LuaPhasesMs[phase]
		return a.Count - b.Count, a
	}
	t.Logf("batch 2: %d proxy requests, %d proxied (%d failed), %d with a request line, %d aborted",
		len(proxy), proxied, upstreamFailed, located, aborted)
	for _, phase := range model.LuaPhaseNames {
		n, l := delta(phase)
		t.Logf("%-13s %4d requests in batch 2; all so far: p50 %.3f ms, p99 %.3f ms, max %.3f ms", phase, n, l.P50, l.P99, l.Max)
	}
	check := func(phase string, lo, hi int) {
		t.Helper()
		n, l := delta(phase)
		if int(n) < lo || int(n) > hi {
			t.Errorf("%s ran in %d requests of batch 2, want %d..%d", phase, n, lo, hi)
		}
		// Kong's handlers take microseconds to milliseconds; the machine may be loaded.
		if n > 0 && (l.P50 <= 0 || l.P50 > 200) {
			t.Errorf("%s: p50 %.3f ms", phase, l.P50)
		}
	}
	check("balancer", proxied, proxied)
	check("log", located, located)
	check("rewrite", located-aborted, located)
	check("access", located-aborted, located)
	check("header_filter", located-aborted, located)
	check("body_filter", 1, located)
	check("content", upstreamFailed, upstreamFailed)

	// The phases are the proxy's: the headline stays exact with Lua timing on.
	compareKongListeners(t, k, a, after, mergeLogs(logs, logs2))
}

// mergeLogs joins two batches of Kong's access logs, listener by listener.
func mergeLogs(a, b fixture.KongLogs) fixture.KongLogs {
	out := fixture.KongLogs{}
	for _, l := range []fixture.KongLogs{a, b} {
		for name, es := range l {
			out[name] = append(out[name], es...)
		}
	}
	return out
}

// TestLuaPhasesOnEveryBuild: the Lua phase probes find the lua module's handlers in every
// nginx of fixture.NginxBuilds (Debian's dynamic module, the stripped OpenResty lines Kong
// ships) and time exactly the phases the fixture's configuration runs Lua in, in exactly the
// requests that ran them, as the access log tells (fixtureLuaPhases); never rewrite,
// body_filter or balancer, which it does not configure. The headline stays exact.
func TestLuaPhasesOnEveryBuild(t *testing.T) {
	for _, b := range fixture.NginxBuilds() {
		t.Run(b.Name, func(t *testing.T) {
			fixture.RequireBuild(t, b)
			opts := b.Options
			opts.Workers = 2
			gw := fixture.StartT(t, opts)
			a := startAgent(t, gw.MasterPID(), nil, "KONG_WATCHER_LUA_PHASES=on")
			a.waitReady(t, 20*time.Second)
			// Batch 1 teaches the layout (calibration events carry no Lua timing).
			before := driveAndCompare(t, gw, a, 200).Total
			es1, err := gw.AccessLog()
			if err != nil {
				t.Fatal(err)
			}
			s := driveAndCompare(t, gw, a, 200)
			if s.DataPath != "nginx-request" {
				t.Fatalf("data path %q, want nginx-request", s.DataPath)
			}
			es, err := gw.AccessLog()
			if err != nil {
				t.Fatal(err)
			}
			want, aborted := fixtureLuaPhases(es[len(es1):])
			for _, name := range model.LuaPhaseNames {
				l := s.Total.LuaPhasesMs[name]
				got := int(l.Count - before.LuaPhasesMs[name].Count)
				t.Logf("%-13s batch 2: agent %d, access log %d; p50 %.3f ms, p99 %.3f ms", name, got, want[name], l.P50, l.P99)
				lo := want[name]
				if name == "header_filter" {
					lo -= aborted // a client gone before the answer gets no header
				}
				if got < lo || got > want[name] {
					t.Errorf("%s ran Lua in %d requests of batch 2, the access log says %d..%d", name, got, lo, want[name])
				}
			}
		})
	}
}

// fixtureLuaPhases counts, from the access log, the requests in which each Lua phase's
// handler must have run in test/fixture's nginx.conf.tmpl. The lua module installs its
// access phase handler for every location once one has access_by_lua: it runs (and
// declines at once where there is none) for every request that reaches the access phase,
// that is all but /fast, which `return` answers in the rewrite phase. The header filter
// runs Lua only where header_filter_by_lua is (its "kong" template: every location but /fast
// and /static/); /lua/* and the catch-all location answer from content_by_lua. A 400 is
// nginx refusing the request before any location. aborted counts the 499s in the "kong"
// locations.
func fixtureLuaPhases(es []fixture.LogEntry) (n map[string]int, aborted int) {
	proxied := regexp.MustCompile(`^/(users|api|private|echo|status|cart|orders)(/|$)`)
	n = map[string]int{}
	for _, e := range es {
		if e.Status == 400 || e.Method == "" {
			continue
		}
		path, _, _ := strings.Cut(e.RequestURI, "?")
		switch {
		case path == "/fast":
			continue
		case strings.HasPrefix(path, "/static/"):
			n["access"]++
			continue
		case path == "/lua/hello" || path == "/lua/error":
			n["content"]++
		case proxied.MatchString(path) || strings.HasPrefix(path, "/slow") || strings.HasPrefix(path, "/dead"):
		default:
			n["content"]++ // the catch-all: Kong's 404
		}
		n["access"]++
		n["header_filter"]++
		if e.Status == 499 {
			aborted++
		}
	}
	return n, aborted
}
