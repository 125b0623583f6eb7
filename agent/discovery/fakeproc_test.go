package discovery

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The fake /proc trees under testdata/ are generated from the tables below by
//
//	go test ./agent/discovery -run TestGenerateFakeProc -update
//
// and committed, so the scanner is tested against plain files a reader can inspect.
var update = flag.Bool("update", false, "rewrite testdata/proc* from the tables in fakeproc_test.go")

type fakeProc struct {
	pid, ppid int
	comm      string
	state     byte
	start     uint64
	cmdline   []string // NUL-separated; nil: no cmdline file (vanished mid-scan)
	exe       string   // symlink target; "" for none
	noStat    bool     // the process vanished between readdir and reading stat
}

func statLine(p fakeProc) string {
	// Fields 3..22 then a few more, as the kernel prints them.
	return fmt.Sprintf("%d (%s) %c %d %d %d 0 -1 4194560 120 0 0 0 3 1 0 0 20 0 1 0 %d 12345678 300 "+
		"18446744073709551615 1 1 0 0 0 0 0 4096 134 0 0 0 17 1 0 0 0 0 0\n",
		p.pid, p.comm, p.state, p.ppid, p.pid, p.pid, p.start)
}

func writeFakeProc(t testing.TB, dir string, procs []fakeProc) {
	t.Helper()
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll(filepath.Join(dir, "sys"), 0o755)) // non-PID entries exist in /proc
	for _, p := range procs {
		pd := filepath.Join(dir, fmt.Sprint(p.pid))
		must(os.MkdirAll(pd, 0o755))
		must(os.WriteFile(filepath.Join(pd, "comm"), []byte(p.comm+"\n"), 0o644))
		if !p.noStat {
			if p.state == 0 {
				p.state = 'S'
			}
			must(os.WriteFile(filepath.Join(pd, "stat"), []byte(statLine(p)), 0o644))
		}
		if p.cmdline != nil {
			must(os.WriteFile(filepath.Join(pd, "cmdline"), []byte(strings.Join(p.cmdline, "\x00")+"\x00"), 0o644))
		}
		if p.exe != "" {
			must(os.Symlink(p.exe, filepath.Join(pd, "exe")))
		}
	}
}

var (
	title = func(s string) []string { return []string{s} }
	// nginx pads its process title with NULs over the original argv.
	padded = func(s string) []string { return []string{s, "", "", ""} }
	binA   = "../../bin/nginx-a"
	binB   = "../../bin/nginx-b"
)

// fakeTrees: testdata/<name> holds a /proc with these processes.
var fakeTrees = map[string][]fakeProc{
	"proc-pod": {
		{pid: 1, ppid: 0, comm: "pause", start: 10, cmdline: title("/pause")},
		// Gateway A: master, two workers (one retired by a reload), cache manager, zombie.
		{pid: 7, ppid: 1, comm: "nginx", start: 100, cmdline: title("nginx: master process /usr/local/openresty/nginx/sbin/nginx -p /usr/local/kong -c nginx.conf"), exe: binA},
		{pid: 8, ppid: 7, comm: "nginx", start: 105, cmdline: padded("nginx: worker process is shutting down"), exe: binA},
		{pid: 12, ppid: 7, comm: "nginx", start: 900, cmdline: padded("nginx: worker process"), exe: binA},
		{pid: 13, ppid: 7, comm: "nginx", start: 901, cmdline: padded("nginx: worker process"), exe: binA},
		{pid: 14, ppid: 7, comm: "nginx", start: 902, cmdline: padded("nginx: cache manager process"), exe: binA},
		{pid: 15, ppid: 7, comm: "nginx", start: 903, state: 'Z', cmdline: []string{}},
		{pid: 16, ppid: 7, comm: "nginx", start: 904, cmdline: padded("nginx: privileged agent process"), exe: binA},
		// A worker's short-lived fork (Lua os.execute before exec): not a worker.
		{pid: 17, ppid: 12, comm: "nginx", start: 950, cmdline: padded("nginx: worker process"), exe: binA},
		// A worker just forked by the master: it still has the master's title.
		{pid: 18, ppid: 7, comm: "nginx", start: 955, cmdline: title("nginx: master process /usr/local/openresty/nginx/sbin/nginx -p /usr/local/kong -c nginx.conf"), exe: binA},
		// Vanished mid-scan: no stat; stat but no cmdline.
		{pid: 20, ppid: 7, comm: "nginx", start: 960, noStat: true},
		{pid: 21, ppid: 7, comm: "nginx", start: 961},
		// The sidecar itself and processes whose names merely resemble nginx.
		{pid: 30, ppid: 0, comm: "kong-watcher", start: 50, cmdline: title("/kong-watcher-agent")},
		{pid: 31, ppid: 1, comm: "nginx-exporter", start: 60, cmdline: title("nginx-exporter")},
		{pid: 32, ppid: 1, comm: "nginx) S 1 (x", start: 61, cmdline: title("evil")},
		{pid: 33, ppid: 1, comm: "sh", start: 62, cmdline: []string{"sh", "-c", "nginx: master process"}},
		// Gateway B: another binary, binary upgrade in progress (a new master, child of the
		// old one, with its own worker).
		{pid: 40, ppid: 1, comm: "nginx", start: 200, cmdline: padded("nginx: master process nginx -g daemon off;"), exe: binB},
		{pid: 41, ppid: 40, comm: "nginx", start: 201, cmdline: padded("nginx: worker process"), exe: binB},
		{pid: 45, ppid: 40, comm: "nginx", start: 300, cmdline: padded("nginx: master process nginx -g daemon off;"), exe: binB},
		{pid: 46, ppid: 45, comm: "nginx", start: 301, cmdline: padded("nginx: worker process"), exe: binB},
		// master_process off: one process, the original command line.
		{pid: 50, ppid: 1, comm: "nginx", start: 400, cmdline: []string{"nginx", "-g", "daemon off; master_process off;"}, exe: binA},
		// A worker whose master was killed: reparented, still serving.
		{pid: 60, ppid: 1, comm: "nginx", start: 500, cmdline: padded("nginx: worker process"), exe: binA},
		// A master whose executable cannot be resolved (here a symlink loop).
		{pid: 70, ppid: 1, comm: "nginx", start: 600, cmdline: padded("nginx: master process nginx"), exe: "exe"},
		{pid: 71, ppid: 70, comm: "nginx", start: 601, cmdline: padded("nginx: worker process"), exe: "exe"},
		// A master that exited after its directory was listed: no exe.
		{pid: 80, ppid: 1, comm: "nginx", start: 700, cmdline: padded("nginx: master process nginx")},
	},
	// Unusual process names: spaces, parentheses, a name cut at 15 bytes.
	"proc-names": {
		{pid: 100, ppid: 1, comm: "my gw) (1", start: 1, cmdline: padded("nginx: master process ./my gw) (1"), exe: binA},
		{pid: 101, ppid: 100, comm: "my gw) (1", start: 2, cmdline: padded("nginx: worker process"), exe: binA},
		{pid: 200, ppid: 1, comm: "openresty-nginx", start: 3, cmdline: padded("nginx: master process /opt/openresty-nginx-custom"), exe: binB},
		{pid: 201, ppid: 200, comm: "openresty-nginx", start: 4, cmdline: padded("nginx: worker process"), exe: binB},
	},
}

func TestGenerateFakeProc(t *testing.T) {
	if !*update {
		t.Skip("run with -update to regenerate testdata")
	}
	must := func(err error) {
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.MkdirAll("testdata/bin", 0o755))
	must(os.WriteFile("testdata/bin/nginx-a", []byte("fake nginx binary A\n"), 0o755))
	must(os.WriteFile("testdata/bin/nginx-b", []byte("fake nginx binary B\n"), 0o755))
	for name, procs := range fakeTrees {
		dir := filepath.Join("testdata", name)
		must(os.RemoveAll(dir))
		writeFakeProc(t, dir, procs)
	}
}
