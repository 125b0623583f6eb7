package app

import (
	"context"
	"errors"
	"slices"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kong-watcher/kong-watcher/agent/aggregate"
	"github.com/kong-watcher/kong-watcher/agent/discovery"
	"github.com/kong-watcher/kong-watcher/agent/listeners"
	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/agent/report"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/internal/version"
)

// Notifier hears what the agent finds and attaches (the Kubernetes reporter turns it into
// Events). Its methods are called with the agent's lock held: they must not block.
type Notifier interface {
	KongDetected(gw discovery.Gateway)
	ProbesAttached(gw discovery.Gateway, dataPath string)
	ProbeAttachFailed(gw discovery.Gateway, err error)
}

// Options are what an Agent is given besides its Config.
type Options struct {
	// Notify hears gateway detection and probe attachment; nil: nobody does.
	Notify Notifier
	// WindowClosed, when set, is told (without waiting) each time a stats window closes:
	// the Kubernetes reporter judges each window once, paced by it.
	WindowClosed chan<- struct{}
}

// Agent is one running agent: its pipeline and what it currently follows.
type Agent struct {
	cfg  Config
	log  logr.Logger
	opts Options

	// disabled is why no data path could load: the agent then counts nothing, says why
	// (the log, Ready, a ProbeAttachFailed Event) and serves its endpoints all the same.
	disabled error

	Aggregator *aggregate.Aggregator
	Registry   *prometheus.Registry
	metrics    *report.Metrics
	sink       model.Sink
	namer      *namer // the sink's first stage

	nginx nginxPath // nil when the nginx-request path could not load
	wire  wirePath  // nil until needed (auto) or when it could not load

	mu       sync.Mutex
	gateways map[discovery.GatewayID]*tracked
	// nginxFailed holds the executables the nginx-request path could not read (no request
	// layout learnt), with the reason: their gateways are followed on the wire, and so is
	// any gateway running one of them later. Other executables keep the request path.
	nginxFailed map[exeKey]error
	wireErr     error
	runCtx      context.Context
	// fault is a panic recovered in one of the agent's goroutines: what it did is no longer
	// done (Ready says so), but the process stays up, as for any other monitoring fault.
	fault error
	// What has already been added to the aggregator and the metrics of the data paths'
	// cumulative counters (they report totals; the sinks take increments).
	seenDropped, seenDecodeErrs, seenGivenUp uint64
	lastDataPath                             string
}

type tracked struct {
	gw    discovery.Gateway
	since time.Time // when it was first attached
	path  string    // DataPathNginx or DataPathWire; "" when attaching failed
	err   error
}

// newAgent is the agent following gateways on dp, or, when disabled is set, the agent that
// counts nothing and says why.
func newAgent(cfg Config, log logr.Logger, dp dataPaths, disabled error, o Options) *Agent {
	a := newPipeline(cfg, log, o)
	// Assigned only when set: a nil pointer in an interface would not compare equal to nil.
	if dp.nginx != nil {
		a.nginx = dp.nginx
	}
	if dp.wire != nil {
		a.wire = dp.wire
	}
	a.disabled = disabled
	return a
}

// newPipeline builds what follows the data paths: the aggregator, the metrics and the
// request logger behind one sink.
func newPipeline(cfg Config, log logr.Logger, o Options) *Agent {
	a := &Agent{cfg: cfg, log: log, opts: o, gateways: map[discovery.GatewayID]*tracked{}, nginxFailed: map[exeKey]error{}}
	a.Aggregator = aggregate.New(aggregate.Options{MaxHosts: cfg.MaxHosts, MaxPaths: cfg.MaxPaths})
	a.Registry = report.NewRegistry()
	a.metrics = report.NewMetrics(report.MetricsOptions{MaxHosts: cfg.MaxHosts, MaxPaths: cfg.MaxPaths, NativeHistograms: cfg.NativeHistograms})
	if err := a.metrics.Register(a.Registry); err != nil {
		// A bug (two metrics of one name): the agent counts on and serves the others.
		log.Error(err, "registering metrics")
	}
	a.metrics.SetInfo(version.Version, "")
	// Debug lines are capped per second: at Kong's rates one line per request would cost
	// more than the probes; the overflow is counted in one line per second.
	reqLog := report.NewRequestLogger(requestLog(log), report.RequestLogOptions{MaxPerSecond: 1000})
	sinks := fanout{a.Aggregator, a.metrics}
	if reqLog.Enabled() {
		sinks = append(sinks, reqLog)
	}
	a.namer = newNamer(sinks, cfg.ProcRoot, cfg.Listeners)
	a.sink = a.namer
	if cfg.Listeners != nil {
		log.Info("listener names set by "+v1alpha1.EnvListeners, "listeners", cfg.Listeners.String())
	}
	return a
}

// Close detaches every probe and frees the BPF objects.
func (a *Agent) Close() {
	if a.nginx != nil {
		a.nginx.Close()
	}
	if a.wire != nil {
		a.wire.Close()
	}
}

// Stats is the current Stats document (its dataPath is kept current by updateHealthLocked,
// which runs after every gateway change); a disabled agent's has nothing in it.
func (a *Agent) Stats() v1alpha1.Stats {
	if a.disabled != nil {
		return v1alpha1.Stats{APIVersion: v1alpha1.StatsAPIVersion, Kind: v1alpha1.StatsKind}
	}
	return a.Aggregator.Snapshot()
}

// Run follows gateways, feeds the pipeline and closes a stats window every StatsInterval
// until ctx is done. It returns an error only when following them failed (a recovered
// panic); the caller should stay up all the same. A disabled agent's Run returns at once.
func (a *Agent) Run(ctx context.Context) (err error) {
	if a.disabled != nil {
		return nil
	}
	goSafe(a.log, "the stats log", func() { a.statsLoop(ctx) })
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	defer func() {
		if v := recover(); v != nil {
			err = a.panicked("gateway discovery", v)
		}
	}()
	a.mu.Lock()
	a.runCtx = ctx
	a.mu.Unlock()
	if a.nginx != nil {
		go a.runTracer(ctx, DataPathNginx, a.nginx)
	}
	if a.wire != nil {
		go a.runTracer(ctx, DataPathWire, a.wire)
	}
	go a.healthLoop(ctx)
	if a.nginx != nil && a.cfg.LuaPhases == LuaSampled {
		go a.sampleLua(ctx)
	}

	scanner := discovery.Scanner{ProcRoot: a.cfg.ProcRoot, Name: a.cfg.ProcessName}
	if gws, err := scanner.Scan(); err == nil && len(gws) == 0 {
		a.log.Info("no gateway process found yet; waiting for it", "processName", a.cfg.ProcessName, "procRoot", a.cfg.ProcRoot)
	} else if err != nil {
		a.log.Error(err, "cannot scan for gateway processes; retrying", "procRoot", a.cfg.ProcRoot)
	}
	discovery.Watch(ctx, scanner, a.cfg.ScanInterval, a.onEvent)
	return nil
}

func (a *Agent) runTracer(ctx context.Context, name string, t tracer) {
	defer a.recoverIn("the " + name + " data path")
	if err := t.Run(ctx, a.sink); err != nil && !errors.Is(err, context.Canceled) {
		a.log.Error(err, "data path stopped reading events", "dataPath", name)
	}
}

func (a *Agent) onEvent(ev discovery.Event) {
	a.mu.Lock()
	defer a.mu.Unlock()
	gw := ev.Gateway
	id := gw.ID()
	if len(a.cfg.OnlyMasterPIDs) > 0 && !slices.Contains(a.cfg.OnlyMasterPIDs, gw.Master.PID) {
		return
	}
	switch ev.Kind {
	case discovery.Added:
		a.log.Info("gateway detected", "masterPID", gw.Master.PID, "workers", len(gw.Workers), "exe", gw.Exe)
		if a.opts.Notify != nil {
			a.opts.Notify.KongDetected(gw)
		}
		a.nameListeners(gw)
		a.gateways[id] = a.attach(gw)
	case discovery.Changed:
		if !a.namer.tracks(id) {
			a.nameListeners(gw)
		}
		a.namer.update(gw)
		if t, ok := a.gateways[id]; ok && t.path != "" {
			t.gw = gw
			a.tracerFor(t.path).SetPIDs(id, gw.PIDs())
			a.log.Info("gateway workers changed", "masterPID", gw.Master.PID, "workers", len(gw.Workers))
		} else {
			a.gateways[id] = a.attach(gw) // not followed yet: a retry on every change
		}
	case discovery.Removed:
		if t, ok := a.gateways[id]; ok && t.path != "" {
			a.tracerFor(t.path).Untrack(id)
		}
		delete(a.gateways, id)
		a.namer.untrack(id)
		a.log.Info("gateway gone", "masterPID", gw.Master.PID)
	}
	a.updateHealthLocked()
}

// nameListeners learns the names of gw's listeners (unless KONG_WATCHER_LISTENERS names
// them), before its probes are attached, so that its first requests are named too.
func (a *Agent) nameListeners(gw discovery.Gateway) {
	if a.cfg.Listeners != nil {
		a.namer.track(gw, *a.cfg.Listeners)
		return
	}
	set, errs := listeners.Learn(a.cfg.ProcRoot, gw.Master.PID, gw.Master.Title)
	for _, err := range errs {
		a.log.Info("listener names: "+err.Error(), "masterPID", gw.Master.PID)
	}
	names := set.String()
	if names == "" {
		names = "every TCP listener is the proxy"
	}
	a.log.Info("listener names", "masterPID", gw.Master.PID, "source", set.Source, "listeners", names)
	a.namer.track(gw, set)
}

// sampleLua switches the Lua phase probes on for LuaSampleFor every LuaSampleEvery. Timing
// every Lua handler call costs 2 probe hits per call plus one per request (docs/design.md);
// a duty-cycled sample gives the per-phase distribution at a few percent of that cost, and
// the request counts never depend on it.
func (a *Agent) sampleLua(ctx context.Context) {
	defer a.recoverIn("Lua phase sampling")
	t := time.NewTicker(a.cfg.LuaSampleEvery)
	defer t.Stop()
	warned := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if err := a.nginx.SetLuaPhases(true); err != nil {
			if !warned {
				a.log.Info("Lua phase timing unavailable; request statistics are unaffected", "reason", err.Error())
				warned = true
			}
			continue
		}
		select {
		case <-ctx.Done():
		case <-time.After(a.cfg.LuaSampleFor):
		}
		if err := a.nginx.SetLuaPhases(false); err != nil {
			a.log.Error(err, "cannot switch Lua phase timing off")
		}
	}
}

// statsLoop closes a stats window every StatsInterval: it logs the window's stats line and
// tells WindowClosed, without waiting for the reporter (it judges the window when it can).
func (a *Agent) statsLoop(ctx context.Context) {
	every(ctx, a.cfg.StatsInterval, func() {
		a.Aggregator.Rotate()
		a.log.Info("traffic stats", report.StatsLine(a.Stats())...)
		select {
		case a.opts.WindowClosed <- struct{}{}:
		default:
		}
	})
}

// every calls fn every d until ctx ends.
func every(ctx context.Context, d time.Duration, fn func()) {
	t := time.NewTicker(d)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		fn()
	}
}

// fanout hands each Request to every sink in turn.
type fanout []model.Sink

func (f fanout) Observe(r *model.Request) {
	for _, s := range f {
		s.Observe(r)
	}
}

// requestLog is the logger of the per-request log: the pipeline's sink writes to it, and the
// data paths read what only it shows when it is on.
func requestLog(log logr.Logger) logr.Logger { return log.WithName("request") }
