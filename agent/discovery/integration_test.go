package discovery_test

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// find returns the scanned gateway whose master is the fixture's.
func find(t *testing.T, gs []discovery.Gateway, master int) discovery.Gateway {
	t.Helper()
	for _, g := range gs {
		if g.Master.PID == master {
			return g
		}
	}
	t.Fatalf("gateway with master %d not found among %d gateways", master, len(gs))
	return discovery.Gateway{}
}

func nginxIdentity(t *testing.T) (uint64, uint64) {
	p, err := exec.LookPath("nginx")
	if err != nil {
		p = "/usr/sbin/nginx"
	}
	fi, err := os.Stat(p)
	if err != nil {
		t.Fatal(err)
	}
	st := fi.Sys().(*syscall.Stat_t)
	return uint64(st.Dev), st.Ino
}

func checkMatches(t *testing.T, g discovery.Gateway, fx *fixture.Gateway) {
	t.Helper()
	want, _ := fx.WorkerPIDs()
	if got := g.PIDs(); !reflect.DeepEqual(got, want) {
		t.Errorf("workers %v, fixture's %v", got, want)
	}
	dev, ino := nginxIdentity(t)
	if g.Err != nil || g.ExeDev != dev || g.ExeIno != ino {
		t.Errorf("exe %d/%d (err %v), want nginx's %d/%d", g.ExeDev, g.ExeIno, g.Err, dev, ino)
	}
	if !strings.HasPrefix(g.Master.Title, "nginx: master process") || g.Master.Comm != "nginx" || g.Master.StartTime == 0 {
		t.Errorf("master %+v", g.Master)
	}
	for _, w := range g.Workers {
		if w.Title != "nginx: worker process" || w.PPID != g.Master.PID || w.ShuttingDown {
			t.Errorf("worker %+v", w)
		}
	}
}

func TestDiscoverFixture(t *testing.T) {
	fx := fixture.StartT(t, fixture.Options{})
	gs, err := discovery.Scanner{}.Scan()
	if err != nil {
		t.Logf("scan reported (other gateways may be unidentifiable): %v", err)
	}
	g := find(t, gs, fx.MasterPID())
	if len(g.Workers) != 2 {
		t.Errorf("%d workers, want 2", len(g.Workers))
	}
	checkMatches(t, g, fx)
}

func TestTwoGatewaysAndSingleProcess(t *testing.T) {
	a := fixture.StartT(t, fixture.Options{Workers: 2})
	b := fixture.StartT(t, fixture.Options{Workers: 3})
	c := fixture.StartT(t, fixture.Options{SingleProcess: true})
	gs, _ := discovery.Scanner{}.Scan()
	ga, gb, gc := find(t, gs, a.MasterPID()), find(t, gs, b.MasterPID()), find(t, gs, c.MasterPID())
	checkMatches(t, ga, a)
	checkMatches(t, gb, b)
	if len(ga.Workers) != 2 || len(gb.Workers) != 3 || ga.ID() == gb.ID() {
		t.Errorf("gateways %+v / %+v", ga, gb)
	}
	if len(gc.Workers) != 0 || !reflect.DeepEqual(gc.PIDs(), []int{c.MasterPID()}) {
		t.Errorf("single-process gateway %+v", gc)
	}
}

// watcher collects Watch events about gateways whose master runs from prefix.
type watcher struct {
	events chan discovery.Event
}

func watch(t *testing.T, prefix string) *watcher {
	ctx, cancel := context.WithCancel(context.Background())
	w := &watcher{events: make(chan discovery.Event, 100)}
	done := make(chan struct{})
	go func() {
		defer close(done)
		discovery.Watch(ctx, discovery.Scanner{}, 50*time.Millisecond, func(e discovery.Event) {
			if strings.Contains(e.Gateway.Master.Title, " -p "+prefix+"/ ") {
				w.events <- e
			}
		})
	}()
	t.Cleanup(func() { cancel(); <-done })
	return w
}

// next waits for an event of kind satisfying ok, skipping others (e.g. the intermediate
// Changed events of a reload).
func (w *watcher) next(t *testing.T, kind discovery.EventKind, ok func(discovery.Gateway) bool) discovery.Gateway {
	t.Helper()
	deadline := time.After(15 * time.Second)
	for {
		select {
		case e := <-w.events:
			t.Logf("event %v master %d workers %v", e.Kind, e.Gateway.Master.PID, e.Gateway.PIDs())
			if e.Kind == kind && (ok == nil || ok(e.Gateway)) {
				return e.Gateway
			}
		case <-deadline:
			t.Fatalf("no %v event within 15s", kind)
		}
	}
}

func samePIDs(want []int) func(discovery.Gateway) bool {
	return func(g discovery.Gateway) bool { return reflect.DeepEqual(g.PIDs(), want) }
}

func TestWatchFixtureLifecycle(t *testing.T) {
	fixture.RequireNginx(t)
	dir := t.TempDir()
	w := watch(t, dir)

	fx, err := fixture.Start(context.Background(), fixture.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fx.Stop() })
	first, _ := fx.WorkerPIDs()
	g := w.next(t, discovery.Added, nil)
	if g.Master.PID != fx.MasterPID() {
		t.Fatalf("added master %d, want %d", g.Master.PID, fx.MasterPID())
	}
	id := g.ID()
	// The scan may have caught the master before it forked its workers.
	if !samePIDs(first)(g) {
		g = w.next(t, discovery.Changed, samePIDs(first))
	}

	if err := fx.Reload(); err != nil {
		t.Fatal(err)
	}
	reloaded, _ := fx.WorkerPIDs()
	g = w.next(t, discovery.Changed, samePIDs(reloaded))
	if g.ID() != id || reflect.DeepEqual(reloaded, first) {
		t.Errorf("after reload: id %v (was %v), workers %v (were %v)", g.ID(), id, reloaded, first)
	}

	killed, repl, err := fx.KillWorker()
	if err != nil {
		t.Fatal(err)
	}
	respawned, _ := fx.WorkerPIDs()
	g = w.next(t, discovery.Changed, samePIDs(respawned))
	if containsInt(g.PIDs(), killed) || !containsInt(g.PIDs(), repl) {
		t.Errorf("after kill -9 of %d: workers %v, want %d among them", killed, g.PIDs(), repl)
	}

	if err := fx.Stop(); err != nil {
		t.Fatal(err)
	}
	if g = w.next(t, discovery.Removed, nil); g.ID() != id {
		t.Errorf("removed %v, want %v", g.ID(), id)
	}

	fx2, err := fixture.Start(context.Background(), fixture.Options{Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fx2.Stop() })
	g = w.next(t, discovery.Added, nil)
	if g.Master.PID != fx2.MasterPID() || g.ID() == id {
		t.Errorf("restarted gateway %+v", g)
	}
	if again, _ := fx2.WorkerPIDs(); !samePIDs(again)(g) {
		w.next(t, discovery.Changed, samePIDs(again))
	}
}

func containsInt(xs []int, x int) bool {
	for _, v := range xs {
		if v == x {
			return true
		}
	}
	return false
}

// nsResult is what the child reports from inside the PID namespace.
type nsResult struct {
	SelfPID    int
	PIDNS      string
	FixtureMas int
	FixtureWrk []int
	Gateways   []discovery.Gateway
}

// TestDiscoveryInPIDNamespace runs discovery where the agent runs in a pod: in a PID
// namespace of its own with the gateway, reading that namespace's /proc. It re-executes
// this test binary under `unshare --pid --fork --mount-proc`; the child starts the fixture
// there, scans, and reports.
func TestDiscoveryInPIDNamespace(t *testing.T) {
	fixture.RequireNginx(t)
	fixture.RequireRoot(t)
	fixture.RequireCommand(t, "unshare")
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "unshare", "--pid", "--fork", "--mount-proc", "--kill-child",
		os.Args[0], "-test.run", "^TestNamespaceChild$", "-test.count=1", "-test.v")
	cmd.Env = append(os.Environ(), "KW_DISCOVERY_NS_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("child in the PID namespace failed: %v\n%s", err, out)
	}
	var res *nsResult
	sc := bufio.NewScanner(strings.NewReader(string(out)))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "NSRESULT "); ok {
			res = new(nsResult)
			if err := json.Unmarshal([]byte(rest), res); err != nil {
				t.Fatal(err)
			}
		}
	}
	if res == nil {
		t.Fatalf("no result from the child:\n%s", out)
	}
	own, _ := os.Readlink("/proc/self/ns/pid")
	if res.PIDNS == own || res.SelfPID != 1 {
		t.Fatalf("child not in its own PID namespace: %+v (ours %s)", res, own)
	}
	if len(res.Gateways) != 1 || res.Gateways[0].Master.PID != res.FixtureMas ||
		!reflect.DeepEqual(res.Gateways[0].PIDs(), res.FixtureWrk) || res.FixtureMas > 100 {
		t.Errorf("in the namespace: %+v", res)
	}
}

// TestNamespaceChild is TestDiscoveryInPIDNamespace's other half; it does nothing unless
// run by it.
func TestNamespaceChild(t *testing.T) {
	if os.Getenv("KW_DISCOVERY_NS_CHILD") != "1" {
		t.Skip("helper for TestDiscoveryInPIDNamespace")
	}
	fx := fixture.StartT(t, fixture.Options{})
	gs, err := discovery.Scanner{}.Scan()
	if err != nil {
		t.Fatal(err)
	}
	// Only the fixture's nginx exists in this namespace.
	if len(gs) != 1 {
		t.Fatalf("%d gateways in a fresh namespace: %+v", len(gs), gs)
	}
	checkMatches(t, gs[0], fx)
	ws, _ := fx.WorkerPIDs()
	ns, _ := os.Readlink("/proc/self/ns/pid")
	b, _ := json.Marshal(nsResult{SelfPID: os.Getpid(), PIDNS: ns, FixtureMas: fx.MasterPID(), FixtureWrk: ws, Gateways: gs})
	fmt.Printf("NSRESULT %s\n", b)
}

// TestScanWithoutPtraceAccess runs the scanner as an unprivileged user against a root
// nginx, as an agent without CAP_SYS_PTRACE would: the gateway and its workers are still
// found (comm, stat and cmdline are world-readable) but the executable is not, and the
// error says which capability is missing.
func TestScanWithoutPtraceAccess(t *testing.T) {
	fixture.RequireNginx(t)
	fixture.RequireRoot(t)
	fixture.RequireCommand(t, "setpriv")
	fx := fixture.StartT(t, fixture.Options{})
	// The test binary lives in a 0700 build directory: copy it where nobody can run it.
	dir, err := os.MkdirTemp("", "kw-nobody-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	bin := filepath.Join(dir, "discovery.test")
	data, err := os.ReadFile(os.Args[0])
	if err == nil {
		err = os.WriteFile(bin, data, 0o755)
	}
	if err == nil {
		err = os.Chmod(dir, 0o755)
	}
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
		"--inh-caps=-all", "--bounding-set=-all", bin, "-test.run", "^TestScanAsNobodyChild$", "-test.count=1", "-test.v")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "KW_DISCOVERY_NOBODY_CHILD=1",
		fmt.Sprintf("KW_DISCOVERY_EXPECT_MASTER=%d", fx.MasterPID()))
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "--- PASS: TestScanAsNobodyChild") {
		t.Fatalf("unprivileged scan: %v\n%s", err, out)
	}
	t.Logf("child:\n%s", out)
}

// TestScanAsNobodyChild is TestScanWithoutPtraceAccess's other half.
func TestScanAsNobodyChild(t *testing.T) {
	if os.Getenv("KW_DISCOVERY_NOBODY_CHILD") != "1" {
		t.Skip("helper for TestScanWithoutPtraceAccess")
	}
	var master int
	fmt.Sscan(os.Getenv("KW_DISCOVERY_EXPECT_MASTER"), &master)
	gs, err := discovery.Scanner{}.Scan()
	g := find(t, gs, master)
	if len(g.Workers) != 2 || g.ExeIno != 0 || g.Err == nil || !errors.Is(g.Err, fs.ErrPermission) ||
		!strings.Contains(g.Err.Error(), "CAP_SYS_PTRACE") || err == nil {
		t.Fatalf("as uid %d: gateway %+v, scan error %v", os.Getuid(), g, err)
	}
	t.Logf("reported: %v", g.Err)
}
