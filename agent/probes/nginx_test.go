package probes

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/go-logr/logr/testr"

	"github.com/kong-watcher/kong-watcher/agent/aggregate"
	"github.com/kong-watcher/kong-watcher/agent/kernel"
	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/agent/pathnorm"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/bpf"
)

type collector struct {
	mu   sync.Mutex
	reqs []model.Request
}

func (c *collector) Observe(r *model.Request) {
	c.mu.Lock()
	c.reqs = append(c.reqs, *r)
	c.mu.Unlock()
}

func (c *collector) snapshot() []model.Request {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]model.Request(nil), c.reqs...)
}

func (c *collector) waitFor(t testing.TB, n int, d time.Duration) []model.Request {
	deadline := time.Now().Add(d)
	for {
		got := c.snapshot()
		if len(got) >= n || time.Now().After(deadline) {
			return got
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startProbes loads, tracks the nginx and runs the reader until the test ends.
// startProbes starts probes with the client address on, so every field of the access log can
// be compared (startProbesAs: exactly opts).
func startProbes(t *testing.T, n *testNginx, opts Options) (*Probes, *collector) {
	t.Helper()
	opts.ClientAddr = true
	return startProbesAs(t, n, opts)
}

func startProbesAs(t *testing.T, n *testNginx, opts Options) (*Probes, *collector) {
	t.Helper()
	opts.Log = testr.New(t)
	p, err := New(opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if err := p.Track(n.Gateway(t)); err != nil {
		p.Close()
		t.Fatalf("Track: %v", err)
	}
	c := &collector{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- p.Run(ctx, c) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Run: %v", err)
		}
		p.Close()
	})
	return p, c
}

// sendRaw writes s on a new connection to nginx's port and reads until nginx closes it.
func sendRaw(t *testing.T, port int, s string) {
	t.Helper()
	c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", port))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte(s))
	io.Copy(io.Discard, bufio.NewReader(c))
}

// traffic sends a mix of requests; every request with a URI carries a unique id so agent
// records and log lines can be paired. It returns how many requests it made.
func traffic(t *testing.T, n *testNginx, rounds int) int {
	t.Helper()
	base := fmt.Sprintf("http://127.0.0.1:%d", n.Port)
	h1 := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 4, DisableCompression: true}}
	h2 := &http.Client{Transport: &http.Transport{ForceAttemptHTTP2: true, DisableCompression: true,
		TLSClientConfig: n.g.TLSConfig()}}
	defer h1.CloseIdleConnections()
	defer h2.CloseIdleConnections()
	count := 0
	id := 0
	do := func(c *http.Client, method, url, host string, body io.Reader) {
		t.Helper()
		id++
		// The id goes first so it survives the agent's 160-byte URI truncation.
		path, query, _ := strings.Cut(url, "?")
		u := fmt.Sprintf("%s?id=%d", path, id)
		if query != "" {
			u += "&" + query
		}
		req, err := http.NewRequest(method, u, body)
		if err != nil {
			t.Fatal(err)
		}
		if host != "" {
			req.Host = host
		}
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, url, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if c == h2 && resp.ProtoMajor != 2 {
			t.Fatalf("expected HTTP/2, got %s", resp.Proto)
		}
		count++
	}
	rawTo := func(port int, s string) {
		sendRaw(t, port, s)
		count++
	}
	raw := func(s string) { rawTo(n.Port, s) }
	tlsBase := fmt.Sprintf("https://127.0.0.1:%d", n.TLSPort)
	for i := 0; i < rounds; i++ {
		do(h1, "GET", base+"/ok", "", nil)
		do(h1, "GET", base+"/ok?q=a%20b", "API.Example.COM:8000", nil)
		do(h1, "HEAD", base+"/ok", "head.example", nil)
		do(h1, "POST", base+"/ok", "post.example", strings.NewReader(strings.Repeat("x", 1000)))
		do(h1, "GET", base+"/static/a.txt", "", nil)
		do(h1, "GET", base+"/static/missing", "", nil) // 404 through error_page
		do(h1, "GET", base+"/nowhere", "", nil)        // plain 404
		do(h1, "GET", base+"/slow", "", nil)           // proxied, ~20 ms upstream
		do(h1, "GET", base+"/dead", "", nil)           // 502, upstream refused
		do(h1, "GET", base+"/lua", "", nil)
		do(h1, "DELETE", base+"/phases", "", nil)
		do(h1, "GET", base+"/balanced", "", nil)                           // balancer_by_lua, ~20 ms upstream
		do(h1, "GET", base+"/denied", "", nil)                             // 403 from the access handler
		do(h1, "GET", base+"/withsub", "", nil)                            // a Lua subrequest
		do(h1, "GET", base+"/ok?pad="+strings.Repeat("long", 60), "", nil) // URI longer than 160
		do(h2, "GET", tlsBase+"/ok", "", nil)
		do(h2, "POST", tlsBase+"/ok", "", strings.NewReader("hello"))
		do(h2, "GET", tlsBase+"/slow", "", nil)
		do(h2, "GET", tlsBase+"/static/a.txt", "h2.example", nil)
		raw(fmt.Sprintf("GET /ok?id=raw10-%d HTTP/1.0\r\n\r\n", i))
		raw(fmt.Sprintf("GET /ok?id=raw10h-%d HTTP/1.0\r\nHost: ten.example\r\n\r\n", i))
		// No Host: $host is the server_name of the server that answered ("alt.kw.test").
		rawTo(n.AltPort, fmt.Sprintf("GET /alt?id=rawalt-%d HTTP/1.0\r\n\r\n", i))
		if i%5 == 0 {
			// A unix-domain listener (as Kong's worker events): no port.
			u, err := net.Dial("unix", filepath.Join(n.g.Prefix, "kw.sock"))
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(u, "GET /unix?id=unix-%d HTTP/1.0\r\nHost: unix.example\r\n\r\n", i)
			io.Copy(io.Discard, u)
			u.Close()
			count++
			raw("THIS IS NOT HTTP\r\n\r\n")      // 400, $host "kw.test"
			rawTo(n.AltPort, "NOT/HTTP\r\n\r\n") // 400, $host "alt.kw.test"
			// 499: the client gives up while nginx waits for the upstream; nginx notices the
			// closed connection and finalizes with 499 at once.
			id++
			c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", n.Port))
			if err != nil {
				t.Fatal(err)
			}
			fmt.Fprintf(c, "GET /hang?id=%d HTTP/1.1\r\nHost: abort.example\r\n\r\n", id)
			time.Sleep(100 * time.Millisecond)
			c.Close()
			count++
		}
	}
	return count
}

// key pairs an agent record with a log line: the unique id in the URI, or for requests
// without one (400s) the method and status.
func reqKey(uri, method string, status int) string {
	if i := strings.Index(uri, "id="); i >= 0 {
		k, _, _ := strings.Cut(uri[i:], "&")
		return k
	}
	if method == "" {
		method = "-"
	}
	return fmt.Sprintf("noid %s %d", method, status)
}

func TestAgainstAccessLog(t *testing.T) {
	requireIntegration(t)
	n := startNginx(t)
	checkInnerPIDNS(t, n)
	p, c := startProbes(t, n, Options{})
	sent := traffic(t, n, 25)
	got := checkAgainstLog(t, n, p, c, sent)
	for _, r := range got {
		if r.HasLua {
			t.Fatalf("Lua timing without LuaPhases: %+v", r)
		}
	}
}

// TestWithoutClientAddr: the default (no per-request log) reads no client address, and every
// other field still equals the access log.
func TestWithoutClientAddr(t *testing.T) {
	requireIntegration(t)
	n := startNginx(t)
	p, c := startProbesAs(t, n, Options{})
	checkAgainstLog(t, n, p, c, traffic(t, n, 5))
}

// TestNoCachedTimeFallback: without ngx_cached_time the latency comes from the kernel's
// clock; it must stay within a few ms of nginx's own $request_time.
func TestNoCachedTimeFallback(t *testing.T) {
	requireIntegration(t)
	n := startNginx(t)
	p, c := startProbes(t, n, Options{NoCachedTime: true})
	// nginx's cached clock is itself stale by the length of the current event loop
	// iteration, which on this shared 2-core VM reaches tens of ms: compare loosely here,
	// and tightly (below) for the typical request. A wrong clock (boot time taken for wall
	// time, a unit off) would be off by far more than either bound.
	latencyTolerance = 100 * time.Millisecond
	defer func() { latencyTolerance = 0 }()
	got := checkAgainstLog(t, n, p, c, traffic(t, n, 5))
	lines := readAccessLog(t, n)
	byURI := map[string]int64{}
	for _, l := range lines {
		byURI[l.RequestURI] = l.RequestTime.Milliseconds()
	}
	within, total := 0, 0
	for _, r := range got {
		if ms, ok := byURI[r.URI]; ok && r.URI != "" && len(r.URI) < 160 {
			total++
			if abs(r.Latency.Milliseconds()-ms) <= 2 {
				within++
			}
		}
	}
	t.Logf("kernel-clock latency within 2 ms of $request_time for %d of %d requests", within, total)
	// The typical request: at least half within 2 ms (a loaded machine stretches nginx's
	// event loop iterations, and so the staleness of its clock, for many requests at once).
	if total == 0 || within*2 < total {
		t.Fatalf("kernel-clock latency within 2 ms for only %d of %d", within, total)
	}
}

// TestCutHostAndURI: a Host and a URI longer than the record's buffers (a 100-byte Host, a
// 300-byte URI) arrive cut and flagged, whether decoded from calibration events or on the
// fast path, and make marked rows that never merge with a real, shorter host or path.
func TestCutHostAndURI(t *testing.T) {
	requireIntegration(t)
	n := startNginx(t)
	p, c := startProbes(t, n, Options{})
	longHost := "a" + strings.Repeat("sub.", 22) + "cut.kw.test"
	longPath := "/cut/documents/attachments/" + strings.Repeat("attachment-", 24) + "last-part"
	longQuery := "/ok?pad=" + strings.Repeat("q", 292) // 300 bytes, cut in the query
	if len(longHost) != 100 || len(longPath) != 300 || len(longQuery) != 300 {
		t.Fatal("test values have the wrong lengths")
	}
	base := fmt.Sprintf("http://127.0.0.1:%d", n.Port)
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	defer client.CloseIdleConnections()
	sent := 0
	get := func(uri, host string) {
		t.Helper()
		req, err := http.NewRequest("GET", base+uri, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET %s (Host %s): %v", uri, host, err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		sent++
	}
	round := func() {
		get(longPath, "")                       // cut inside the path
		get("/cut/documents/attachments", "")   // the real, shorter path
		get(longQuery, "")                      // cut inside the query: the route is whole
		get("/ok", longHost)                    // cut host
		get("/ok", longHost[:model.MaxHostLen]) // the real host that is the cut one's prefix
	}
	// The first requests are calibration events (decoded with the learnt layout later), the
	// ones after the layout is learnt take the fast path.
	round()
	for deadline := time.Now().Add(10 * time.Second); p.Status().Mode != "ready"; {
		if time.Now().After(deadline) {
			t.Fatalf("no layout learnt: %+v", p.Status())
		}
		get("/warmup", "")
		time.Sleep(20 * time.Millisecond)
	}
	round()
	round()

	got := pairWithLog(t, n, c, sent)
	cutURI, cutHost := 0, 0
	for _, r := range got {
		if r.URITruncated {
			cutURI++
		}
		if r.HostTruncated {
			cutHost++
		}
	}
	if cutURI != 6 || cutHost != 3 {
		t.Errorf("%d records with a cut URI (want 6), %d with a cut host (want 3)", cutURI, cutHost)
	}

	agg := aggregate.New(aggregate.Options{})
	for i := range got {
		agg.Observe(&got[i])
	}
	total := agg.Snapshot().Total
	rows := func(rs []v1alpha1.Row) map[string]uint64 {
		m := map[string]uint64{}
		for _, r := range rs {
			m[r.Name] = r.Requests
		}
		return m
	}
	hosts, paths := rows(total.Hosts), rows(total.Paths)
	t.Logf("host rows %v\npath rows %v", hosts, paths)
	for name, want := range map[string]uint64{
		longHost[:model.MaxHostLen] + pathnorm.Truncated: 3, // marked
		longHost[:model.MaxHostLen]:                      3, // the real host, its own row
	} {
		if hosts[name] != want {
			t.Errorf("host row %q has %d requests, want %d", name, hosts[name], want)
		}
	}
	for name, want := range map[string]uint64{
		"GET /cut/documents/attachments/" + pathnorm.Truncated: 3, // complete segments, then the mark
		"GET /cut/documents/attachments":                       3,
		"GET /ok":                                              9, // the query cut changes nothing
	} {
		if paths[name] != want {
			t.Errorf("path row %q has %d requests, want %d", name, paths[name], want)
		}
	}
}

func TestMain(m *testing.M) {
	os.Exit(m.Run())
}

// TestPerfEventFallback: the attach path for kernels without uprobe_multi (perf-event
// uprobes, which need CAP_SYS_ADMIN), with Lua timing so cookies are exercised too.
func TestPerfEventFallback(t *testing.T) {
	requireIntegration(t)
	n := startNginx(t)
	p, c := startProbes(t, n, Options{LuaPhases: true, ForcePerfEvent: true})
	if st := p.Status(); st.AttachMethod != kernel.ModePerf {
		t.Fatalf("attach method %q", st.AttachMethod)
	}
	got := checkAgainstLog(t, n, p, c, traffic(t, n, 5))
	lua := 0
	for _, r := range got {
		if strings.HasPrefix(r.URI, "/phases") && r.HasLua && r.LuaPhases[model.LuaContent] > 0 {
			lua++
		}
	}
	if lua == 0 {
		t.Fatal("no Lua timing through perf-event uprobes")
	}
}

// TestEventsBuiltInTheRing: when a CPU's scratch event is in use (a task preempted inside the
// program), the program builds the event in the ring instead; that path is exact too. The
// scratch is marked in use on every CPU from here, and stays so: the fast path never ran.
func TestEventsBuiltInTheRing(t *testing.T) {
	requireIntegration(t)
	n := startNginx(t)
	p, c := startProbes(t, n, Options{})
	m := p.objs.NginxreqScratch
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	busy := make([]bpf.NginxReqNginxreqScratch, ncpu)
	for i := range busy {
		busy[i].Busy = 1
	}
	if err := m.Update(uint32(0), busy, ebpf.UpdateAny); err != nil {
		t.Fatal(err)
	}
	checkAgainstLog(t, n, p, c, traffic(t, n, 5))
	var after []bpf.NginxReqNginxreqScratch
	if err := m.Lookup(uint32(0), &after); err != nil {
		t.Fatal(err)
	}
	for cpu, v := range after {
		if v.Busy != 1 {
			t.Fatalf("CPU %d's scratch was used", cpu)
		}
	}
}

// TestHostReadWithTheURI: on the fast path an HTTP/1 request's Host comes in the same read as
// its URI (both in nginx's header buffer), and a Host nginx rewrote (lowercased into its
// pool) is read apart and placed right after the URI's bytes; both decode as the access log
// has them.
func TestHostReadWithTheURI(t *testing.T) {
	requireIntegration(t)
	n := startNginx(t)
	p, c := startProbes(t, n, Options{})
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}}
	defer client.CloseIdleConnections()
	sent := 0
	get := func(host string) {
		t.Helper()
		req, err := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/fast?q=1", n.Port), nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		sent++
	}
	for deadline := time.Now().Add(10 * time.Second); p.Status().Mode != "ready"; {
		if time.Now().After(deadline) {
			t.Fatalf("no layout learnt: %+v", p.Status())
		}
		get("warmup.kw.test")
		time.Sleep(20 * time.Millisecond)
	}
	// The last event each CPU built is in its scratch: how many are host's, how many of those
	// had the Host read with the URI, and how many had it read apart and placed right after
	// the URI's bytes (so that, without the client address, the record ends there).
	lastBuilt := func(host string) (n, folded, placed int) {
		t.Helper()
		var per []bpf.NginxReqNginxreqScratch
		if err := p.objs.NginxreqScratch.Lookup(uint32(0), &per); err != nil {
			t.Fatal(err)
		}
		for _, s := range per {
			ev := &s.Ev
			if ev.Kind != evRequest || str(hostBuf(ev), ev.HostLen) != host {
				continue
			}
			n++
			switch {
			case ev.Flags&fHostFolded != 0:
				folded++
			case ev.Flags&fHostInURI != 0 && ev.HostOff == ev.UriLen:
				placed++
			}
		}
		return n, folded, placed
	}
	for range 5 {
		get("fold.kw.test")
	}
	if n, folded, _ := lastBuilt("fold.kw.test"); n == 0 || folded != n {
		t.Errorf("%d of the last %d requests with Host fold.kw.test had it read with the URI", folded, n)
	}
	for range 5 {
		get("Apart.KW.test") // nginx lowercases it into a copy of its own
	}
	if n, folded, placed := lastBuilt("apart.kw.test"); n == 0 || folded != 0 || placed != n {
		t.Errorf("of the last %d requests with a Host nginx rewrote, %d had it read with the URI and %d right after it", n, folded, placed)
	}
	// A header line between the request line and Host: read apart, so that no other header's
	// bytes reach the ring.
	for range 5 {
		sendRaw(t, n.Port, "GET /fast?q=1 HTTP/1.1\r\nX-Api-Key: not-for-the-ring\r\nHost: gap.kw.test\r\nConnection: close\r\n\r\n")
		sent++
	}
	if n, folded, placed := lastBuilt("gap.kw.test"); n == 0 || folded != 0 || placed != n {
		t.Errorf("of the last %d requests with a header before Host, %d had it read with the URI and %d right after it", n, folded, placed)
	}

	pairWithLog(t, n, c, sent)
}
