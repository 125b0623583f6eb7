package discovery

import (
	"context"
	"time"
)

// DefaultInterval is how often Watch rescans /proc when given no interval. A scan rereads
// one small comm file per process through a descriptor kept open, so once a second is
// cheap.
const DefaultInterval = time.Second

// EventKind says what happened to a gateway.
type EventKind int

const (
	// Added: a gateway (master) appeared, or was already running when Watch started.
	Added EventKind = iota + 1
	// Changed: the gateway's workers changed (reload, a worker respawned after a crash, a
	// retired worker exited) or its executable became identifiable or not.
	Changed
	// Removed: the master is gone. Event.Gateway is the last state seen.
	Removed
)

func (k EventKind) String() string {
	switch k {
	case Added:
		return "Added"
	case Changed:
		return "Changed"
	case Removed:
		return "Removed"
	}
	return "EventKind(?)"
}

// Event is one change seen by Watch.
type Event struct {
	Kind    EventKind
	Gateway Gateway
}

// Watch scans s every interval (DefaultInterval when interval <= 0) and calls fn, from the
// calling goroutine, for each gateway added, changed or removed since the previous scan,
// gateways being told apart by GatewayID (master PID + start time, so a restarted gateway
// that reuses the PID is Removed then Added). The first scan reports every running
// gateway as Added. Within one scan, Removed events come first, then Changed, then Added.
// A scan that cannot read ProcRoot at all is skipped (nothing is reported Removed).
// Watch returns when ctx is done.
//
// Between scans Watch keeps files under a procfs ProcRoot open: one per process, three
// per process named s.Name, at most a quarter of RLIMIT_NOFILE (and 8192) in all. They are
// closed as their processes exit, and all of them when Watch returns.
//
// While a gateway has no workers yet (its master was caught before forking them, or it is
// restarting them), Watch rescans every FastInterval instead, for at most FastFor: requests
// served by a worker the kernel filter does not know yet are not seen, so that window must
// stay short; but a gateway that never has workers (master_process off, a master whose
// workers are gone) must not keep the agent scanning ten times a second for good.
func Watch(ctx context.Context, s Scanner, interval time.Duration, fn func(Event)) {
	if interval <= 0 {
		interval = DefaultInterval
	}
	c := newProcCache(s)
	defer c.close()
	known := map[GatewayID]Gateway{}
	noWorkers := map[GatewayID]time.Time{} // since when each gateway has had no workers
	for {
		if gws, err := c.scan(); err == nil || gws != nil {
			known = diff(known, gws, fn)
		}
		next := interval
		now := time.Now()
		for id, g := range known {
			if len(g.Workers) > 0 {
				delete(noWorkers, id)
				continue
			}
			since, ok := noWorkers[id]
			if !ok {
				since = now
				noWorkers[id] = now
			}
			if now.Sub(since) < FastFor && FastInterval < next {
				next = FastInterval
			}
		}
		for id := range noWorkers {
			if _, ok := known[id]; !ok {
				delete(noWorkers, id)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(next):
		}
	}
}

// FastInterval is Watch's rescan interval while a gateway has no workers, for at most
// FastFor from when it was first seen without them.
const (
	FastInterval = 100 * time.Millisecond
	FastFor      = 10 * time.Second
)

// diff reports the differences between the previous and the current scan and returns the
// new state.
func diff(prev map[GatewayID]Gateway, cur []Gateway, fn func(Event)) map[GatewayID]Gateway {
	next := make(map[GatewayID]Gateway, len(cur))
	for _, g := range cur {
		next[g.ID()] = g
	}
	// Removed, in master PID order for deterministic output.
	var gone []Gateway
	for id, g := range prev {
		if _, ok := next[id]; !ok {
			gone = append(gone, g)
		}
	}
	sortGateways(gone)
	for _, g := range gone {
		fn(Event{Kind: Removed, Gateway: g})
	}
	for _, g := range cur { // cur is sorted by Scan
		if old, ok := prev[g.ID()]; ok && changed(old, g) {
			fn(Event{Kind: Changed, Gateway: g})
		}
	}
	for _, g := range cur {
		if _, ok := prev[g.ID()]; !ok {
			fn(Event{Kind: Added, Gateway: g})
		}
	}
	return next
}

func changed(a, b Gateway) bool {
	if a.ExeDev != b.ExeDev || a.ExeIno != b.ExeIno || (a.Err == nil) != (b.Err == nil) ||
		len(a.Workers) != len(b.Workers) || a.Master.Title != b.Master.Title {
		return true
	}
	for i := range a.Workers {
		x, y := a.Workers[i], b.Workers[i]
		if x.PID != y.PID || x.StartTime != y.StartTime || x.ShuttingDown != y.ShuttingDown {
			return true
		}
	}
	return false
}

func sortGateways(gs []Gateway) {
	for i := 1; i < len(gs); i++ {
		for j := i; j > 0 && gs[j].Master.PID < gs[j-1].Master.PID; j-- {
			gs[j], gs[j-1] = gs[j-1], gs[j]
		}
	}
}
