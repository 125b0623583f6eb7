package app

import (
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
	"github.com/kong-watcher/kong-watcher/agent/listeners"
	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/agent/pathnorm"
)

// namer is the pipeline's first stage: it names each request's listener (model.Request's
// Listener) with the names of the gateway whose process served it, and its route (Route,
// once for the aggregator and the metrics), then hands it on.
type namer struct {
	next     model.Sink
	procRoot string
	// override names every gateway's listeners (KONG_WATCHER_LISTENERS); nil: each
	// gateway's own, learnt when it is detected.
	override *listeners.Set

	mu       sync.Mutex
	gateways map[discovery.GatewayID]*namedGateway
	byPID    map[int]listeners.Set // every tracked gateway's master and workers
	// adopted holds PIDs not (yet) in byPID, named through their parent: workers a reload
	// or a crash forked since discovery's last scan. Emptied whenever byPID is rebuilt.
	adopted map[int]listeners.Set

	// routeMu guards route, the buffer of the request being handed on (data paths may run
	// side by side; the reporters after this stage serialise them anyway).
	routeMu sync.Mutex
	route   []byte
}

type namedGateway struct {
	gw  discovery.Gateway
	set listeners.Set
}

// maxAdopted bounds namer.adopted between two scans.
const maxAdopted = 1024

func newNamer(next model.Sink, procRoot string, override *listeners.Set) *namer {
	return &namer{next: next, procRoot: procRoot, override: override,
		gateways: map[discovery.GatewayID]*namedGateway{}, byPID: map[int]listeners.Set{}, adopted: map[int]listeners.Set{}}
}

func (n *namer) Observe(r *model.Request) {
	r.Listener = n.setOf(r.PID).Name(r.LocalPort, r.UnixListener, r.ListenerKnown)
	n.routeMu.Lock()
	r.Route = pathnorm.AppendCut(n.route[:0], r.URI, r.URITruncated)
	n.next.Observe(r)
	n.route, r.Route = r.Route, nil
	n.routeMu.Unlock()
}

// setOf returns the names of the gateway process pid belongs to: its own gateway's, or its
// parent's (a worker forked since the last scan), or, with a single gateway, that one's.
// A process of no known gateway is named as a plain nginx's.
func (n *namer) setOf(pid int) listeners.Set {
	if n.override != nil {
		return *n.override
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	if s, ok := n.byPID[pid]; ok {
		return s
	}
	if s, ok := n.adopted[pid]; ok {
		return s
	}
	s, ok := listeners.Nginx, false
	if b, err := os.ReadFile(filepath.Join(n.procRoot, strconv.Itoa(pid), "stat")); err == nil {
		if st, err := discovery.ParseStat(b); err == nil {
			s, ok = n.byPID[st.PPID]
		}
	}
	if !ok && len(n.gateways) == 1 {
		for _, g := range n.gateways {
			s = g.set
		}
	}
	if len(n.adopted) < maxAdopted {
		n.adopted[pid] = s
	}
	return s
}

// track names gw's listeners with set and follows its processes.
func (n *namer) track(gw discovery.Gateway, set listeners.Set) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.gateways[gw.ID()] = &namedGateway{gw: gw, set: set}
	n.rebuildLocked()
}

// update follows a tracked gateway's new processes (workers changed).
func (n *namer) update(gw discovery.Gateway) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if g, ok := n.gateways[gw.ID()]; ok {
		g.gw = gw
		n.rebuildLocked()
	}
}

func (n *namer) untrack(id discovery.GatewayID) {
	n.mu.Lock()
	defer n.mu.Unlock()
	delete(n.gateways, id)
	n.rebuildLocked()
}

// tracks reports whether gw's listeners are named already.
func (n *namer) tracks(id discovery.GatewayID) bool {
	n.mu.Lock()
	defer n.mu.Unlock()
	_, ok := n.gateways[id]
	return ok
}

func (n *namer) rebuildLocked() {
	clear(n.byPID)
	clear(n.adopted)
	for _, g := range n.gateways {
		n.byPID[g.gw.Master.PID] = g.set
		for _, w := range g.gw.Workers {
			n.byPID[w.PID] = g.set
		}
	}
}
