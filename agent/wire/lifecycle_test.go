package wire

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr/testr"
	"github.com/kong-watcher/kong-watcher/agent/kernel"
)

// TestIntegrationPerfEventFallback attaches through perf-event uprobes, the path taken where
// uprobe_multi is missing (kernels < 6.6).
func TestIntegrationPerfEventFallback(t *testing.T) {
	havePrereqs(t, "nginx")
	ng := startNginx(t)
	tr, err := New(Options{Log: testr.New(t), ForcePerfEvent: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tr.Close() })
	if err := tr.Track(ng.gateway(t)); err != nil {
		t.Fatal(err)
	}
	if m := tr.Status().Mode; m != kernel.ModePerf {
		t.Fatalf("mode %q", m)
	}
	col := runTracer(t, tr)
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
	tr := newTracer(t)
	gw := ng.gateway(t)
	if err := tr.Track(gw); err != nil {
		t.Fatal(err)
	}
	col := runTracer(t, tr)
	base := fmt.Sprintf("http://127.0.0.1:%d", ng.plain)
	waitFor(t, col, getOK(t, base, "before", 3))

	if err := ng.Reload(); err != nil {
		t.Fatal(err)
	}
	fresh, err := ng.WorkerPIDs()
	if err != nil || len(fresh) != 2 || slices.Contains(fresh, ng.workers[0]) || slices.Contains(fresh, ng.workers[1]) {
		t.Fatalf("workers %v after the reload, %v before (%v)", fresh, ng.workers, err)
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
