package app

import (
	"context"
	"errors"
	"slices"
	"testing"

	"github.com/go-logr/logr"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/agent/probes"
	"github.com/kong-watcher/kong-watcher/agent/wire"
)

// fakePath records what the agent asks of a data path.
type fakePath struct {
	tracked   []discovery.GatewayID
	untracked []discovery.GatewayID
}

func (f *fakePath) Track(gw discovery.Gateway) error {
	f.tracked = append(f.tracked, gw.ID())
	return nil
}
func (f *fakePath) Untrack(id discovery.GatewayID) {
	f.untracked = append(f.untracked, id)
	f.tracked = slices.DeleteFunc(f.tracked, func(t discovery.GatewayID) bool { return t == id })
}
func (f *fakePath) SetPIDs(discovery.GatewayID, []int)    {}
func (f *fakePath) Run(context.Context, model.Sink) error { return nil }
func (f *fakePath) Close() error                          { return nil }

func (f *fakePath) tracks(id discovery.GatewayID) bool { return slices.Contains(f.tracked, id) }

// fakeNginx is the nginx-request path; failed says which gateways' executables it gave up on.
type fakeNginx struct {
	fakePath
	failed map[discovery.GatewayID]error
}

func (f *fakeNginx) Status() probes.Status                 { return probes.Status{} }
func (f *fakeNginx) SetLuaPhases(bool) error               { return nil }
func (f *fakeNginx) Failed() map[discovery.GatewayID]error { return f.failed }

func (f *fakeNginx) Untrack(id discovery.GatewayID) {
	f.fakePath.Untrack(id)
	delete(f.failed, id)
}

type fakeWire struct{ fakePath }

func (f *fakeWire) Status() wire.Status { return wire.Status{} }

// gatewayOf is a gateway of master pid running the executable numbered ino.
func gatewayOf(pid int, ino uint64) discovery.Gateway {
	return discovery.Gateway{Master: discovery.Process{PID: pid, Title: "nginx: master process"},
		Workers: []discovery.Process{{PID: pid + 1}}, Exe: "/bin/nginx", ExeDev: 1, ExeIno: ino}
}

// TestPerGatewayFallback: when the nginx-request path cannot read one executable, only the
// gateways running it move to the wire; a gateway of another executable keeps the request
// path, and so do later gateways of other executables, while later gateways of the failed
// one go to the wire at once.
func TestPerGatewayFallback(t *testing.T) {
	nginx, wr := &fakeNginx{}, &fakeWire{}
	a := newPipeline(Config{DataPath: DataPathAuto}, logr.Discard(), Options{})
	a.nginx, a.wire = nginx, wr
	bad, good, badToo := gatewayOf(100, 1), gatewayOf(200, 2), gatewayOf(300, 1)
	a.mu.Lock()
	for _, gw := range []discovery.Gateway{bad, good, badToo} {
		a.gateways[gw.ID()] = a.attach(gw)
	}
	a.mu.Unlock()
	for _, gw := range []discovery.Gateway{bad, good, badToo} {
		if p := a.gateways[gw.ID()].path; p != DataPathNginx {
			t.Fatalf("gateway %d on %q before the failure, want %s", gw.Master.PID, p, DataPathNginx)
		}
	}

	// The executable of bad and badToo: no layout learnt.
	why := errors.New("/bin/nginx: no nginx request layout after 200 requests")
	nginx.failed = map[discovery.GatewayID]error{bad.ID(): why, badToo.ID(): why}
	a.checkHealth()

	want := map[int]string{100: DataPathWire, 200: DataPathNginx, 300: DataPathWire}
	for _, gw := range []discovery.Gateway{bad, good, badToo} {
		if p := a.gateways[gw.ID()].path; p != want[gw.Master.PID] {
			t.Errorf("gateway %d on %q after the failure, want %s", gw.Master.PID, p, want[gw.Master.PID])
		}
	}
	if nginx.tracks(bad.ID()) || nginx.tracks(badToo.ID()) || !nginx.tracks(good.ID()) {
		t.Errorf("nginx-request path follows %v, want only %v", nginx.tracked, good.ID())
	}
	if slices.Contains(nginx.untracked, good.ID()) {
		t.Errorf("the healthy gateway was untracked from the nginx-request path")
	}
	if !wr.tracks(bad.ID()) || !wr.tracks(badToo.ID()) || wr.tracks(good.ID()) {
		t.Errorf("wire path follows %v, want %v and %v", wr.tracked, bad.ID(), badToo.ID())
	}
	if dp := a.Aggregator.Snapshot().DataPath; dp != DataPathNginx+"+"+DataPathWire {
		t.Errorf("dataPath %q", dp)
	}

	// A second health check changes nothing.
	a.checkHealth()
	if len(nginx.untracked) != 2 {
		t.Errorf("untracked %v, want the two failed gateways once", nginx.untracked)
	}

	// New gateways: the failed executable's goes to the wire, another's to the request path.
	later, other := gatewayOf(400, 1), gatewayOf(500, 3)
	a.mu.Lock()
	a.gateways[later.ID()] = a.attach(later)
	a.gateways[other.ID()] = a.attach(other)
	a.mu.Unlock()
	if p := a.gateways[later.ID()].path; p != DataPathWire || nginx.tracks(later.ID()) {
		t.Errorf("new gateway of the failed executable on %q", p)
	}
	if p := a.gateways[other.ID()].path; p != DataPathNginx {
		t.Errorf("new gateway of another executable on %q, want %s", p, DataPathNginx)
	}
}
