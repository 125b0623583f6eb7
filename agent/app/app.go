package app

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/kong-watcher/kong-watcher/agent/aggregate"
	"github.com/kong-watcher/kong-watcher/agent/discovery"
	"github.com/kong-watcher/kong-watcher/agent/listeners"
	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/agent/probes"
	"github.com/kong-watcher/kong-watcher/agent/report"
	"github.com/kong-watcher/kong-watcher/agent/wire"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/internal/version"
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

// exeKey identifies a gateway's executable file (discovery.Gateway's ExeDev, ExeIno).
type exeKey struct{ dev, ino uint64 }

func exeOf(gw discovery.Gateway) exeKey { return exeKey{gw.ExeDev, gw.ExeIno} }

type tracked struct {
	gw    discovery.Gateway
	since time.Time // when it was first attached
	path  string    // DataPathNginx or DataPathWire; "" when attaching failed
	err   error
}

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
		// The client address costs two reads per request and only the per-request log
		// (debug level) shows it.
		p, err := probes.New(probes.Options{LuaPhases: cfg.LuaPhases == LuaOn, Log: log.WithName("nginx-request"),
			ClientAddr: log.WithName("request").V(1).Enabled()})
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
	a.metrics = report.NewMetrics(report.MetricsOptions{MaxHosts: cfg.MaxHosts, MaxPaths: cfg.MaxPaths})
	if err := a.metrics.Register(a.Registry); err != nil {
		// A bug (two metrics of one name): the agent counts on and serves the others.
		log.Error(err, "registering metrics")
	}
	a.metrics.SetInfo(version.Version, "")
	// Debug lines are capped per second: at Kong's rates one line per request would cost
	// more than the probes; the overflow is counted in one line per second.
	reqLog := report.NewRequestLogger(log.WithName("request"), report.RequestLogOptions{MaxPerSecond: 1000})
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

// Close detaches every probe and frees the BPF objects.
func (a *Agent) Close() {
	if a.nginx != nil {
		a.nginx.Close()
	}
	if a.wire != nil {
		a.wire.Close()
	}
}

// Ready reports whether probes are attached to at least one gateway, and if not, why.
func (a *Agent) Ready() (bool, string) {
	if a.disabled != nil {
		return false, "the agent cannot start: " + a.disabled.Error()
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.fault != nil {
		return false, a.fault.Error()
	}
	if len(a.gateways) == 0 {
		return false, fmt.Sprintf("no %q process found yet", a.cfg.ProcessName)
	}
	var last error
	for _, t := range a.gateways {
		if t.path != "" && !waitingForWorkers(t) {
			return true, "probes attached (" + t.path + ")"
		}
		if t.path != "" {
			last = errors.New("the gateway's master has not started its workers yet")
		} else {
			last = t.err
		}
	}
	return false, fmt.Sprintf("probes not attached to a serving gateway: %v", last)
}

// waitingForWorkers: an nginx master that has not forked its workers yet serves nothing;
// ready would be a lie until the workers are in the kernel filter. A master caught before it
// set its title looks like a single-process nginx, so that one must stay alone a while too.
func waitingForWorkers(t *tracked) bool {
	if len(t.gw.Workers) > 0 {
		return false
	}
	return strings.Contains(t.gw.Master.Title, "master process") || time.Since(t.since) < 2*time.Second
}

// dataPathLocked says which data path serves the gateways ("nginx-request", "wire", or
// both); updateHealthLocked hands it to the aggregator and the info metric.
func (a *Agent) dataPathLocked() string {
	seen := map[string]bool{}
	for _, t := range a.gateways {
		if t.path != "" {
			seen[t.path] = true
		}
	}
	switch {
	case seen[DataPathNginx] && seen[DataPathWire]:
		return DataPathNginx + "+" + DataPathWire
	case seen[DataPathNginx]:
		return DataPathNginx
	case seen[DataPathWire]:
		return DataPathWire
	}
	return ""
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

// healthLoop publishes the data paths' health to Prometheus and moves a gateway to the wire
// when the nginx-request path gives up on its executable (no request layout learnt there).
func (a *Agent) healthLoop(ctx context.Context) {
	defer a.recoverIn("the health loop")
	every(ctx, time.Second, a.checkHealth)
}

func (a *Agent) checkHealth() {
	a.mu.Lock()
	defer a.mu.Unlock() // deferred: a panic must not leave the lock held
	if a.nginx != nil && a.cfg.DataPath == DataPathAuto {
		for id, err := range a.nginx.Failed() {
			t, ok := a.gateways[id]
			if !ok || t.path != DataPathNginx {
				continue
			}
			a.nginxFailed[exeOf(t.gw)] = err
			a.log.Error(err, "the nginx-request data path cannot read this gateway's requests; moving it to the wire data path (with every gateway of its executable; other executables keep the nginx-request path)",
				"masterPID", t.gw.Master.PID, "exe", t.gw.Exe)
			a.nginx.Untrack(id)
			a.gateways[id] = a.attach(t.gw)
		}
	}
	a.updateHealthLocked()
}

// recoverIn, deferred at the top of the agent's goroutines, turns a panic into a logged
// fault: a monitoring bug must not take the process down, since a sidecar that exits makes
// Kong's pod NotReady while it restarts.
func (a *Agent) recoverIn(what string) {
	if v := recover(); v != nil {
		a.panicked(what, v)
	}
}

func (a *Agent) panicked(what string, v any) error {
	err := fmt.Errorf("%s failed (a bug; please report it): %v", what, v)
	a.log.Error(err, "the agent stays up, but this part of it stopped", "stack", string(debug.Stack()))
	a.mu.Lock()
	if a.fault == nil {
		a.fault = err
	}
	a.mu.Unlock()
	return err
}

func (a *Agent) updateHealthLocked() {
	var dropped, decodeErrs uint64
	attached := 0
	pids := 0
	for _, t := range a.gateways {
		if t.path != "" {
			attached++
			pids += len(t.gw.PIDs())
		}
	}
	probesAttached := 0
	if a.nginx != nil {
		st := a.nginx.Status()
		dropped += st.Dropped
		decodeErrs += st.DecodeErrors
		probesAttached += st.AttachedBinaries
	}
	if a.wire != nil {
		st := a.wire.Status()
		// Requests the wire parser read but had to give up with their connection are lost
		// like events the ring buffer could not hold.
		dropped += st.Dropped + st.Lost
		decodeErrs += st.ParseErrors + st.BadRecords
		probesAttached += len(st.Probes)
		a.metrics.SetWireBuffered(st.Buffered)
		if givenUp := st.OverBudget + st.HeadTimeouts; givenUp > a.seenGivenUp {
			a.metrics.AddWireGivenUp(givenUp - a.seenGivenUp)
			a.seenGivenUp = givenUp
		}
	}
	if dropped > a.seenDropped {
		a.Aggregator.AddDropped(dropped - a.seenDropped)
		a.metrics.AddEventsDropped(dropped - a.seenDropped)
		a.seenDropped = dropped
	}
	if decodeErrs > a.seenDecodeErrs {
		a.metrics.AddDecodeErrors(decodeErrs - a.seenDecodeErrs)
		a.seenDecodeErrs = decodeErrs
	}
	a.metrics.SetProbesAttached(probesAttached)
	a.metrics.SetProcessesTracked(pids)
	if dp := a.dataPathLocked(); dp != a.lastDataPath {
		a.metrics.SetInfo(version.Version, dp)
		a.Aggregator.SetDataPath(dp)
		a.lastDataPath = dp
	}
}

// fanout hands each Request to every sink in turn.
type fanout []model.Sink

func (f fanout) Observe(r *model.Request) {
	for _, s := range f {
		s.Observe(r)
	}
}
