// The agent's health: readiness, the per-gateway fallback to the wire, panics contained.

package app

import (
	"context"
	"errors"
	"fmt"
	"runtime/debug"
	"strings"
	"time"

	"github.com/kong-watcher/kong-watcher/internal/version"
)

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
