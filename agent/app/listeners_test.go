package app

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/go-logr/logr"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
	"github.com/kong-watcher/kong-watcher/agent/listeners"
	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/agent/pathnorm"
)

// A fake /proc: a Kong gateway (master 10, workers 11 and 12; 13 is a worker forked since the
// last scan), a plain nginx (master 20, worker 21), and an unrelated process 30.
func fakeProcs(t *testing.T) string {
	t.Helper()
	root := t.TempDir()
	for _, p := range []struct {
		pid, ppid int
		environ   string
	}{
		{10, 1, "KONG_PROXY_LISTEN=0.0.0.0:8000, 0.0.0.0:8443 ssl\x00KONG_ADMIN_LISTEN=127.0.0.1:8001\x00KONG_STATUS_LISTEN=0.0.0.0:8100\x00"},
		{11, 10, ""}, {12, 10, ""}, {13, 10, ""},
		{20, 1, "PATH=/bin\x00"}, {21, 20, ""}, {30, 1, ""},
	} {
		d := filepath.Join(root, fmt.Sprint(p.pid))
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		stat := fmt.Sprintf("%d (nginx) S %d %d %d 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 1 0 100 12345678 300\n", p.pid, p.ppid, p.pid, p.pid)
		for name, content := range map[string]string{"stat": stat, "environ": p.environ} {
			if err := os.WriteFile(filepath.Join(d, name), []byte(content), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	return root
}

type recorder []model.Request

func (r *recorder) Observe(q *model.Request) { *r = append(*r, *q) }

func gateway(master int, title string, workers ...int) discovery.Gateway {
	gw := discovery.Gateway{Master: discovery.Process{PID: master, StartTime: 100, Title: title}}
	for _, w := range workers {
		gw.Workers = append(gw.Workers, discovery.Process{PID: w, PPID: master})
	}
	return gw
}

// Each request is named by its own gateway's listeners: Kong's from its master's environment,
// a plain nginx's all the proxy; a worker forked since the last scan by its parent's.
func TestNamer(t *testing.T) {
	root := fakeProcs(t)
	a := newPipeline(Config{ProcRoot: root}, logr.Discard(), Options{})
	rec := &recorder{}
	a.namer.next = rec
	kong := gateway(10, "nginx: master process nginx -p /usr/local/kong/", 11, 12)
	plain := gateway(20, "nginx: master process /usr/sbin/nginx", 21)
	name := func(pid int, port uint16, unix, known bool) string {
		*rec = (*rec)[:0]
		a.sink.Observe(&model.Request{PID: pid, LocalPort: port, UnixListener: unix, ListenerKnown: known})
		return (*rec)[0].Listener
	}
	// Before any gateway is known: every listener is the proxy.
	if got := name(11, 8001, false, true); got != model.ListenerProxy {
		t.Errorf("no gateway yet: %q", got)
	}
	a.nameListeners(kong)
	// One gateway: a process of none is named by its.
	if got := name(30, 8001, false, true); got != "admin" {
		t.Errorf("single gateway, unknown process: %q", got)
	}
	a.nameListeners(plain)
	for _, c := range []struct {
		pid   int
		port  uint16
		unix  bool
		known bool
		want  string
	}{
		{11, 8000, false, true, model.ListenerProxy}, {12, 8443, false, true, model.ListenerProxy},
		{11, 8001, false, true, "admin"}, {12, 8100, false, true, "status"}, {11, 9000, false, true, "9000"},
		{11, 0, true, true, model.ListenerUnix}, {12, 8000, false, false, model.ListenerUnknown},
		{13, 8001, false, true, "admin"}, // forked since the scan: its parent's names
		{10, 8100, false, true, "status"},
		{21, 8001, false, true, model.ListenerProxy}, {20, 9000, false, true, model.ListenerProxy},
		{21, 0, true, true, model.ListenerUnix}, {21, 80, false, false, model.ListenerProxy},
		{30, 8001, false, true, model.ListenerProxy}, // two gateways, neither its
	} {
		if got := name(c.pid, c.port, c.unix, c.known); got != c.want {
			t.Errorf("pid %d port %d unix %v known %v: %q, want %q", c.pid, c.port, c.unix, c.known, got, c.want)
		}
	}
	a.namer.untrack(kong.ID())
	// The Kong gateway gone: its worker's parent is no gateway, the single one left names it.
	if got := name(11, 8001, false, true); got != model.ListenerProxy {
		t.Errorf("gateway gone: %q", got)
	}
}

// KONG_WATCHER_LISTENERS names every gateway's listeners; an invalid one stops the agent.
func TestNamerOverride(t *testing.T) {
	root := fakeProcs(t)
	cfg, err := FromEnv(env(map[string]string{"KONG_WATCHER_LISTENERS": "proxy=8001;mgmt=8000", "KONG_WATCHER_PROC_ROOT": root}))
	if err != nil || cfg.Listeners == nil || cfg.Listeners.String() != "proxy=8001;mgmt=8000" {
		t.Fatalf("FromEnv: %v, %v", cfg.Listeners, err)
	}
	a := newPipeline(cfg, logr.Discard(), Options{})
	rec := &recorder{}
	a.namer.next = rec
	a.nameListeners(gateway(10, "nginx: master process nginx -p /usr/local/kong/", 11))
	a.nameListeners(gateway(20, "nginx: master process nginx", 21))
	for pid, want := range map[int]string{11: "mgmt", 21: "mgmt", 30: "mgmt"} {
		a.sink.Observe(&model.Request{PID: pid, LocalPort: 8000, ListenerKnown: true})
		if got := (*rec)[len(*rec)-1].Listener; got != want {
			t.Errorf("pid %d: %q, want %q", pid, got, want)
		}
	}
	for _, bad := range []string{"admin=8001", "proxy=8000;proxy=8001", "proxy=x", "proxy=8000;admin=8000"} {
		if _, err := FromEnv(env(map[string]string{"KONG_WATCHER_LISTENERS": bad})); err == nil || !strings.Contains(err.Error(), "KONG_WATCHER_LISTENERS") {
			t.Errorf("KONG_WATCHER_LISTENERS=%q: %v", bad, err)
		}
	}
}

// Naming costs no allocation once a process's gateway is known.
func TestNamerDoesNotAllocate(t *testing.T) {
	root := fakeProcs(t)
	n := newNamer(&recorder{}, root, nil)
	set, _ := listeners.Learn(root, 10, "")
	n.track(gateway(10, "", 11), set)
	n.next = model.SinkFunc(func(*model.Request) {})
	r := &model.Request{PID: 11, LocalPort: 9000, ListenerKnown: true}
	n.Observe(r)
	if allocs := testing.AllocsPerRun(100, func() { n.Observe(r) }); allocs != 0 || r.Listener != "9000" {
		t.Errorf("%v allocations, listener %q", allocs, r.Listener)
	}
}

// The namer hands each request on with its route key computed once, the same the reporters
// would compute, and takes it back afterwards (the buffer is reused).
func TestNamerRoute(t *testing.T) {
	root := fakeProcs(t)
	n := newNamer(&recorder{}, root, nil)
	var got []string
	n.next = model.SinkFunc(func(r *model.Request) {
		if r.Route == nil {
			t.Fatalf("%q: no route", r.URI)
		}
		if want := pathnorm.AppendCut(nil, r.URI, r.URITruncated); string(r.Route) != string(want) {
			t.Errorf("%q (cut %v): route %q, want %q", r.URI, r.URITruncated, r.Route, want)
		}
		got = append(got, string(r.Route))
	})
	for _, r := range []model.Request{
		{URI: "/users/123?x=1"}, {URI: "/"}, {URI: "*"}, {URI: "http://h/a/b"}, {URI: "/users/adm", URITruncated: true},
		{URI: "not a uri"}, {URI: ""},
	} {
		r.PID = 11
		n.Observe(&r)
		if r.Route != nil {
			t.Errorf("%q: route left on the request after Observe", r.URI)
		}
	}
	if len(got) != 7 || got[0] != "/users/{id}" {
		t.Fatalf("routes %q", got)
	}
}
