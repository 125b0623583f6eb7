package probes

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"text/template"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
	"github.com/kong-watcher/kong-watcher/test/fixture"
)

const (
	ndkModule = "/usr/lib/nginx/modules/ndk_http_module.so"
	luaModule = "/usr/lib/nginx/modules/ngx_http_lua_module.so"
	nginxExe  = "/usr/sbin/nginx"
)

// requireIntegration skips (or, with KW_REQUIRE_INTEGRATION=1, fails) a test whose
// prerequisites are missing.
func requireIntegration(t testing.TB, bins ...string) {
	t.Helper()
	fixture.Require(t, os.Geteuid() == 0, "needs root (BPF, uprobes)")
	for _, f := range []string{nginxExe, ndkModule, luaModule} {
		_, err := os.Stat(f)
		fixture.Require(t, err == nil, f+" missing (apt-get install nginx libnginx-mod-http-lua)")
	}
	for _, b := range append([]string{"openssl"}, bins...) {
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

// loopbackSocket is fixture.LoopbackSocket on a free port, failing the test on error.
func loopbackSocket(t testing.TB, listen bool) (*os.File, int) {
	t.Helper()
	f, port, err := fixture.LoopbackSocket(0, listen)
	if err != nil {
		t.Fatal(err)
	}
	return f, port
}

// testNginx is a private nginx (Debian's binary + the lua module) on loopback ports.
type testNginx struct {
	Dir                         string
	Port, TLSPort, UpPort, Dead int
	// AltPort is served by a second server whose server_name ($host without Host) is
	// written with a leading dot and capitals: nginx logs "alt.kw.test".
	AltPort   int
	AccessLog string
	cmd       *exec.Cmd
	Master    int
}

const nginxConf = `
load_module {{.NDK}};
load_module {{.Lua}};
worker_processes 2;
daemon off;
master_process on;
pid {{.Dir}}/nginx.pid;
error_log {{.Dir}}/error.log warn;
events { worker_connections 1024; }
http {
  client_body_temp_path {{.Dir}}/tmp/body;
  proxy_temp_path {{.Dir}}/tmp/proxy;
  fastcgi_temp_path {{.Dir}}/tmp/fastcgi;
  uwsgi_temp_path {{.Dir}}/tmp/uwsgi;
  scgi_temp_path {{.Dir}}/tmp/scgi;
  lua_socket_log_errors off;
  log_format kw '$status	$host	$request_method	$request_uri	$request_time	$upstream_response_time	$bytes_sent	$server_protocol	$remote_addr	$pid	$server_port';
  access_log {{.Dir}}/access.log kw;
  server {
    listen 127.0.0.1:{{.Port}};
    listen 127.0.0.1:{{.TLSPort}} ssl http2;
    ssl_certificate {{.Dir}}/cert.pem;
    ssl_certificate_key {{.Dir}}/key.pem;
    server_name kw.test;
    root {{.Dir}}/html;
    location = /ok { return 200 "ok\n"; }
    location /static/ { error_page 404 /404.html; }
    location = /404.html { internal; }
    location /slow { proxy_pass http://127.0.0.1:{{.UpPort}}; }
    location /dead { proxy_pass http://127.0.0.1:{{.Dead}}; }
    location /hang { proxy_pass http://127.0.0.1:{{.UpPort}}; }
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
    server 127.0.0.1:{{.UpPort}};
    balancer_by_lua_block { local x = 0 for i = 1, 20000 do x = x + i end }
  }
  server {
    listen 127.0.0.1:{{.AltPort}};
    server_name .Alt.KW.Test www.alt.kw.test;
    location / { return 204; }
  }
  server {
    listen unix:{{.Dir}}/kw.sock;
    location / { return 200 "unix\n"; }
  }
  server {
    listen 127.0.0.1:{{.UpPort}};
    location / { content_by_lua_block { ngx.sleep(0.02) ngx.say("slow upstream") } }
    location /hang { content_by_lua_block { ngx.sleep(0.3) ngx.say("late") } }
  }
}
`

func startNginx(t testing.TB) *testNginx { return startNginxWrapped(t) }

// nginxBinary is the executable startNginx runs (a test may point it at a copy).
var nginxBinary = nginxExe

// startNginxWrapped runs nginx under a wrapper command (e.g. unshare --pid --fork): the
// master is then the wrapper's child.
func startNginxWrapped(t testing.TB, wrapper ...string) *testNginx {
	t.Helper()
	dir := t.TempDir()
	// Workers run as an unprivileged user: let them into the test's directory.
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	n := &testNginx{Dir: dir, AccessLog: filepath.Join(dir, "access.log")}
	// nginx inherits its listening sockets, bound here, rather than binding ports picked
	// earlier: a port picked by binding and closing a probe socket is free only at that moment,
	// so two picks can return the same port (nginx then merges the two listen directives, and
	// the alt server's requests are answered by the main server) and another process can take
	// one before nginx binds it. The dead port stays bound, not listening, until the test ends.
	var inherit []*os.File
	defer func() {
		for _, f := range inherit {
			f.Close() // nginx has its own copies once started
		}
	}()
	for _, port := range []*int{&n.Port, &n.TLSPort, &n.UpPort, &n.AltPort} {
		f, p := loopbackSocket(t, true)
		inherit = append(inherit, f)
		*port = p
	}
	dead, deadPort := loopbackSocket(t, false)
	t.Cleanup(func() { dead.Close() })
	n.Dead = deadPort
	for _, d := range []string{"tmp", "html/static", "logs"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.WriteFile(filepath.Join(dir, "html/404.html"), []byte("not here\n"), 0o644)
	os.WriteFile(filepath.Join(dir, "html/static/a.txt"), []byte(strings.Repeat("a", 3000)), 0o644)
	out, err := exec.Command("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
		"-subj", "/CN=kw.test", "-keyout", filepath.Join(dir, "key.pem"), "-out", filepath.Join(dir, "cert.pem")).CombinedOutput()
	if err != nil {
		t.Fatalf("openssl: %v\n%s", err, out)
	}
	f, err := os.Create(filepath.Join(dir, "nginx.conf"))
	if err != nil {
		t.Fatal(err)
	}
	err = template.Must(template.New("c").Parse(nginxConf)).Execute(f, map[string]any{
		"NDK": ndkModule, "Lua": luaModule, "Dir": dir, "Port": n.Port, "TLSPort": n.TLSPort,
		"UpPort": n.UpPort, "Dead": n.Dead, "AltPort": n.AltPort})
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	args := append(append([]string{}, wrapper...), nginxBinary, "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-e", filepath.Join(dir, "error.log"))
	n.cmd = exec.Command(args[0], args[1:]...)
	n.cmd.Stdout, n.cmd.Stderr = os.Stderr, os.Stderr
	fixture.InheritListeners(n.cmd, inherit)
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	n.Master = n.cmd.Process.Pid
	t.Cleanup(n.stop)
	deadline := time.Now().Add(10 * time.Second)
	for len(wrapper) > 0 {
		n.Master = n.cmd.Process.Pid
		if kids := n.Workers(); len(kids) == 1 {
			n.Master = kids[0].PID
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("wrapped nginx master not found")
		}
		time.Sleep(20 * time.Millisecond)
	}
	for {
		if c, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", n.Port)); err == nil {
			c.Close()
			if len(n.Workers()) == 2 {
				break
			}
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			t.Fatalf("nginx did not start:\n%s", log)
		}
		time.Sleep(50 * time.Millisecond)
	}
	return n
}

func (n *testNginx) stop() {
	if n.cmd == nil || n.cmd.Process == nil {
		return
	}
	syscall.Kill(n.Master, syscall.SIGQUIT)
	done := make(chan struct{})
	go func() { n.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		n.cmd.Process.Kill()
		<-done
	}
	n.cmd = nil
}

// Workers are the master's children (nginx workers), by scanning /proc.
func (n *testNginx) Workers() []discovery.Process {
	ents, _ := os.ReadDir("/proc")
	var out []discovery.Process
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
		rest := s[strings.LastIndexByte(s, ')')+2:]
		fs := strings.Fields(rest)
		if len(fs) < 20 {
			continue
		}
		ppid, _ := strconv.Atoi(fs[1])
		if ppid != n.Master {
			continue
		}
		st, _ := strconv.ParseUint(fs[19], 10, 64)
		out = append(out, discovery.Process{PID: pid, PPID: ppid, Comm: "nginx", StartTime: st})
	}
	return out
}

func (n *testNginx) Gateway(t testing.TB) discovery.Gateway {
	t.Helper()
	exe := fmt.Sprintf("/proc/%d/exe", n.Master)
	var st syscall.Stat_t
	if err := syscall.Stat(exe, &st); err != nil {
		t.Fatal(err)
	}
	return discovery.Gateway{
		Master:  discovery.Process{PID: n.Master, Comm: "nginx"},
		Workers: n.Workers(),
		Exe:     exe,
		Root:    fmt.Sprintf("/proc/%d/root", n.Master),
		ExeDev:  uint64(st.Dev),
		ExeIno:  st.Ino,
	}
}

// logLine is one access log line of the kw format.
type logLine struct {
	Status                         int
	Host, Method, URI, Proto, Addr string
	ReqMs                          int64
	UpMs                           int64
	HasUp                          bool
	Bytes                          uint64
	PID                            int
	// ServerPort is $server_port: the listener's port, "" for a unix-domain one.
	ServerPort string
	raw        string
}

func parseMs(s string) (int64, bool) {
	// "0.020" -> 20; nginx prints %T.%03M
	sec, frac, ok := strings.Cut(s, ".")
	if !ok {
		return 0, false
	}
	a, err1 := strconv.ParseInt(sec, 10, 64)
	b, err2 := strconv.ParseInt(frac, 10, 64)
	if err1 != nil || err2 != nil {
		return 0, false
	}
	return a*1000 + b, true
}

// waitAccessLog waits until the access log holds at least n lines and returns them all.
// nginx writes a request's line only after the client has the whole answer, so the last
// lines of traffic just answered can still be missing, the longer the busier the machine.
func waitAccessLog(t testing.TB, path string, n int) []logLine {
	t.Helper()
	for deadline := time.Now().Add(15 * time.Second); ; {
		lines := readAccessLog(t, path)
		if len(lines) >= n {
			return lines
		}
		if time.Now().After(deadline) {
			t.Fatalf("access log has %d lines, want %d", len(lines), n)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func readAccessLog(t testing.TB, path string) []logLine {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []logLine
	for _, l := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		if l == "" {
			continue
		}
		fs := strings.Split(l, "\t")
		if len(fs) != 11 {
			t.Fatalf("bad log line %q", l)
		}
		var ll logLine
		ll.raw = l
		ll.Status, _ = strconv.Atoi(fs[0])
		ll.Host, ll.Method, ll.URI = fs[1], fs[2], fs[3]
		ll.ReqMs, _ = parseMs(fs[4])
		if fs[5] != "-" {
			ll.HasUp = true
			// one entry per try: "0.020, 0.001" (and " : " across internal redirects)
			for _, p := range strings.FieldsFunc(fs[5], func(r rune) bool { return r == ',' || r == ':' }) {
				if ms, ok := parseMs(strings.TrimSpace(p)); ok {
					ll.UpMs += ms
				}
			}
		}
		ll.Bytes, _ = strconv.ParseUint(fs[6], 10, 64)
		ll.Proto, ll.Addr = fs[7], fs[8]
		ll.PID, _ = strconv.Atoi(fs[9])
		ll.ServerPort = fs[10]
		out = append(out, ll)
	}
	return out
}
