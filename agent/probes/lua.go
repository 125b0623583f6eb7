package probes

import (
	"errors"
	"fmt"
	"path/filepath"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
	"github.com/kong-watcher/kong-watcher/agent/kernel"
	"github.com/kong-watcher/kong-watcher/bpf"
)

// luaHandlers are the lua module's functions that run a phase's Lua code, one probe pair
// each, the cookie saying the phase. They are the module's exported (non-static) functions,
// so they are found in stripped builds too: the phase handlers for rewrite, access, content
// and log, and for the filters and the balancer the functions that run the configured
// *_by_lua_block (inline) or *_by_lua_file code, called once per filter call (the body
// filter once per chunk) and once per upstream try. None of them calls another of the list,
// so no time is counted twice; when one runs inside another (the filters inside an access
// handler that answers itself), the BPF program's per-thread stack gives each its own time.
var luaHandlers = []struct {
	sym   string
	phase bpf.NginxReqNginxreqLuaPhase
}{
	{"ngx_http_lua_rewrite_handler", bpf.NginxReqNginxreqLuaPhaseLUA_REWRITE},
	{"ngx_http_lua_access_handler", bpf.NginxReqNginxreqLuaPhaseLUA_ACCESS},
	{"ngx_http_lua_content_handler", bpf.NginxReqNginxreqLuaPhaseLUA_CONTENT},
	{"ngx_http_lua_header_filter_inline", bpf.NginxReqNginxreqLuaPhaseLUA_HEADER_FILTER},
	{"ngx_http_lua_header_filter_file", bpf.NginxReqNginxreqLuaPhaseLUA_HEADER_FILTER},
	{"ngx_http_lua_body_filter_inline", bpf.NginxReqNginxreqLuaPhaseLUA_BODY_FILTER},
	{"ngx_http_lua_body_filter_file", bpf.NginxReqNginxreqLuaPhaseLUA_BODY_FILTER},
	{"ngx_http_lua_log_handler", bpf.NginxReqNginxreqLuaPhaseLUA_LOG},
	{"ngx_http_lua_balancer_handler_inline", bpf.NginxReqNginxreqLuaPhaseLUA_BALANCER},
	{"ngx_http_lua_balancer_handler_file", bpf.NginxReqNginxreqLuaPhaseLUA_BALANCER},
}

// attachLua finds the Lua phase handlers: in the executable itself (OpenResty, Kong) or in a
// dynamically loaded lua module (Debian's libnginx-mod-http-lua), opened through the
// gateway's root so it is the file the gateway really mapped. A build lacking some of them
// (an older module without a balancer_by_lua) has those phases untimed.
func (p *Probes) attachLua(b *nginxBin, gw discovery.Gateway) error {
	syms := make([]string, len(luaHandlers))
	for i, h := range luaHandlers {
		syms[i] = h.sym
	}
	first := syms[0]
	path := gw.Exe
	info, err := readBinary(path, syms...)
	if err != nil || !info.has[first] {
		root := gw.Root
		if root == "" {
			root = fmt.Sprintf("/proc/%d/root", gw.Master.PID)
		}
		libs, _ := mappedFiles(gw.Master.PID, "lua")
		info = nil
		for _, lib := range libs {
			cand := filepath.Join(root, lib)
			bi, err := readBinary(cand, syms...)
			if err != nil {
				if kernel.IsPerm(err) {
					return kernel.PermError("read "+cand, err, kernel.CapSysPtrace)
				}
				continue
			}
			if bi.has[first] {
				path, info = cand, bi
				break
			}
		}
		if info == nil {
			return fmt.Errorf("no Lua module: neither %s nor a mapped *lua* library (%v) exports %s", gw.Exe, libs, first)
		}
	}
	// The return probes first: an entry probe's frame needs its return to be popped.
	var exits, enters []kernel.Probe
	for _, h := range luaHandlers {
		if info.has[h.sym] {
			exits = append(exits, kernel.Probe{Sym: h.sym, Prog: p.objs.NginxreqLuaExit, Ret: true, Cookie: uint64(h.phase)})
			enters = append(enters, kernel.Probe{Sym: h.sym, Prog: p.objs.NginxreqLuaEnter, Cookie: uint64(h.phase)})
		}
	}
	if err := p.attachTable(&b.luaLinks, path, append(exits, enters...)); err != nil {
		return err
	}
	b.lua = path
	return nil
}

// clearLuaStacks empties the per-thread Lua call stacks once the probes are detached: a
// handler that was running then had its entry recorded and its return never seen, and its
// frame must not pair with a later return when timing is switched on again.
func (p *Probes) clearLuaStacks() {
	var keys []uint64
	var prev any            // nil: the first key
	for len(keys) < 1<<16 { // the map holds at most 4096
		var k uint64
		if err := p.objs.NginxreqLuaCalls.NextKey(prev, &k); err != nil {
			break // ErrKeyNotExist: the end
		}
		keys = append(keys, k)
		prev = k
	}
	for _, k := range keys {
		_ = p.objs.NginxreqLuaCalls.Delete(k) // gone already is as good
	}
}

// SetLuaPhases switches Lua phase timing on or off at run time (it costs 2 probe hits per
// Lua handler call and one per request, so it may be duty-cycled). Switching off loses no
// request: events parked for the return probe are recovered from the map and delivered by
// Run without Lua timing.
func (p *Probes) SetLuaPhases(on bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if on == p.lua {
		return nil
	}
	if on {
		var errs []error
		for _, b := range p.bins {
			if b.failed != nil || len(b.links) == 0 {
				continue
			}
			if err := p.attachTable(&b.luaLinks, b.exe, p.freeRequestRet()); err != nil {
				closeLinks(&b.luaLinks)
				errs = append(errs, err)
				continue
			}
			if err := p.attachLua(b, b.gw); err != nil {
				p.log().Info("Lua phase timing unavailable", "exe", b.exe, "err", err.Error())
				errs = append(errs, err)
			}
		}
		if err := errors.Join(errs...); err != nil {
			// Leave it off where the return probe could not be attached: parked events would
			// never be emitted.
			for _, b := range p.bins {
				closeLinks(&b.luaLinks)
			}
			return err
		}
		p.lua = true
		return p.objs.NginxreqCfg.Put(uint32(0), p.config(p.opts.Now()))
	}
	p.lua = false
	err := p.objs.NginxreqCfg.Put(uint32(0), p.config(p.opts.Now()))
	// A request between the entry and return probes finishes within microseconds; give
	// preempted workers time, then recover whatever is still parked.
	time.Sleep(50 * time.Millisecond)
	for _, b := range p.bins {
		closeLinks(&b.luaLinks)
		b.lua = ""
	}
	p.drainPendingLocked()
	p.clearLuaStacks()
	return err
}

func (p *Probes) drainPendingLocked() {
	var (
		key  uint64
		ev   rawEvent
		keys []uint64
	)
	it := p.objs.NginxreqPending.Iterate()
	for it.Next(&key, &ev) {
		p.leftover = append(p.leftover, ev)
		keys = append(keys, key)
	}
	for _, k := range keys {
		p.objs.NginxreqPending.Delete(k)
	}
}
