package discovery

import (
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"syscall"
	"testing"
)

func inode(t *testing.T, path string) (uint64, uint64) {
	t.Helper()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return uint64(st.Dev), st.Ino
}

// summary is a gateway reduced to what the tables below compare.
type summary struct {
	master  int
	workers []int
	down    []int // workers marked ShuttingDown
	hasErr  bool
}

func summarize(gs []Gateway) []summary {
	var out []summary
	for _, g := range gs {
		s := summary{master: g.Master.PID, hasErr: g.Err != nil}
		for _, w := range g.Workers {
			s.workers = append(s.workers, w.PID)
			if w.ShuttingDown {
				s.down = append(s.down, w.PID)
			}
		}
		out = append(out, s)
	}
	return out
}

func TestScanFakePod(t *testing.T) {
	root := filepath.Join("testdata", "proc-pod")
	gs, err := Scanner{ProcRoot: root}.Scan()
	want := []summary{
		{master: 7, workers: []int{8, 12, 13, 18}, down: []int{8}},
		{master: 40, workers: []int{41}},
		{master: 45, workers: []int{46}}, // binary upgrade: the new master is its own gateway
		{master: 50},                     // master_process off
		{master: 60},                     // orphaned worker
		{master: 70, workers: []int{71}, hasErr: true},
	}
	if got := summarize(gs); !reflect.DeepEqual(got, want) {
		t.Fatalf("gateways:\n got %+v\nwant %+v", got, want)
	}
	if err == nil || !errors.Is(err, gs[5].Err) {
		t.Errorf("Scan error %v should report gateway 70's %v", err, gs[5].Err)
	}

	a := gs[0]
	devA, inoA := inode(t, "testdata/bin/nginx-a")
	devB, inoB := inode(t, "testdata/bin/nginx-b")
	if a.ExeDev != devA || a.ExeIno != inoA || gs[1].ExeIno != inoB || gs[1].ExeDev != devB {
		t.Errorf("exe identity: A %d/%d want %d/%d, B %d want %d", a.ExeDev, a.ExeIno, devA, inoA, gs[1].ExeIno, inoB)
	}
	if a.Exe != filepath.Join(root, "7", "exe") || a.Root != filepath.Join(root, "7", "root") {
		t.Errorf("paths: %q %q", a.Exe, a.Root)
	}
	wantMaster := Process{PID: 7, PPID: 1, Comm: "nginx", StartTime: 100,
		Title: "nginx: master process /usr/local/openresty/nginx/sbin/nginx -p /usr/local/kong -c nginx.conf"}
	if a.Master != wantMaster {
		t.Errorf("master %+v\nwant   %+v", a.Master, wantMaster)
	}
	if w := a.Workers[1]; w.Title != "nginx: worker process" || w.StartTime != 900 || w.PPID != 7 {
		t.Errorf("worker %+v", w)
	}
	if got := a.PIDs(); !reflect.DeepEqual(got, []int{8, 12, 13, 18}) {
		t.Errorf("PIDs %v", got)
	}
	if got := gs[3].PIDs(); !reflect.DeepEqual(got, []int{50}) {
		t.Errorf("single-process PIDs %v", got)
	}
}

func TestScanNames(t *testing.T) {
	root := filepath.Join("testdata", "proc-names")
	for _, c := range []struct {
		name string
		want []summary
	}{
		{"my gw) (1", []summary{{master: 100, workers: []int{101}}}},
		// Longer than the kernel's 15 bytes: matched on the truncated comm.
		{"openresty-nginx-custom", []summary{{master: 200, workers: []int{201}}}},
		{"nginx", nil},
	} {
		gs, err := Scanner{ProcRoot: root, Name: c.name}.Scan()
		if err != nil {
			t.Fatal(err)
		}
		if got := summarize(gs); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%q: got %+v want %+v", c.name, got, c.want)
		}
	}
}

func TestScanUnreadableRoot(t *testing.T) {
	gs, err := Scanner{ProcRoot: filepath.Join(t.TempDir(), "missing")}.Scan()
	if err == nil || gs != nil {
		t.Fatalf("got %v, %v", gs, err)
	}
}

func TestClassify(t *testing.T) {
	for title, want := range map[string]role{
		"nginx: master process /usr/sbin/nginx":  roleMaster,
		"nginx: worker process":                  roleWorker,
		"nginx: worker process is shutting down": roleWorker,
		"nginx: cache manager process":           roleHelper,
		"nginx: cache loader process":            roleHelper,
		"nginx: privileged agent process":        roleHelper,
		"nginx -g daemon off;":                   roleOther,
		"":                                       roleOther,
	} {
		if got, _ := classify(title); got != want {
			t.Errorf("classify(%q) = %v, want %v", title, got, want)
		}
	}
}
