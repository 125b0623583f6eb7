package wire

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/go-logr/logr/testr"
	"golang.org/x/sys/unix"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
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

// nginxFixture is a real nginx in a temporary prefix: a plain server (200, 404, a
// proxy_pass to a second server block), the upstream block, and a TLS listener without
// http2, two workers, a JSON access log.
type nginxFixture struct {
	dir                string
	plain, up, tlsPort int
	h2Port             int
	lua                bool
	master             int
	workers            []int
	cmd                *exec.Cmd
}

func startNginx(t *testing.T) *nginxFixture {
	t.Helper()
	return startNginxWith(t, nginxOptions{})
}

// nginxOptions changes the fixture's limits.
type nginxOptions struct {
	workerConnections int    // per worker (default 1024)
	rlimitNofile      int    // worker_rlimit_nofile (default twice workerConnections)
	http              string // more http-level directives
}

func startNginxWith(t *testing.T, o nginxOptions) *nginxFixture {
	t.Helper()
	if o.workerConnections == 0 {
		o.workerConnections = 1024
	}
	if o.rlimitNofile == 0 {
		o.rlimitNofile = 2 * o.workerConnections
	}
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o755); err != nil { // workers run as nobody
		t.Fatal(err)
	}
	f := &nginxFixture{dir: dir}
	// nginx inherits its listening sockets, bound here, rather than binding ports picked
	// earlier: a port picked by binding and closing a probe socket is free only at that
	// moment, so two picks can return the same port and another process can take one before
	// nginx binds it.
	var listeners []*os.File
	defer func() {
		for _, l := range listeners {
			l.Close() // nginx has its own copies once started
		}
	}()
	for _, port := range []*int{&f.plain, &f.up, &f.tlsPort, &f.h2Port} {
		l, p, err := fixture.LoopbackSocket(0, true)
		if err != nil {
			t.Fatal(err)
		}
		listeners = append(listeners, l)
		*port = p
	}
	writeCert(t, dir)
	// Kong is OpenResty: load Debian's lua module when present, for a content_by_lua
	// location whose cosocket calls the upstream block (like a plugin calling out).
	luaLoad, luaLoc := "", ""
	if _, err := os.Stat("/usr/lib/nginx/modules/ngx_http_lua_module.so"); err == nil {
		luaLoad = "load_module /usr/lib/nginx/modules/ndk_http_module.so;\nload_module /usr/lib/nginx/modules/ngx_http_lua_module.so;"
		luaLoc = fmt.Sprintf(`location /lua/ { content_by_lua_block {
      local sock = ngx.socket.tcp()
      assert(sock:connect("127.0.0.1", %d))
      assert(sock:send("GET /from-lua HTTP/1.0\r\nHost: lua-up\r\n\r\n"))
      local body = assert(sock:receive("*a"))
      sock:close()
      ngx.status = 201
      ngx.say("lua ok ", #body)
    } }`, f.up)
	}
	conf := fmt.Sprintf(`
%[6]s
worker_processes 2;
daemon off;
master_process on;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
worker_rlimit_nofile %[9]d;
events { worker_connections %[8]d; }
http {
  %[10]s
  log_format kwjson escape=json '{"status":$status,"host":"$host","method":"$request_method","uri":"$request_uri","rt":$request_time,"bytes":$bytes_sent,"pid":$pid,"proto":"$server_protocol","urt":"$upstream_response_time","port":"$server_port"}';
  access_log %[1]s/access.log kwjson;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  keepalive_requests 10000;
  server {
    listen 127.0.0.1:%[2]d;
    listen 127.0.0.1:%[4]d ssl;
    listen 127.0.0.1:%[5]d ssl http2;
    ssl_certificate %[1]s/cert.pem;
    ssl_certificate_key %[1]s/key.pem;
    location / { return 200 "ok\n"; }
    location /missing/ { return 404; }
    location /proxy/ { proxy_pass http://127.0.0.1:%[3]d; }
    location /static/ { alias %[1]s/static/; sendfile on; }
    %[7]s
  }
  server {
    listen 127.0.0.1:%[3]d;
    location / { return 200 "upstream\n"; }
  }
}
`, dir, f.plain, f.up, f.tlsPort, f.h2Port, luaLoad, luaLoc, o.workerConnections, o.rlimitNofile, o.http)
	os.Mkdir(filepath.Join(dir, "static"), 0o755)
	if err := os.WriteFile(filepath.Join(dir, "static", "big.bin"), bytes.Repeat([]byte("s"), 300000), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644); err != nil {
		t.Fatal(err)
	}
	f.lua = luaLoad != ""
	f.cmd = exec.Command("nginx", "-p", dir, "-c", filepath.Join(dir, "nginx.conf"))
	f.cmd.Stderr = os.Stderr
	fixture.InheritListeners(f.cmd, listeners)
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	f.master = f.cmd.Process.Pid
	t.Cleanup(func() {
		_ = f.cmd.Process.Signal(os.Interrupt) // SIGINT: fast shutdown, master stops its workers
		done := make(chan struct{})
		go func() { f.cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			f.cmd.Process.Kill()
			<-done
		}
		if t.Failed() {
			b, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Logf("nginx error.log:\n%s", b)
		}
	})
	// The inherited sockets accept before nginx runs, so connecting proves nothing; the
	// master forks its workers once the configuration is loaded and the sockets are set up.
	// The bound is for a loaded machine, where the start (TLS, Lua) waits for a CPU.
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		f.workers = childrenOf(f.master)
		if len(f.workers) == 2 {
			return f
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("nginx did not start: workers %v", f.workers)
	return nil
}

func childrenOf(ppid int) []int {
	ents, _ := os.ReadDir("/proc")
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue
		}
		s := string(b)
		fields := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		if len(fields) > 1 && fields[1] == strconv.Itoa(ppid) {
			out = append(out, pid)
		}
	}
	sort.Ints(out)
	return out
}

func (f *nginxFixture) gateway() discovery.Gateway {
	gw := discovery.Gateway{
		Master: discovery.Process{PID: f.master, Comm: "nginx"},
		Exe:    fmt.Sprintf("/proc/%d/exe", f.master),
		Root:   fmt.Sprintf("/proc/%d/root", f.master),
	}
	for _, w := range f.workers {
		gw.Workers = append(gw.Workers, discovery.Process{PID: w, PPID: f.master, Comm: "nginx"})
	}
	return gw
}

type logLine struct {
	Status int     `json:"status"`
	Host   string  `json:"host"`
	Method string  `json:"method"`
	URI    string  `json:"uri"`
	RT     float64 `json:"rt"`
	Bytes  uint64  `json:"bytes"`
	PID    int     `json:"pid"`
	Proto  string  `json:"proto"`
	URT    string  `json:"urt"`  // $upstream_response_time, "" or "-" without upstream
	Port   string  `json:"port"` // $server_port: the listener's
}

func (f *nginxFixture) accessLog(t *testing.T) []logLine {
	b, err := os.ReadFile(filepath.Join(f.dir, "access.log"))
	if err != nil {
		t.Fatal(err)
	}
	var out []logLine
	for _, ln := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		if len(ln) == 0 {
			continue
		}
		var l logLine
		if err := json.Unmarshal(ln, &l); err != nil {
			t.Fatalf("access log line %q: %v", ln, err)
		}
		out = append(out, l)
	}
	return out
}

func writeCert(t *testing.T, dir string) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "localhost"},
		DNSNames: []string{"localhost"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	os.WriteFile(filepath.Join(dir, "cert.pem"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644)
	os.WriteFile(filepath.Join(dir, "key.pem"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
}

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
	if err := tr.Track(ng.gateway()); err != nil {
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
	nLua := 0
	if ng.lua {
		do("GET", base+"/lua/x", "", nil)
		nLua = 2 // and the upstream block's /from-lua
	}
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
	big := filepath.Join(ng.dir, "big.txt")
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
	var want []logLine
	deadline := time.Now().Add(10 * time.Second)
	for {
		want = want[:0]
		for _, l := range ng.accessLog(t) {
			if l.Method != "PRI" && !(l.Method == "" && l.Status == 400) && l.Proto != "HTTP/2.0" {
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
	wantBy := map[string][]logLine{}
	cut := func(s string, n int) string { s, _ = model.Cut(s, n); return s }
	for _, l := range want {
		k := key(l.Method, cut(l.Host, model.MaxHostLen), cut(l.URI, model.MaxURILen), l.Status)
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
		if r.HostTruncated != (len(l.Host) > model.MaxHostLen) || r.URITruncated != (len(l.URI) > model.MaxURILen) {
			problems = append(problems, fmt.Sprintf("%s: truncation flags host %v uri %v, nginx's host %d and uri %d bytes",
				k, r.HostTruncated, r.URITruncated, len(l.Host), len(l.URI)))
		}
		// nginx's $request_time has millisecond precision from a clock cached once per event
		// loop turn, so it misses time spent inside one handler (a worker preempted on this
		// shared 2-core VM): ours may be larger. Bounds that must hold: not below nginx's (less
		// its rounding), not above what the client itself measured around the exchange.
		ours := float64(r.Latency.Microseconds()) / 1000
		if d := math.Abs(ours - l.RT*1000); d > 5 {
			t.Logf("%s: latency %v, nginx %.3fs (client saw %v)", k, r.Latency, l.RT, clientDur[r.Host+r.URI])
			latencyOff++
		}
		if ours < l.RT*1000-2 && r.Method != "POST" { // a discarded body may be logged a loop turn later
			problems = append(problems, fmt.Sprintf("%s: latency %v below nginx's %.3fs", k, r.Latency, l.RT))
		}
		// Only for keep-alive requests without a body: nginx answers a POST before it has read
		// (and discarded) the body and logs it after, and logs a Connection: close exchange
		// at the close, both of which may come after the client has its response.
		if cd, ok := clientDur[r.Host+r.URI]; ok && r.Latency > cd+time.Millisecond {
			problems = append(problems, fmt.Sprintf("%s: latency %v above the client's %v", k, r.Latency, cd))
		}
		diffs = append(diffs, math.Abs(ours-l.RT*1000))
		if urt, err := strconv.ParseFloat(l.URT, 64); err == nil {
			switch {
			case !r.HasUpstream:
				problems = append(problems, k+": no upstream time, nginx "+l.URT)
			case math.Abs(float64(r.Upstream.Microseconds())/1000-urt*1000) > 5:
				t.Logf("%s: upstream %v, nginx %ss: more than 5ms off", k, r.Upstream, l.URT)
				latencyOff++
			default:
				t.Logf("%s: upstream %v, nginx %ss", k, r.Upstream, l.URT)
			}
		} else if r.HasUpstream && !strings.HasPrefix(r.URI, "/lua/") {
			// (a cosocket call-out is indistinguishable from an upstream on the wire)
			problems = append(problems, fmt.Sprintf("%s: upstream %v, nginx had none", k, r.Upstream))
		}
		if r.BytesSent != l.Bytes {
			problems = append(problems, fmt.Sprintf("%s: bytes %d, nginx %d", k, r.BytesSent, l.Bytes))
		}
		if r.PID != l.PID || !workers[r.PID] {
			problems = append(problems, fmt.Sprintf("%s: pid %d, nginx %d", k, r.PID, l.PID))
		}
		if port, _ := strconv.Atoi(l.Port); !r.ListenerKnown || r.UnixListener || int(r.LocalPort) != port {
			problems = append(problems, fmt.Sprintf("%s: listener known %v unix %v port %d, nginx's port %s", k, r.ListenerKnown, r.UnixListener, r.LocalPort, l.Port))
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
		b, _ := os.ReadFile(filepath.Join(ng.dir, "access.log"))
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
	tr.Untrack(ng.gateway().ID())
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
			if err := tr.Track(ng.gateway()); err != nil {
				t.Fatal(err)
			}
			mu.Lock()
			seen = 0
			mu.Unlock()
			before := tr.Status()
			with := wrk(tc.url)
			time.Sleep(300 * time.Millisecond)
			tr.Untrack(ng.gateway().ID())
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

// TestIntegrationPerfEventFallback attaches through perf-event uprobes, the path taken where
// uprobe_multi is missing (kernels < 6.6).
func TestIntegrationPerfEventFallback(t *testing.T) {
	havePrereqs(t, "nginx")
	ng := startNginx(t)
	tr, err := New(Options{Log: testr.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	tr.mode = "perf_event" // as if uprobe_multi had failed
	if err := tr.Track(ng.gateway()); err != nil {
		t.Fatal(err)
	}
	if m := tr.Status().Mode; m != "perf_event" {
		t.Fatalf("mode %q", m)
	}
	col := &collector{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx, col) }()
	defer func() { cancel(); <-done }()
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
	tr, err := New(Options{Log: testr.New(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	gw := ng.gateway()
	if err := tr.Track(gw); err != nil {
		t.Fatal(err)
	}
	col := &collector{}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- tr.Run(ctx, col) }()
	defer func() { cancel(); <-done }()
	base := fmt.Sprintf("http://127.0.0.1:%d", ng.plain)
	waitFor(t, col, getOK(t, base, "before", 3))

	old := map[int]bool{}
	for _, w := range ng.workers {
		old[w] = true
	}
	if err := ng.cmd.Process.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	var fresh []int
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		fresh = fresh[:0]
		for _, p := range childrenOf(ng.master) {
			if !old[p] {
				fresh = append(fresh, p)
			}
		}
		if len(fresh) == 2 && len(childrenOf(ng.master)) == 2 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if len(fresh) != 2 {
		t.Fatalf("new workers: %v", fresh)
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
