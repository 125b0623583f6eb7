// The integration tests' gateway (test/fixture with the wire path's servers), tracer and
// collector.

package wire

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
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
