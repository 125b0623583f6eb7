package integration

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// The fixture with Kong's listeners: the proxy (HTTP, and HTTPS with HTTP/2), an Admin API
// and a Status API on ports of their own, and a unix-socket server that holds each request
// for 2 s, as Kong's worker events do. Its master's environment names them as Kong's does
// (KONG_PROXY_LISTEN, KONG_ADMIN_LISTEN, KONG_STATUS_LISTEN).
type listenersGateway struct {
	*fixture.Gateway
	admin, status int
	socket        string
}

// workerEventsDelay is how long the unix-socket server holds a request.
const workerEventsDelay = 2 * time.Second

func startListenersGateway(t *testing.T) *listenersGateway {
	t.Helper()
	fixture.RequireRoot(t)
	ports := freePorts(t, 4)
	g := &listenersGateway{admin: ports[2], status: ports[3], socket: filepath.Join(t.TempDir(), "worker_events.sock")}
	// The fixture's nginx inherits this process's environment: Kong's settings, as Kong's
	// container gives them to its nginx.
	t.Setenv("KONG_PROXY_LISTEN", fmt.Sprintf("127.0.0.1:%d reuseport backlog=16384, 127.0.0.1:%d http2 ssl reuseport backlog=16384", ports[0], ports[1]))
	t.Setenv("KONG_ADMIN_LISTEN", fmt.Sprintf("127.0.0.1:%d reuseport backlog=16384", g.admin))
	t.Setenv("KONG_STATUS_LISTEN", fmt.Sprintf("127.0.0.1:%d", g.status))
	g.Gateway = fixture.StartT(t, fixture.Options{Workers: 2, HTTPPort: ports[0], HTTPSPort: ports[1]})
	// The fixture serves the proxy only: the other servers join its configuration, which a
	// reload applies (the master binds their sockets itself).
	path := filepath.Join(g.Prefix, "nginx.conf")
	conf, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	end := bytes.LastIndexByte(conf, '}')
	servers := fmt.Sprintf(`
    server {
        listen 127.0.0.1:%d;
        server_name kong_admin;
        default_type application/json;
        location = /services { content_by_lua_block { ngx.sleep(math.random() * 0.02) ngx.status = 201 ngx.say('{"id":"new"}') } }
        location /services/ { content_by_lua_block { ngx.sleep(math.random() * 0.03) ngx.say('{"name":"svc"}') } }
        location / { return 404 '{"message":"Not found"}'; }
    }
    server {
        listen 127.0.0.1:%d;
        server_name kong_status;
        default_type application/json;
        location = /status { return 200 '{"server":{}}'; }
        location = /status/ready { return 503 '{"message":"not ready"}'; }
        location / { return 404; }
    }
    server {
        listen unix:%s;
        server_name kong_worker_events;
        location / { content_by_lua_block { ngx.sleep(%g) ngx.say("events") } }
    }
`, g.admin, g.status, g.socket, workerEventsDelay.Seconds())
	conf = slices.Concat(conf[:end], []byte(servers), conf[end:])
	if err := os.WriteFile(path, conf, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := g.Reload(); err != nil {
		t.Fatalf("reload with the Admin, Status and worker-events servers: %v", err)
	}
	return g
}

// freePorts returns n distinct loopback ports free a moment ago.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	var out []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		out = append(out, l.Addr().(*net.TCPAddr).Port)
	}
	return out
}

func (g *listenersGateway) httpPort() int  { return portOf(g.HTTPAddr) }
func (g *listenersGateway) httpsPort() int { return portOf(g.HTTPSAddr) }

func portOf(addr string) int {
	_, p, _ := net.SplitHostPort(addr)
	n, _ := strconv.Atoi(p)
	return n
}

// override is the KONG_WATCHER_LISTENERS that names the gateway's listeners as Kong's
// environment does.
func (g *listenersGateway) override() string {
	return fmt.Sprintf("proxy=%d,%d;admin=%d;status=%d", g.httpPort(), g.httpsPort(), g.admin, g.status)
}

// listenerOf names a log entry's listener as the agent should.
func (g *listenersGateway) listenerOf(e fixture.LogEntry) string {
	switch e.ServerPort {
	case g.httpPort(), g.httpsPort():
		return "proxy"
	case g.admin:
		return "admin"
	case g.status:
		return "status"
	case 0:
		return "unix"
	}
	return strconv.Itoa(e.ServerPort)
}

// sideTraffic is what the Admin API, the Status API and the worker events get while the
// proxy serves: Admin API calls on a keep-alive connection and on their own, the kubelet's
// probes (a connection each, as the kubelet makes them), and worker-event connections held
// for seconds. It returns how many requests it sent.
func (g *listenersGateway) sideTraffic(ctx context.Context, t *testing.T) int {
	t.Helper()
	var wg sync.WaitGroup
	var mu sync.Mutex
	sent := 0
	count := func() { mu.Lock(); sent++; mu.Unlock() }
	wg.Add(3)
	go func() { // the Admin API
		defer wg.Done()
		keepAlive := &http.Client{Timeout: 10 * time.Second}
		fresh := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		defer keepAlive.CloseIdleConnections()
		base := fmt.Sprintf("http://127.0.0.1:%d", g.admin)
		for i := 0; i < 60 && ctx.Err() == nil; i++ {
			c := []*http.Client{keepAlive, fresh}[i%2]
			method, path := "GET", fmt.Sprintf("/services/svc-%d", i%7)
			switch i % 5 {
			case 1:
				method, path = "POST", "/services"
			case 3:
				path = "/routes/nothing"
			}
			req, _ := http.NewRequestWithContext(ctx, method, base+path, strings.NewReader(""))
			if resp, err := c.Do(req); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				count()
			}
		}
	}()
	go func() { // the kubelet's probes on the Status API
		defer wg.Done()
		c := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}
		for i := 0; i < 40 && ctx.Err() == nil; i++ {
			path := []string{"/status", "/status", "/status/ready", "/metrics"}[i%4]
			if resp, err := c.Get(fmt.Sprintf("http://127.0.0.1:%d%s", g.status, path)); err == nil {
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				count()
			}
			time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
		}
	}()
	go func() { // worker events: three connections at once, each held by the server
		defer wg.Done()
		var inner sync.WaitGroup
		for i := range 3 {
			inner.Add(1)
			go func() {
				defer inner.Done()
				c, err := net.DialTimeout("unix", g.socket, 5*time.Second)
				if err != nil {
					t.Errorf("worker events: %v", err)
					return
				}
				defer c.Close()
				c.SetDeadline(time.Now().Add(workerEventsDelay + 10*time.Second))
				fmt.Fprintf(c, "GET /?worker=%d HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n", i)
				if _, err := io.ReadAll(c); err == nil {
					count()
				}
			}()
		}
		inner.Wait()
	}()
	wg.Wait()
	return sent
}

// byListener splits log entries by the listener that accepted them.
func (g *listenersGateway) byListener(es []fixture.LogEntry) map[string][]fixture.LogEntry {
	out := map[string][]fixture.LogEntry{}
	for _, e := range es {
		l := g.listenerOf(e)
		out[l] = append(out[l], e)
	}
	return out
}

// waitListeners reads /stats until the agent's listeners add up to n requests (or a
// timeout), then returns the document.
func (a *agent) waitListeners(t *testing.T, n uint64, timeout time.Duration) v1alpha1.Stats {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		s := a.stats(t)
		var sum uint64
		for _, l := range s.Total.Listeners {
			sum += l.Requests
		}
		if sum >= n || time.Now().After(deadline) {
			time.Sleep(300 * time.Millisecond) // late events would show they overshoot
			return a.stats(t)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// compareListener checks one listener's summary against its access-log lines as compare
// does a summary's; a listener has no host or path rows, so the log's stand in for them.
func compareListener(t *testing.T, l v1alpha1.ListenerSummary, es []fixture.LogEntry) {
	t.Helper()
	if len(es) == 0 {
		if l.Requests != 0 {
			t.Errorf("requests: agent %d, access log 0", l.Requests)
		}
		return
	}
	tr := fromAccessLog(es)
	s := v1alpha1.Summary{ListenerSummary: v1alpha1.ListenerSummary{Requests: l.Requests, Responses: l.Responses, Errors: l.Errors, ClientErrors: l.ClientErrors,
		LatencyMs: l.LatencyMs, UpstreamLatencyMs: l.UpstreamLatencyMs, Methods: l.Methods, StatusCodes: l.StatusCodes},
		Hosts: countRows(tr.hosts), Paths: countRows(tr.paths)}
	compare(t, s, es)
	if l.Histograms == nil || l.Histograms.Latency == nil {
		t.Errorf("no latency histogram")
	}
}

func countRows(m map[string]uint64) []v1alpha1.Row {
	var out []v1alpha1.Row
	for name, n := range m {
		out = append(out, v1alpha1.Row{Name: name, Requests: n})
	}
	return out
}

// TestAgentAttributesListeners: a Kong-like gateway whose nginx serves the proxy (HTTP/1.x,
// TLS, HTTP/2), the Admin API, the Status API and a unix-socket server holding requests for
// seconds (Kong's worker events), all at once. Expected: the headline (total, its host and
// path rows, its percentiles) equals the access log's proxy lines exactly; the listeners
// admin, status and unix equal their own lines; nothing of theirs is in the headline. Two
// agents on the nginx-request data path run side by side, one naming the listeners from the
// master's environment (KONG_*_LISTEN), one from KONG_WATCHER_LISTENERS; an agent on the
// wire data path attributes the HTTP/1.x requests the same way.
func TestAgentAttributesListeners(t *testing.T) {
	g := startListenersGateway(t)
	agents := map[string]*agent{
		"kong-env": startAgent(t, g.MasterPID(), nil),
		"override": startAgent(t, g.MasterPID(), nil, "KONG_WATCHER_LISTENERS="+g.override()),
		"wire":     startAgent(t, g.MasterPID(), nil, "KONG_WATCHER_DATA_PATH=wire", "KONG_WATCHER_LISTENERS="+g.override()),
	}
	for _, a := range agents {
		a.waitReady(t, 20*time.Second)
	}
	// The agents count from here (the reload's pings are in the log before).
	before, err := g.AccessLog()
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var wg sync.WaitGroup
	var side int
	wg.Add(1)
	go func() { defer wg.Done(); side = g.sideTraffic(ctx, t) }()
	sent, err := g.DriveMixed(ctx, 300, 4)
	if err != nil {
		t.Logf("traffic: %v", err) // nginx's business; the log is the truth
	}
	wg.Wait()
	es, err := g.WaitAccessLog(ctx, fixture.Traffic(before)+sent.Total()+side)
	if err != nil {
		t.Fatal(err)
	}
	es = es[len(before):]
	logs := g.byListener(es)
	var counts []string
	for name, les := range logs {
		counts = append(counts, fmt.Sprintf("%s %d", name, len(les)))
	}
	slices.Sort(counts)
	t.Logf("access log: %d lines (%s); the proxy's by protocol: %v", len(es), strings.Join(counts, ", "), protocols(logs["proxy"]))
	if len(logs["admin"]) == 0 || len(logs["status"]) == 0 || len(logs["unix"]) != 3 || len(logs) != 4 {
		t.Fatalf("traffic missed a listener: %s", strings.Join(counts, ", "))
	}
	if p := protocols(logs["proxy"]); p["HTTP/2.0"] == 0 || p["HTTP/1.1"] == 0 || p["HTTP/1.0"] == 0 {
		t.Fatalf("proxy traffic lacks a protocol: %v", p)
	}
	if !slices.ContainsFunc(logs["proxy"], func(e fixture.LogEntry) bool { return e.Scheme == "https" && e.Protocol == "HTTP/1.1" }) {
		t.Fatal("no HTTPS HTTP/1.1 request on the proxy")
	}

	for _, name := range []string{"kong-env", "override"} {
		t.Run(name, func(t *testing.T) {
			a := agents[name]
			s := a.waitListeners(t, uint64(len(es)), 15*time.Second)
			if s.DataPath != "nginx-request" {
				t.Errorf("data path %q", s.DataPath)
			}
			checkListeners(t, s, logs, func(fixture.LogEntry) bool { return true })
			if line := grep(a.log.String(), "listener names"); name == "kong-env" && !strings.Contains(line, `"kong"`) {
				t.Errorf("the agent did not name the listeners from Kong's environment: %s", line)
			}
		})
	}
	t.Run("wire", func(t *testing.T) {
		// The wire data path parses HTTP/1.x only: HTTP/2 requests are counted as connections,
		// and garbage nginx answers 400 without a request line is not a request to it.
		http1 := func(e fixture.LogEntry) bool { return e.Protocol == "HTTP/1.1" || e.Protocol == "HTTP/1.0" }
		n := 0
		for _, e := range es {
			if http1(e) {
				n++
			}
		}
		s := agents["wire"].waitListeners(t, uint64(n), 15*time.Second)
		if s.DataPath != "wire" {
			t.Errorf("data path %q", s.DataPath)
		}
		checkListeners(t, s, logs, http1)
	})
}

// checkListeners compares the agent's headline and listeners with the log lines of each
// listener that keep holds. The wire data path (keep: HTTP/1.x only) is held to the counts,
// status codes and paths: its timing is its own, not nginx's, and a request whose client
// gave up (nginx's 499) has no status on the wire.
func checkListeners(t *testing.T, s v1alpha1.Stats, logs map[string][]fixture.LogEntry, keep func(fixture.LogEntry) bool) {
	t.Helper()
	wire := s.DataPath == "wire"
	var names []string
	for name := range s.Total.Listeners {
		names = append(names, name)
	}
	slices.Sort(names)
	if !slices.Equal(names, []string{"admin", "proxy", "status", "unix"}) {
		t.Errorf("listeners %v, want admin, proxy, status, unix", names)
	}
	for _, name := range []string{"proxy", "admin", "status", "unix"} {
		var es []fixture.LogEntry
		for _, e := range logs[name] {
			if keep(e) {
				es = append(es, e)
			}
		}
		l := s.Total.Listeners[name]
		t.Run(name, func(t *testing.T) {
			if wire {
				want := wireTruth(es)
				if l.Requests != uint64(want.requests) {
					t.Errorf("requests: agent %d, access log %d", l.Requests, want.requests)
				}
				diffCounts(t, "status codes", l.StatusCodes, want.codes)
				return
			}
			compareListener(t, l, es)
		})
	}
	// The headline is the proxy's, exactly: its rows, its percentiles.
	t.Run("headline", func(t *testing.T) {
		var es []fixture.LogEntry
		for _, e := range logs["proxy"] {
			if keep(e) {
				es = append(es, e)
			}
		}
		if wire {
			tr := wireTruth(es)
			if s.Total.Requests != uint64(tr.requests) {
				t.Errorf("requests: agent %d, access log %d", s.Total.Requests, tr.requests)
			}
			diffCounts(t, "status codes", s.Total.StatusCodes, tr.codes)
			diffCounts(t, "paths", rows(s.Total.Paths), tr.paths)
		} else {
			compare(t, s.Total, es)
		}
		// The worker events' seconds are nowhere near it.
		if s.Total.LatencyMs.Max >= float64(workerEventsDelay.Milliseconds()) {
			t.Errorf("headline max latency %v ms: the worker events' are in it", s.Total.LatencyMs.Max)
		}
		if u := s.Total.Listeners["unix"]; u.LatencyMs.P99 < float64(workerEventsDelay.Milliseconds()) {
			t.Errorf("unix p99 %v ms, want at least %v", u.LatencyMs.P99, workerEventsDelay)
		}
		p := s.Total.Listeners["proxy"]
		if p.Requests != s.Total.Requests || p.LatencyMs != s.Total.LatencyMs {
			t.Errorf("listener proxy: %d requests %+v, headline %d %+v", p.Requests, p.LatencyMs, s.Total.Requests, s.Total.LatencyMs)
		}
	})
}

// wireTruth is fromAccessLog as the wire data path sees the requests: one whose client gave
// up (499) got no response.
func wireTruth(es []fixture.LogEntry) truth {
	tr := fromAccessLog(es)
	if n := tr.codes["499"]; n > 0 {
		tr.codes["000"] += n
		delete(tr.codes, "499")
	}
	return tr
}

func protocols(es []fixture.LogEntry) map[string]int {
	out := map[string]int{}
	for _, e := range es {
		out[e.Protocol]++
	}
	return out
}

// grep returns the lines of s that contain sub.
func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
