package wire

import (
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
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// TestIntegrationNginx: the wire path against real nginx over HTTP/1.x, plain and TLS
// (keep-alive, sendfile, long URIs, Lua, pipelining, ...), compared with the fixture's
// access log.
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
