package probes

import (
	"context"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// requireIntegration skips (or, with KW_REQUIRE_INTEGRATION=1, fails) a test whose
// prerequisites are missing.
func requireIntegration(t testing.TB, bins ...string) {
	t.Helper()
	fixture.RequireRoot(t) // BPF, uprobes
	fixture.RequireNginx(t)
	for _, b := range bins {
		fixture.RequireCommand(t, b)
	}
}

// requireOuter is requireIntegration for a test that re-executes itself in a namespace:
// the inner run (innerEnv set) only does the part it was started for.
func requireOuter(t testing.TB, bins ...string) {
	t.Helper()
	if os.Getenv(innerEnv) != "" {
		t.Skip("inner run")
	}
	requireIntegration(t, bins...)
}

// requireInitialPIDNamespace skips a test that must itself run in the initial PID namespace
// (whose inode number is fixed: PROC_PID_INIT_INO).
func requireInitialPIDNamespace(t testing.TB) {
	t.Helper()
	var st syscall.Stat_t
	if err := syscall.Stat("/proc/self/ns/pid", &st); err != nil || st.Ino != 0xEFFFFFFC {
		t.Skip("the test itself must run in the initial PID namespace")
	}
}

// probeServers are the servers of the probes' nginx (test/fixture's gateway, its servers
// replaced). The main server answers on HTTPPort and, with TLS and HTTP/2, on HTTPSPort.
// ExtraPorts[0] is a second server whose server_name ($host without Host) is written with a
// leading dot and capitals: nginx logs "alt.kw.test". ExtraPorts[1] is the upstream the main
// server proxies to, served by the same nginx, so a proxied request is logged (and seen by
// the probes) twice. A unix-domain listener (as Kong's worker events) has no port.
const probeServers = `
  lua_socket_log_errors off;
  server {
    listen 127.0.0.1:{{.HTTPPort}};
    listen 127.0.0.1:{{.HTTPSPort}} ssl http2;
    server_name kw.test;
    root {{.Prefix}}/html;
    # What the fixture asks to check that nginx serves.
    location = /fast { return 200 "ok\n"; }
    location = /ok { return 200 "ok\n"; }
    location /static/ { error_page 404 /404.html; }
    location = /404.html { internal; }
    location /slow { proxy_pass http://127.0.0.1:{{index .ExtraPorts 1}}; }
    location /dead { proxy_pass http://{{.DeadAddr}}; }
    location /hang { proxy_pass http://127.0.0.1:{{index .ExtraPorts 1}}; }
    location /lua { content_by_lua_block { ngx.sleep(0.005) ngx.say("lua") } }
    location /withsub { content_by_lua_block { local r = ngx.location.capture("/phases") ngx.say(r.status) } }
    location /phases {
      rewrite_by_lua_block { local x = 0 for i = 1, 20000 do x = x + i end }
      access_by_lua_block { local x = 0 for i = 1, 20000 do x = x + i end }
      content_by_lua_block { local x = 0 for i = 1, 20000 do x = x + i end ngx.say(x) }
      header_filter_by_lua_block { local x = 0 for i = 1, 20000 do x = x + i end }
      body_filter_by_lua_block { local x = 0 for i = 1, 20000 do x = x + i end }
      log_by_lua_block { local x = 0 for i = 1, 20000 do x = x + i end }
    }
    location /balanced { proxy_pass http://lua_balanced; }
    # Lua removes a request header and a response header from the middle of their lists, as
    # Kong's key-auth (hide_credentials) and response-transformer do on every request.
    location /cleared {
      rewrite_by_lua_block { ngx.req.clear_header("X-Secret") }
      content_by_lua_block {
        ngx.header["X-A"] = "1" ngx.header["X-Remove"] = "1" ngx.header["X-Z"] = "1"
        ngx.header["X-Remove"] = nil
        ngx.say(ngx.var.http_x_secret or "cleared")
      }
    }
    # ngx.exit in the access handler answers at once: the header filter runs inside it.
    location /denied {
      access_by_lua_block { ngx.status = 403 ngx.say("no") ngx.exit(403) }
      header_filter_by_lua_block { local t = os.clock() while os.clock() - t < 0.003 do end }
    }
  }
  # No peer set by the Lua code: the upstream's round robin picks the server.
  upstream lua_balanced {
    server 127.0.0.1:{{index .ExtraPorts 1}};
    balancer_by_lua_block { local x = 0 for i = 1, 20000 do x = x + i end }
  }
  server {
    listen 127.0.0.1:{{index .ExtraPorts 0}};
    server_name .Alt.KW.Test www.alt.kw.test;
    location / { return 204; }
  }
  server {
    listen unix:{{.Prefix}}/kw.sock;
    location / { return 200 "unix\n"; }
  }
  server {
    listen 127.0.0.1:{{index .ExtraPorts 1}};
    location / { content_by_lua_block { ngx.sleep(0.02) ngx.say("slow upstream") } }
    location /hang { content_by_lua_block { ngx.sleep(0.3) ngx.say("late") } }
  }
`

// testNginx is test/fixture's gateway running probeServers.
type testNginx struct {
	g                              *fixture.Gateway
	Port, TLSPort, AltPort, UpPort int
	// Master is the master's PID in this process's PID namespace.
	Master int
}

func startNginx(t testing.TB) *testNginx { return startNginxWith(t, fixture.Options{}) }

// startNginxWrapped runs nginx under a wrapper command (e.g. unshare --pid --fork).
func startNginxWrapped(t testing.TB, wrapper ...string) *testNginx {
	return startNginxWith(t, fixture.Options{Wrapper: wrapper})
}

// startNginxWith starts the gateway with opts (its binary, a wrapper) and probeServers. Its
// workers run as an unprivileged user, as in a pod where the agent is not nginx's user.
func startNginxWith(t testing.TB, opts fixture.Options) *testNginx {
	t.Helper()
	opts.Servers, opts.ExtraPorts, opts.User = probeServers, 2, "nobody nogroup"
	g := fixture.StartT(t, opts)
	for name, content := range map[string]string{"404.html": "not here\n", "static/a.txt": strings.Repeat("a", 3000)} {
		if err := os.WriteFile(filepath.Join(g.Prefix, "html", name), []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return newTestNginx(t, g)
}

func newTestNginx(t testing.TB, g *fixture.Gateway) *testNginx {
	t.Helper()
	port := func(addr string) int {
		_, p, err := net.SplitHostPort(addr)
		n, err2 := strconv.Atoi(p)
		if err != nil || err2 != nil {
			t.Fatalf("address %q: %v %v", addr, err, err2)
		}
		return n
	}
	if len(g.ExtraPorts) != 2 {
		t.Fatalf("gateway with extra ports %v, want 2", g.ExtraPorts)
	}
	return &testNginx{g: g, Master: g.MasterPID(), Port: port(g.HTTPAddr), TLSPort: port(g.HTTPSAddr),
		AltPort: g.ExtraPorts[0], UpPort: g.ExtraPorts[1]}
}

// Workers are the master's children: its current workers and those a reload retired that
// have not exited yet.
func (n *testNginx) Workers() []discovery.Process {
	ws, _ := n.g.Children()
	return ws
}

// Gateway is the gateway as the agent's discovery finds it.
func (n *testNginx) Gateway(t testing.TB) discovery.Gateway {
	t.Helper()
	gw, err := n.g.Discovery()
	if err != nil {
		t.Fatal(err)
	}
	return gw
}

// waitAccessLog waits until the access log holds at least k lines and returns them all.
func waitAccessLog(t testing.TB, n *testNginx, k int) []fixture.LogEntry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	defer cancel()
	es, err := n.g.WaitAccessLog(ctx, k)
	if err != nil {
		t.Fatal(err)
	}
	return es
}

func readAccessLog(t testing.TB, n *testNginx) []fixture.LogEntry {
	t.Helper()
	es, err := n.g.AccessLog()
	if err != nil {
		t.Fatal(err)
	}
	return es
}
