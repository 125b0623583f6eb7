package probes

import (
	"fmt"

	"github.com/cilium/ebpf/link"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
	"github.com/kong-watcher/kong-watcher/agent/kernel"
	"github.com/kong-watcher/kong-watcher/agent/nginxlayout"
	"github.com/kong-watcher/kong-watcher/bpf"
)

// Track starts watching a gateway: attaches to its executable unless a gateway using the
// same file is already tracked, and puts its PIDs into the kernel's process filter.
func (p *Probes) Track(gw discovery.Gateway) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	id := gw.ID()
	if g, ok := p.gws[id]; ok {
		g.gw = gw
		return p.setPIDsLocked(g, gw.PIDs())
	}
	key := binKey{gw.ExeDev, gw.ExeIno}
	b := p.bins[key]
	if b == nil {
		var err error
		if b, err = p.attach(gw, key); err != nil {
			p.lastErr = err.Error()
			return err
		}
	}
	b.users++
	g := &gateway{gw: gw, bin: b, pids: map[int]bool{}, req: map[int]bool{}}
	p.gws[id] = g
	return p.setPIDsLocked(g, gw.PIDs())
}

func (p *Probes) attach(gw discovery.Gateway, key binKey) (*nginxBin, error) {
	info, err := readBinary(gw.Exe)
	if err != nil {
		return nil, kernel.PermError("read "+gw.Exe, err, kernel.CapSysPtrace)
	}
	if !info.has["ngx_http_free_request"] {
		return nil, fmt.Errorf("%s does not export ngx_http_free_request: not an nginx/OpenResty binary kong-watcher can probe", gw.Exe)
	}
	b := &nginxBin{key: key, exe: gw.Exe, info: info, gw: gw, learner: nginxlayout.NewLearner(learnNeed, learnMax)}
	if n := len(p.freeIDs); n > 0 {
		b.id, p.freeIDs = p.freeIDs[n-1], p.freeIDs[:n-1]
	} else {
		if p.nextID >= p.objs.NginxreqLayouts.MaxEntries() {
			return nil, fmt.Errorf("too many distinct nginx binaries (%d)", p.nextID)
		}
		b.id = p.nextID
		p.nextID++
	}
	if err := p.objs.NginxreqLayouts.Put(b.id, &bpf.NginxReqNginxreqLayout{}); err != nil {
		return nil, fmt.Errorf("reset layout: %w", err)
	}
	fail := func(err error) (*nginxBin, error) {
		closeLinks(&b.links)
		closeLinks(&b.luaLinks)
		p.freeIDs = append(p.freeIDs, b.id)
		return nil, err
	}
	// With Lua timing on, the return probe must be in place before the entry probe parks
	// events for it.
	if p.lua {
		if err := p.attachTable(&b.luaLinks, gw.Exe, p.freeRequestRet()); err != nil {
			return fail(err)
		}
	}
	if err := p.attachTable(&b.links, gw.Exe, []kernel.Probe{{Sym: "ngx_http_free_request", Prog: p.objs.NginxreqFreeRequest}}); err != nil {
		return fail(err)
	}
	if p.lua {
		if err := p.attachLua(b, gw); err != nil {
			// Request events still flow; say why Lua timing is missing.
			p.log().Info("Lua phase timing unavailable", "exe", gw.Exe, "err", err.Error())
			p.lastErr = err.Error()
		}
	}
	p.bins[key] = b
	p.byID[b.id] = b
	p.log().Info("attached nginx probes", "exe", gw.Exe, "method", p.mode, "lua", b.lua,
		"ngx_cached_time", info.cachedTime != 0)
	return b, nil
}

// freeRequestRet is the return probe on free_request that completes the events parked for
// the log phase's Lua time.
func (p *Probes) freeRequestRet() []kernel.Probe {
	return []kernel.Probe{{Sym: "ngx_http_free_request", Prog: p.objs.NginxreqFreeRequestRet, Ret: true}}
}

// attachTable attaches a table of probes to the file at path and adds the links to dst.
func (p *Probes) attachTable(dst *[]link.Link, path string, table []kernel.Probe) error {
	ex, err := kernel.Open(path)
	if err != nil {
		return err
	}
	links, err := kernel.Attach(ex, p.mode, table)
	if err != nil {
		return err
	}
	*dst = append(*dst, links...)
	return nil
}

func closeLinks(ls *[]link.Link) {
	for _, l := range *ls {
		l.Close()
	}
	*ls = nil
}

// Untrack stops watching a gateway; its binary is detached when no gateway uses it.
func (p *Probes) Untrack(id discovery.GatewayID) {
	p.mu.Lock()
	defer p.mu.Unlock()
	g, ok := p.gws[id]
	if !ok {
		return
	}
	p.removePIDsLocked(g)
	delete(p.gws, id)
	b := g.bin
	b.users--
	if b.users <= 0 {
		p.detachLocked(b)
	}
}

func (p *Probes) detachLocked(b *nginxBin) {
	closeLinks(&b.links)
	closeLinks(&b.luaLinks)
	delete(p.bins, b.key)
	delete(p.byID, b.id)
	p.freeIDs = append(p.freeIDs, b.id)
}

// Failed lists the tracked gateways whose binary the probes gave up on (no request layout
// learnt) with the reason: their requests are not counted until they are followed another
// way. Other gateways are not affected.
func (p *Probes) Failed() map[discovery.GatewayID]error {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out map[discovery.GatewayID]error
	for id, g := range p.gws {
		if g.bin.failed != nil {
			if out == nil {
				out = map[discovery.GatewayID]error{}
			}
			out[id] = fmt.Errorf("%s: %w", g.bin.exe, g.bin.failed)
		}
	}
	return out
}
