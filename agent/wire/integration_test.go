package wire

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/go-logr/logr/testr"
	"golang.org/x/sys/unix"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
	"github.com/kong-watcher/kong-watcher/agent/kernel"
	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// havePrereqs skips (or, with KW_REQUIRE_INTEGRATION=1, fails) a test that needs root,
// tools on PATH and kernel BTF; under -short it skips unless integration is required.
func havePrereqs(t *testing.T, tools ...string) {
	t.Helper()
	if testing.Short() && !fixture.IntegrationRequired() {
		t.Skip("-short: no root/nginx integration tests")
	}
	fixture.Require(t, os.Geteuid() == 0, "root (BPF + uprobes)")
	for _, tool := range tools {
		fixture.RequireCommand(t, tool)
	}
	_, err := os.Stat("/sys/kernel/btf/vmlinux")
	fixture.Require(t, err == nil, "kernel BTF")
}

// wireServers are the servers of the wire tests' nginx (test/fixture's gateway, its
// Servers replaced): a plain listener (HTTPPort), TLS with HTTP/2 (HTTPSPort) and without
// (ExtraPorts[0]), answering 200 and 404, a proxy_pass and a Lua cosocket call-out (as a
// Kong plugin calls out) to a second server (ExtraPorts[1]), and static files sent with
// sendfile. %s adds directives to the main server.
const wireServers = `
  server {
    listen 127.0.0.1:{{.HTTPPort}};
    listen 127.0.0.1:{{index .ExtraPorts 0}} ssl;
    listen 127.0.0.1:{{.HTTPSPort}} ssl http2;
    # nginx's defaults, which the fixture raises: a request line beyond 8k is refused (414).
    large_client_header_buffers 4 8k;
    keepalive_requests 10000;
    %s
    location / { return 200 "ok\n"; }
    location /missing/ { return 404; }
    location /proxy/ { proxy_pass http://127.0.0.1:{{index .ExtraPorts 1}}; }
    location /static/ { alias {{.Prefix}}/static/; sendfile on; }
    location /lua/ { content_by_lua_block {
      local sock = ngx.socket.tcp()
      assert(sock:connect("127.0.0.1", {{index .ExtraPorts 1}}))
      assert(sock:send("GET /from-lua HTTP/1.0\r\nHost: lua-up\r\n\r\n"))
      local body = assert(sock:receive("*a"))
      sock:close()
      ngx.status = 201
      ngx.say("lua ok ", #body)
    } }
  }
  server {
    listen 127.0.0.1:{{index .ExtraPorts 1}};
    location / { return 200 "upstream\n"; }
  }
`

// nginxFixture is test/fixture's gateway running wireServers.
type nginxFixture struct {
	*fixture.Gateway
	plain, tlsPort, h2Port int
	workers                []int
}

// nginxOptions changes the fixture's limits.
type nginxOptions struct {
	workerConnections int    // per worker (default 1024)
	rlimitNofile      int    // worker_rlimit_nofile (default: nginx's own)
	server            string // more directives for the main server
}

func startNginx(t *testing.T) *nginxFixture {
	t.Helper()
	return startNginxWith(t, nginxOptions{})
}

func startNginxWith(t *testing.T, o nginxOptions) *nginxFixture {
	t.Helper()
	g := fixture.StartT(t, fixture.Options{Servers: fmt.Sprintf(wireServers, o.server), ExtraPorts: 2,
		WorkerConnections: o.workerConnections, WorkerRlimitNofile: o.rlimitNofile})
	if err := os.MkdirAll(filepath.Join(g.Prefix, "static"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(g.Prefix, "static", "big.bin"), bytes.Repeat([]byte("s"), 300000), 0o644); err != nil {
		t.Fatal(err)
	}
	ws, err := g.WorkerPIDs()
	if err != nil {
		t.Fatal(err)
	}
	return &nginxFixture{Gateway: g, plain: port(t, g.HTTPAddr), h2Port: port(t, g.HTTPSAddr), tlsPort: g.ExtraPorts[0], workers: ws}
}

func port(t *testing.T, addr string) int {
	t.Helper()
	_, p, err := net.SplitHostPort(addr)
	n, err2 := strconv.Atoi(p)
	if err != nil || err2 != nil {
		t.Fatalf("address %q: %v %v", addr, err, err2)
	}
	return n
}

func (f *nginxFixture) gateway(t *testing.T) discovery.Gateway {
	t.Helper()
	gw, err := f.Discovery()
	if err != nil {
		t.Fatal(err)
	}
	return gw
}

func (f *nginxFixture) accessLog(t *testing.T) []fixture.LogEntry {
	t.Helper()
	es, err := f.AccessLog()
	if err != nil {
		t.Fatal(err)
	}
	return es
}

// ms is d in milliseconds.
func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

type collector struct {
	mu  sync.Mutex
	got []*model.Request
}

func (c *collector) Observe(r *model.Request) {
	c.mu.Lock()
	c.got = append(c.got, r)
	c.mu.Unlock()
}

func (c *collector) snapshot() []*model.Request {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]*model.Request(nil), c.got...)
}

// chunkedBody has no length, so net/http sends it with Transfer-Encoding: chunked.
type chunkedBody struct{ left int }

func (b *chunkedBody) Read(p []byte) (int, error) {
	if b.left == 0 {
		return 0, io.EOF
	}
	n := min(len(p), b.left, 3000)
	for i := range p[:n] {
		p[i] = 'x'
	}
	b.left -= n
	return n, nil
}

func TestIntegrationNginx(t *testing.T) {
	havePrereqs(t, "nginx", "curl")
	ng := startNginx(t)

	tr, err := New(Options{Log: testr.NewWithOptions(t, testr.Options{Verbosity: 1}), TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	var seenMu sync.Mutex
	seenPIDs := map[uint32]int{}
	tr.onChunk = func(c Chunk) {
		seenMu.Lock()
		seenPIDs[c.Key.TGID]++
		seenMu.Unlock()
		if os.Getenv("KW_WIRE_DEBUG") != "" {
			t.Logf("chunk %+v out=%v ts=%s len=%d %q", c.Key, c.Out, c.TS.Format("15:04:05.000000"), c.Len, c.Data[:min(len(c.Data), 80)])
		}
	}
	if err := tr.Track(ng.gateway(t)); err != nil {
		t.Fatal(err)
	}
	st := tr.Status()
	t.Logf("mode %s", st.Mode)
	for _, p := range st.Probes {
		t.Logf("probe %s+%d return=%v emulated=%v returnSite=%v", p.Symbol, p.Offset, p.Return, p.Emulated, p.ReturnSite)
		// Debian 12's glibc and OpenSSL: only sendfile (mov, mov, syscall) has no cheap site.
		if !p.Emulated && p.Symbol != "sendfile" {
			t.Errorf("%s+%d would be single-stepped (~15us per call)", p.Symbol, p.Offset)
		}
	}
	col := &collector{}
	ctx, cancel := context.WithCancel(context.Background())
	runDone := make(chan error, 1)
	go func() { runDone <- tr.Run(ctx, col) }()
	defer func() { cancel(); <-runDone }()

	base := fmt.Sprintf("http://127.0.0.1:%d", ng.plain)
	client := &http.Client{Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true},
		TLSNextProto:    map[string]func(string, *tls.Conn) http.RoundTripper{}, // HTTP/1.1 only
	}}
	clientDur := map[string]time.Duration{}
	do := func(method, url, host string, body io.Reader) int {
		t.Helper()
		req, _ := http.NewRequest(method, url, body)
		if host != "" {
			req.Host = host
		}
		t0 := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if body == nil && method != "POST" { // see the latency checks below
			h := req.Host
			if h == "" {
				h = req.URL.Host
			}
			clientDur[normHost(h)+req.URL.RequestURI()] = time.Since(t0)
		}
		return resp.StatusCode
	}
	for i := 0; i < 5; i++ { // keep-alive
		do("GET", fmt.Sprintf("%s/r/ka-%d?x=%d", base, i, i), "API.Example.com:8080", nil)
	}
	// A static file goes out with sendfile: its bytes are counted, not captured, and the
	// keep-alive request after it must still be framed.
	// Longer than both data paths keep: cut, and flagged, at the same lengths.
	do("GET", base+"/r/long-"+strings.Repeat("u", model.MaxURILen)+"?q=1", strings.Repeat("Long", 20)+".Example", nil)
	do("GET", base+"/static/big.bin", "", nil)
	do("GET", base+"/r/after-sendfile", "", nil)
	do("GET", base+"/missing/thing", "", nil)
	do("GET", base+"/lua/x", "", nil)
	const nLua = 2 // and the upstream block's /from-lua
	do("HEAD", base+"/r/head", "", nil)
	do("POST", base+"/r/chunked", "", &chunkedBody{left: 20000})
	do("GET", base+"/proxy/p1", "proxied.example", nil)
	do("GET", base+"/proxy/p2", "proxied.example", nil)
	do("POST", base+"/proxy/p3", "proxied.example", strings.NewReader(strings.Repeat("p", 3000)))
	for i := 0; i < 3; i++ {
		do("GET", fmt.Sprintf("https://127.0.0.1:%d/r/tls-%d", ng.tlsPort, i), "secure.example", nil)
	}
	do("POST", fmt.Sprintf("https://127.0.0.1:%d/r/tls-post", ng.tlsPort), "secure.example", strings.NewReader(strings.Repeat("y", 5000)))

	// Pipelined: three requests in one write.
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", ng.plain))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Fprintf(c, "GET /r/pipe-1 HTTP/1.1\r\nHost: pipe\r\n\r\nHEAD /r/pipe-2 HTTP/1.1\r\nHost: pipe\r\n\r\nGET /missing/pipe-3 HTTP/1.1\r\nHost: pipe\r\nConnection: close\r\n\r\n")
	io.Copy(io.Discard, c)
	c.Close()

	// Heads nginx rejects before they are complete: a malformed header line (400) and a
	// request line longer than large_client_header_buffers (414).
	for _, raw := range []string{
		"GET /r/bad HTTP/1.1\r\nHost: bad\r\nBad Header\r\n\r\n",
		"GET /r/" + strings.Repeat("u", 9000) + " HTTP/1.1\r\nHost: long\r\n\r\n",
	} {
		c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", ng.plain))
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, raw)
		io.Copy(io.Discard, c)
		c.Close()
	}

	// curl: a libc-based client, whose own recv/send must not be captured (PID filter);
	// a large body makes curl send Expect: 100-continue.
	big := filepath.Join(ng.Prefix, "big.txt")
	os.WriteFile(big, bytes.Repeat([]byte("z"), 200000), 0o644)
	for _, args := range [][]string{
		{"-s", "-o", "/dev/null", base + "/r/curl"},
		{"-s", "-o", "/dev/null", "-H", "Expect: 100-continue", "--data-binary", "@" + big, base + "/r/continue"},
	} {
		if out, err := exec.Command("curl", args...).CombinedOutput(); err != nil {
			t.Fatalf("curl %v: %v %s", args, err, out)
		}
	}

	// HTTP/2 prior knowledge on the plain port: must be counted as unparsed h2, not parsed.
	c, err = net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", ng.plain))
	if err != nil {
		t.Fatal(err)
	}
	c.Write(append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 4, 0, 0, 0, 0, 0))
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	io.Copy(io.Discard, c)
	c.Close()
	client.CloseIdleConnections()

	// HTTP/2 over TLS (ALPN h2): not parsed, counted as an unparsed h2 connection.
	h2client := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, ForceAttemptHTTP2: true}}
	for i := 0; i < 2; i++ {
		resp, err := h2client.Get(fmt.Sprintf("https://127.0.0.1:%d/r/h2-%d", ng.h2Port, i))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.ProtoMajor != 2 {
			t.Fatalf("h2 listener answered %s", resp.Proto)
		}
	}
	h2client.CloseIdleConnections()

	// The access log is the reference, less the h2 attempt (nginx without http2 on the
	// listener answers the preface with a 400 that has no request line).
	var want []fixture.LogEntry
	deadline := time.Now().Add(10 * time.Second)
	for {
		want = want[:0]
		for _, l := range ng.accessLog(t) {
			if l.Method != "PRI" && !(l.Method == "" && l.Status == 400) && l.Protocol != "HTTP/2.0" {
				want = append(want, l)
			}
		}
		if len(col.snapshot()) >= len(want) && len(want) >= 28+nLua || time.Now().After(deadline) {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(200 * time.Millisecond) // anything extra would show up now
	got := col.snapshot()
	key := func(m, h, u string, s int) string { return fmt.Sprintf("%s %s %s %d", m, h, u, s) }
	wantBy := map[string][]fixture.LogEntry{}
	cut := func(s string, n int) string { s, _ = model.Cut(s, n); return s }
	for _, l := range want {
		k := key(l.Method, cut(l.Host, model.MaxHostLen), cut(l.RequestURI, model.MaxURILen), l.Status)
		wantBy[k] = append(wantBy[k], l)
	}
	workers := map[int]bool{}
	for _, w := range ng.workers {
		workers[w] = true
	}
	var problems []string
	latencyOff := 0
	var diffs []float64
	for _, r := range got {
		k := key(r.Method, r.Host, r.URI, r.Status)
		ls := wantBy[k]
		if len(ls) == 0 {
			problems = append(problems, "unexpected: "+k)
			continue
		}
		l := ls[0]
		wantBy[k] = ls[1:]
		if r.HostTruncated != (len(l.Host) > model.MaxHostLen) || r.URITruncated != (len(l.RequestURI) > model.MaxURILen) {
			problems = append(problems, fmt.Sprintf("%s: truncation flags host %v uri %v, nginx's host %d and uri %d bytes",
				k, r.HostTruncated, r.URITruncated, len(l.Host), len(l.RequestURI)))
		}
		// nginx's $request_time has millisecond precision from a clock cached once per event
		// loop turn, so it misses time spent inside one handler (a worker preempted on this
		// shared 2-core VM): ours may be larger. Bounds that must hold: not below nginx's (less
		// its rounding), not above what the client itself measured around the exchange.
		ours := float64(r.Latency.Microseconds()) / 1000
		if d := math.Abs(ours - ms(l.RequestTime)); d > 5 {
			t.Logf("%s: latency %v, nginx %v (client saw %v)", k, r.Latency, l.RequestTime, clientDur[r.Host+r.URI])
			latencyOff++
		}
		if ours < ms(l.RequestTime)-2 && r.Method != "POST" { // a discarded body may be logged a loop turn later
			problems = append(problems, fmt.Sprintf("%s: latency %v below nginx's %v", k, r.Latency, l.RequestTime))
		}
		// Only for keep-alive requests without a body: nginx answers a POST before it has read
		// (and discarded) the body and logs it after, and logs a Connection: close exchange
		// at the close, both of which may come after the client has its response.
		if cd, ok := clientDur[r.Host+r.URI]; ok && r.Latency > cd+time.Millisecond {
			problems = append(problems, fmt.Sprintf("%s: latency %v above the client's %v", k, r.Latency, cd))
		}
		diffs = append(diffs, math.Abs(ours-ms(l.RequestTime)))
		if len(l.UpstreamTimes) == 1 && l.UpstreamTimes[0] >= 0 { // one upstream, its time known
			switch {
			case !r.HasUpstream:
				problems = append(problems, fmt.Sprintf("%s: no upstream time, nginx %v", k, l.UpstreamTime))
			case math.Abs(ms(r.Upstream)-ms(l.UpstreamTime)) > 5:
				t.Logf("%s: upstream %v, nginx %v: more than 5ms off", k, r.Upstream, l.UpstreamTime)
				latencyOff++
			default:
				t.Logf("%s: upstream %v, nginx %v", k, r.Upstream, l.UpstreamTime)
			}
		} else if r.HasUpstream && !strings.HasPrefix(r.URI, "/lua/") {
			// (a cosocket call-out is indistinguishable from an upstream on the wire)
			problems = append(problems, fmt.Sprintf("%s: upstream %v, nginx had none", k, r.Upstream))
		}
		if r.BytesSent != l.BytesSent {
			problems = append(problems, fmt.Sprintf("%s: bytes %d, nginx %d", k, r.BytesSent, l.BytesSent))
		}
		if r.PID != l.PID || !workers[r.PID] {
			problems = append(problems, fmt.Sprintf("%s: pid %d, nginx %d", k, r.PID, l.PID))
		}
		if !r.ListenerKnown || r.UnixListener || int(r.LocalPort) != l.ServerPort {
			problems = append(problems, fmt.Sprintf("%s: listener known %v unix %v port %d, nginx's port %d", k, r.ListenerKnown, r.UnixListener, r.LocalPort, l.ServerPort))
		}
	}
	for k, ls := range wantBy {
		for range ls {
			problems = append(problems, "missing: "+k)
		}
	}
	sort.Float64s(diffs)
	if len(diffs) > 0 && diffs[len(diffs)/2] > 2 {
		problems = append(problems, fmt.Sprintf("median |latency - nginx's| %.1fms > 2ms", diffs[len(diffs)/2]))
	}
	t.Logf("%d of %d latencies more than 5ms off nginx's $request_time", latencyOff, len(got))
	if len(problems) > 0 {
		b, _ := os.ReadFile(ng.AccessLogPath())
		t.Logf("access log:\n%s", b)
	}
	for _, p := range problems {
		t.Error(p)
	}
	st = tr.Status()
	t.Logf("%d requests in the access log, %d seen; status %+v", len(want), len(got), st.ParserStats)
	t.Logf("events %d dropped %d", st.Events, st.Dropped)
	// The listeners are told per connection: /proc is read per worker and listening socket
	// (4 ports here, 2 workers), never per connection or request.
	t.Logf("listener lookups in /proc: %d for %d requests", st.ListenerLookups, len(got))
	if st.ListenerLookups > 8 {
		t.Errorf("%d listener lookups in /proc for %d requests", st.ListenerLookups, len(got))
	}
	// One parse error: the deliberately malformed head; two heads rejected by nginx.
	if st.ParseErrors != 1 || st.Rejected != 2 || st.Unmatched != 0 || st.Unanswered != 0 {
		t.Errorf("want exactly the malformed head as parse error and 2 rejected heads: %+v", st.ParserStats)
	}
	if st.H2Conns < 2 {
		t.Errorf("the h2 connection was not detected: %+v", st.ParserStats)
	}
	if st.Upstream < 1 {
		t.Errorf("the proxy's upstream connection was not classified: %+v", st.ParserStats)
	}
	seenMu.Lock()
	for pid, n := range seenPIDs {
		if !workers[int(pid)] {
			t.Errorf("captured %d chunks of pid %d, not an nginx worker (PID filter leak)", n, pid)
		}
	}
	seenMu.Unlock()

	// Untrack detaches: no more events.
	tr.Untrack(ng.gateway(t).ID())
	before := tr.Status().Events
	do("GET", base+"/r/after-untrack", "", nil)
	time.Sleep(100 * time.Millisecond)
	if after := tr.Status(); after.Events != before || len(after.Probes) != 0 {
		t.Errorf("events after Untrack: %d -> %d, probes %d", before, after.Events, len(after.Probes))
	}
}

// TestWrkOverhead measures what the wire probes cost nginx (`return 200`), alternating runs
// without and with the tracer. Opt-in (KW_WIRE_BENCH=1): it takes ~35 s.
func TestWrkOverhead(t *testing.T) {
	if os.Getenv("KW_WIRE_BENCH") != "1" {
		t.Skip("set KW_WIRE_BENCH=1")
	}
	havePrereqs(t, "nginx", "wrk")
	ng := startNginx(t)
	tr, err := New(Options{Log: testr.New(t), TLS: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	var seen int64
	var mu sync.Mutex
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- tr.Run(ctx, model.SinkFunc(func(*model.Request) { mu.Lock(); seen++; mu.Unlock() }))
	}()
	defer func() { cancel(); <-done }()
	wrk := func(url string) float64 {
		out, err := exec.Command("wrk", "-t1", "-c20", "-d5s", url).CombinedOutput()
		if err != nil {
			t.Fatalf("wrk: %v %s", err, out)
		}
		sc := bufio.NewScanner(bytes.NewReader(out))
		for sc.Scan() {
			if f := strings.Fields(sc.Text()); len(f) == 2 && f[0] == "Requests/sec:" {
				v, _ := strconv.ParseFloat(f[1], 64)
				return v
			}
		}
		t.Fatalf("no Requests/sec in %s", out)
		return 0
	}
	// Per-program run time, scoped to this test (no sysctl change).
	if st, err := ebpf.EnableStats(uint32(unix.BPF_STATS_RUN_TIME)); err == nil {
		defer st.Close()
	}
	progStats := func() string {
		var out []string
		for name, p := range map[string]*ebpf.Program{"enter": tr.objs.WireEnter, "exit": tr.objs.WireExit, "retsite": tr.objs.WireRetSite} {
			if s, err := p.Stats(); err == nil && s.RunCount > 0 {
				out = append(out, fmt.Sprintf("%s %d runs %.0fns/run", name, s.RunCount, float64(s.Runtime.Nanoseconds())/float64(s.RunCount)))
			}
		}
		sort.Strings(out)
		return strings.Join(out, ", ")
	}
	for _, tc := range []struct{ name, url string }{
		{"plain", fmt.Sprintf("http://127.0.0.1:%d/", ng.plain)},
		{"tls", fmt.Sprintf("https://127.0.0.1:%d/", ng.tlsPort)},
	} {
		var ratios []float64
		for round := 0; round < 3; round++ {
			without := wrk(tc.url)
			if err := tr.Track(ng.gateway(t)); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			seen = 0
			mu.Unlock()
			before := tr.Status()
			with := wrk(tc.url)
			time.Sleep(300 * time.Millisecond)
			tr.Untrack(ng.gateway(t).ID())
			mu.Lock()
			n := seen
			mu.Unlock()
			st := tr.Status()
			ratios = append(ratios, with/without)
			t.Logf("%s round %d: without %.0f req/s, with %.0f req/s, ratio %.2f; requests seen %d (wrk ~%.0f), dropped %d, parse errors %d",
				tc.name, round+1, without, with, with/without, n, with*5, st.Dropped-before.Dropped, st.ParseErrors-before.ParseErrors)
		}
		t.Logf("%s: BPF programs (cumulative, all processes that hit the probes): %s", tc.name, progStats())
		sort.Float64s(ratios)
		t.Logf("%s: median throughput ratio with/without: %.2f (load average %s)", tc.name, ratios[1], loadavg())
	}
}

func loadavg() string {
	b, _ := os.ReadFile("/proc/loadavg")
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

// getOK sends n keep-alive GETs with distinct URIs and returns them.
func getOK(t *testing.T, base, prefix string, n int) []string {
	t.Helper()
	var uris []string
	client := &http.Client{}
	defer client.CloseIdleConnections()
	for i := 0; i < n; i++ {
		u := fmt.Sprintf("/%s/%d", prefix, i)
		resp, err := client.Get(base + u)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		uris = append(uris, u)
	}
	return uris
}

func waitFor(t *testing.T, col *collector, uris []string) []*model.Request {
	t.Helper()
	want := map[string]bool{}
	for _, u := range uris {
		want[u] = true
	}
	deadline := time.Now().Add(5 * time.Second)
	for {
		var out []*model.Request
		for _, r := range col.snapshot() {
			if want[r.URI] {
				out = append(out, r)
			}
		}
		if len(out) >= len(uris) || time.Now().After(deadline) {
			if len(out) != len(uris) {
				t.Fatalf("saw %d of %d requests %v", len(out), len(uris), uris)
			}
			return out
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// newTracer returns a tracer (default options), closed when the test ends.
func newTracer(t *testing.T) *Tracer {
	t.Helper()
	tr, err := New(Options{Log: testr.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	return tr
}

// runTracer runs tr until the test ends and returns what it reports.
func runTracer(t *testing.T, tr *Tracer) *collector {
	col := &collector{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx, col) }()
	t.Cleanup(func() { cancel(); <-done })
	return col
}

// TestIntegrationPerfEventFallback attaches through perf-event uprobes, the path taken where
// uprobe_multi is missing (kernels < 6.6).
func TestIntegrationPerfEventFallback(t *testing.T) {
	havePrereqs(t, "nginx")
	ng := startNginx(t)
	tr, err := New(Options{Log: testr.New(t), ForcePerfEvent: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	if err := tr.Track(ng.gateway(t)); err != nil {
		t.Fatal(err)
	}
	if m := tr.Status().Mode; m != kernel.ModePerf {
		t.Fatalf("mode %q", m)
	}
	col := runTracer(t, tr)
	for _, r := range waitFor(t, col, getOK(t, fmt.Sprintf("http://127.0.0.1:%d", ng.plain), "perf", 5)) {
		if r.Status != 200 || r.Method != "GET" {
			t.Errorf("%+v", r)
		}
	}
}

// TestIntegrationReload: nginx's reload replaces the workers; SetPIDs moves the filter.
func TestIntegrationReload(t *testing.T) {
	havePrereqs(t, "nginx")
	ng := startNginx(t)
	tr := newTracer(t)
	gw := ng.gateway(t)
	if err := tr.Track(gw); err != nil {
		t.Fatal(err)
	}
	col := runTracer(t, tr)
	base := fmt.Sprintf("http://127.0.0.1:%d", ng.plain)
	waitFor(t, col, getOK(t, base, "before", 3))

	if err := ng.Reload(); err != nil {
		t.Fatal(err)
	}
	fresh, err := ng.WorkerPIDs()
	if err != nil || len(fresh) != 2 || slices.Contains(fresh, ng.workers[0]) || slices.Contains(fresh, ng.workers[1]) {
		t.Fatalf("workers %v after the reload, %v before (%v)", fresh, ng.workers, err)
	}
	// Before SetPIDs the new workers are not captured...
	getOK(t, base, "unfiltered", 2)
	time.Sleep(200 * time.Millisecond)
	for _, r := range col.snapshot() {
		if strings.HasPrefix(r.URI, "/unfiltered/") {
			t.Fatalf("captured a worker not in the filter: %+v", r)
		}
	}
	// ...after it they are.
	tr.SetPIDs(gw.ID(), fresh)
	for _, r := range waitFor(t, col, getOK(t, base, "after", 3)) {
		if r.PID != fresh[0] && r.PID != fresh[1] {
			t.Errorf("pid %d not a new worker %v", r.PID, fresh)
		}
	}
	if st := tr.Status(); st.PIDs != 2 || st.Gateways != 1 {
		t.Errorf("%+v", st)
	}
}
