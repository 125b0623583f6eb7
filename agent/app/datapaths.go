// The two data paths the agent can read a gateway through, and which one a gateway gets.

package app

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"time"

	"github.com/go-logr/logr"
	"github.com/kong-watcher/kong-watcher/agent/discovery"
	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/agent/probes"
	"github.com/kong-watcher/kong-watcher/agent/report"
	"github.com/kong-watcher/kong-watcher/agent/wire"
)

// tracer is what both data paths offer: follow gateways, turn kernel events into Requests.
type tracer interface {
	Track(gw discovery.Gateway) error
	Untrack(id discovery.GatewayID)
	SetPIDs(id discovery.GatewayID, pids []int)
	Run(ctx context.Context, sink model.Sink) error
	Close() error
}

// nginxPath is the nginx-request data path (agent/probes) as the agent uses it.
type nginxPath interface {
	tracer
	Status() probes.Status
	SetLuaPhases(on bool) error
	// Failed lists the gateways whose binary the path could not read, with the reason.
	Failed() map[discovery.GatewayID]error
}

// wirePath is the wire data path (agent/wire) as the agent uses it.
type wirePath interface {
	tracer
	Status() wire.Status
}

// exeKey identifies a gateway's executable file (discovery.Gateway's ExeDev, ExeIno).
type exeKey struct{ dev, ino uint64 }

func exeOf(gw discovery.Gateway) exeKey { return exeKey{gw.ExeDev, gw.ExeIno} }

// dataPaths are the data paths' BPF programs, loaded but attached to nothing yet.
type dataPaths struct {
	nginx *probes.Probes // nil when the nginx-request path could not load
	wire  *wire.Tracer   // nil until needed (auto) or when it could not load
}

// loadDataPaths loads the BPF programs cfg.DataPath asks for. An error (a panic in loading
// too) means no data path can work: the agent is then disabled.
func loadDataPaths(cfg Config, log logr.Logger) (dp dataPaths, err error) {
	defer func() {
		if v := recover(); v != nil {
			log.Error(fmt.Errorf("%v", v), "loading the data path panicked (a bug; please report it)", "stack", string(debug.Stack()))
			dp.close()
			dp, err = dataPaths{}, fmt.Errorf("loading the data path failed: %v", v)
		}
	}()
	if cfg.DataPath != DataPathWire {
		// The client address costs two reads per request and only the request log shows it.
		p, err := probes.New(probes.Options{LuaPhases: cfg.LuaPhases == LuaOn, Log: log.WithName("nginx-request"),
			ClientAddr: report.RequestLogEnabled(requestLog(log))})
		if err != nil {
			if cfg.DataPath == DataPathNginx {
				return dp, fmt.Errorf("nginx-request data path: %w", err)
			}
			log.Error(err, "the nginx-request data path cannot load; falling back to the wire data path (HTTP/1 only, costlier)")
		} else {
			dp.nginx = p
		}
	}
	if cfg.DataPath == DataPathWire || dp.nginx == nil {
		w, err := newWire(log)
		if err != nil {
			dp.close()
			return dataPaths{}, err
		}
		dp.wire = w
	}
	return dp, nil
}

func newWire(log logr.Logger) (*wire.Tracer, error) {
	w, err := wire.New(wire.Options{Log: log.WithName("wire"), TLS: true})
	if err != nil {
		return nil, fmt.Errorf("wire data path: %w", err)
	}
	return w, nil
}

func (dp dataPaths) close() {
	if dp.nginx != nil {
		dp.nginx.Close()
	}
	if dp.wire != nil {
		dp.wire.Close()
	}
}

func (a *Agent) loadWire() error {
	if a.wire != nil {
		return nil
	}
	if a.wireErr != nil {
		return a.wireErr
	}
	w, err := newWire(a.log)
	if err != nil {
		a.wireErr = err
		return err
	}
	a.wire = w
	if a.runCtx != nil {
		go a.runTracer(a.runCtx, DataPathWire, w)
	}
	return nil
}

func (a *Agent) tracerFor(path string) tracer {
	if path == DataPathNginx {
		return a.nginx
	}
	return a.wire
}

// attach follows gw on the best data path available and tells the Notifier; called with a.mu held.
func (a *Agent) attach(gw discovery.Gateway) *tracked {
	t := a.attachPath(gw)
	if n := a.opts.Notify; n != nil {
		if t.path != "" {
			n.ProbesAttached(gw, t.path)
		} else {
			n.ProbeAttachFailed(gw, t.err)
		}
	}
	return t
}

func (a *Agent) attachPath(gw discovery.Gateway) *tracked {
	t := &tracked{gw: gw, since: time.Now()}
	if a.nginx != nil && a.nginxFailed[exeOf(gw)] == nil {
		err := a.nginx.Track(gw)
		if err == nil {
			t.path = DataPathNginx
			a.log.Info("probes attached", "dataPath", DataPathNginx, "masterPID", gw.Master.PID, "pids", gw.PIDs())
			return t
		}
		t.err = err
		if a.cfg.DataPath == DataPathNginx {
			a.log.Error(err, "cannot attach the nginx-request probes", "masterPID", gw.Master.PID)
			return t
		}
		a.log.Error(err, "cannot attach the nginx-request probes; falling back to the wire data path for this gateway", "masterPID", gw.Master.PID)
	}
	if err := a.loadWire(); err != nil {
		t.err = errors.Join(t.err, err)
		a.log.Error(err, "no data path can follow this gateway: its requests are NOT counted", "masterPID", gw.Master.PID)
		return t
	}
	if err := a.wire.Track(gw); err != nil {
		t.err = errors.Join(t.err, err)
		a.log.Error(err, "cannot attach the wire probes: this gateway's requests are NOT counted", "masterPID", gw.Master.PID)
		return t
	}
	t.path = DataPathWire
	t.err = nil
	a.log.Info("probes attached", "dataPath", DataPathWire, "masterPID", gw.Master.PID, "pids", gw.PIDs())
	return t
}
