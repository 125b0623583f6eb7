package probes

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cilium/ebpf/link"
	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
	"github.com/kong-watcher/kong-watcher/agent/kernel"
	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/agent/nginxlayout"
	"github.com/kong-watcher/kong-watcher/bpf"
)

// Options configures Probes.
type Options struct {
	// LuaPhases times the Lua phase handlers (luaHandlers) per request. Costs 2 probe hits
	// per Lua handler call plus one uretprobe on free_request.
	LuaPhases bool
	// ClientAddr reads each request's client address ($remote_addr; two reads more per
	// request). Only the per-request log shows it: off, Request.ClientAddr is "".
	ClientAddr bool
	// RingBufferBytes is the event ring size (rounded up to a power of two pages); default 4 MiB.
	RingBufferBytes int
	Log             logr.Logger
	// Now is the wall clock (tests); default time.Now.
	Now func() time.Time
	// ForcePerfEvent attaches with perf-event uprobes, as on kernels without uprobe_multi
	// (tests and diagnosis).
	ForcePerfEvent bool
}

// Status is a snapshot of the probes' health, for /readyz, metrics and Events.
type Status struct {
	AttachedBinaries int
	// TrackedPIDs counts the PIDs given to Track/SetPIDs (the workers). The kernel filter
	// also holds each gateway's master and the workers the kernel adopted.
	TrackedPIDs int
	// AdoptedPIDs counts the times the kernel accepted an untracked process because its
	// parent is a tracked master (a worker forked at start, on reload or to replace a crashed
	// one, before user space's next scan), adding it to the filter itself: about one per
	// such worker.
	AdoptedPIDs uint64
	// Mode is "calibrating" (no layout learnt yet), "ready" or "failed" (see Err).
	Mode string
	// Layout describes the learnt offsets of each attached binary.
	Layout       string
	Dropped      uint64 // events the kernel could not queue (ring buffer full)
	Decoded      uint64 // requests delivered to the sink
	DecodeErrors uint64 // events that could not be turned into a plausible request
	Calibration  uint64 // calibration events seen
	Ignored      uint64 // free_request calls that were no client request (see ignorable)
	AttachMethod string // kernel.ModeMulti ("uprobe_multi") or kernel.ModePerf ("perf")
	LuaPhases    bool
	Err          string
}

// Learning parameters: a layout needs learnNeed agreeing requests (and an 80% majority) and
// must be found within learnMax requests.
const (
	learnNeed = 5
	learnMax  = 200
	// pendingMax bounds the calibration events kept to decode once the layout is known.
	pendingMax = 256
	// verifyWindow hot-path events are checked after a layout is switched on; if more than
	// half are implausible the binary goes back to calibration.
	verifyWindow = 64
	pollInterval = 150 * time.Millisecond
)

type binKey struct{ dev, ino uint64 }

// testNoCachedTime makes the agent behave as if nginx did not export ngx_cached_time, so
// tests can exercise the kernel-clock fallback.
var testNoCachedTime = false

// testCalibHook sees every calibration event (tests record real snapshots with it).
var testCalibHook func(*rawCalib)

type nginxBin struct {
	key      binKey
	exe      string
	id       uint32 // index into nginxreq_layouts
	info     *binaryInfo
	links    []link.Link
	users    int
	learner  *nginxlayout.Learner
	layout   *nginxlayout.Layout
	failed   error
	pending  []*rawCalib // calibration events waiting for the layout
	verified int         // hot-path events checked since the layout was switched on
	bad      int
	lua      string // where the Lua handlers were attached ("" none)
	luaLinks []link.Link
	gw       discovery.Gateway // the gateway it was attached for (to find its Lua module)
	mainOK   bool              // r->main verified at start_sec+168
	// serverName is the offset of server_name in ngx_http_core_srv_conf_t (0: not learnt,
	// requests without Host then have no host).
	serverName int
}

type gateway struct {
	gw   discovery.Gateway
	bin  *nginxBin
	pids map[int]bool // in the kernel filter, put there by user space (workers and master)
	req  map[int]bool // the PIDs Track/SetPIDs asked for
}

// Probes is the loaded BPF collection and everything attached from it.
type Probes struct {
	opts Options
	objs bpf.NginxReqObjects
	mode string // kernel.ModeMulti or kernel.ModePerf
	ring *kernel.Ring
	clk  clock

	mu       sync.Mutex
	bins     map[binKey]*nginxBin
	byID     map[uint32]*nginxBin
	gws      map[discovery.GatewayID]*gateway
	pidOwner map[int]discovery.GatewayID // the PIDs Track/SetPIDs asked for
	nextID   uint32
	freeIDs  []uint32
	lastErr  string
	calPool  sync.Pool

	decoded, decodeErrs, calibs, ignored atomic.Uint64

	lua      bool       // Lua phase probes on (Options.LuaPhases, then SetLuaPhases)
	leftover []rawEvent // parked events recovered when Lua timing was switched off
}

// New loads the BPF collection (nothing is attached yet).
func New(opts Options) (*Probes, error) {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.RingBufferBytes <= 0 {
		opts.RingBufferBytes = 4 << 20
	}
	size := os.Getpagesize()
	for size < opts.RingBufferBytes {
		size <<= 1
	}
	spec, err := bpf.LoadNginxReq()
	if err != nil {
		return nil, fmt.Errorf("load BPF spec: %w", err)
	}
	ns, err := kernel.OwnPIDNamespace()
	if err != nil {
		return nil, err
	}
	consts := ns.NamespaceConsts("agent_ns_dev", "agent_ns_ino", "agent_in_init_ns")
	consts["wakeup_bytes"] = uint64(size / 4)

	p := &Probes{opts: opts, bins: map[binKey]*nginxBin{}, byID: map[uint32]*nginxBin{},
		gws: map[discovery.GatewayID]*gateway{}, pidOwner: map[int]discovery.GatewayID{}, lua: opts.LuaPhases}
	p.calPool.New = func() any { return new(rawCalib) }
	p.mode, err = kernel.LoadAndAssign(spec, &p.objs, kernel.Load{Name: "nginxreq", Ring: "nginxreq_events",
		RingBytes: size, Consts: consts, ForcePerfEvent: opts.ForcePerfEvent})
	if err != nil {
		return nil, err
	}
	if p.ring, err = kernel.OpenRing(p.objs.NginxreqEvents); err != nil {
		p.objs.Close()
		return nil, err
	}
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts); err == nil {
		p.clk.bootToWall = time.Duration(opts.Now().UnixNano() - ts.Nano())
	}
	if err := p.objs.NginxreqCfg.Put(uint32(0), p.config(opts.Now())); err != nil {
		p.ring.Close()
		p.objs.Close()
		return nil, fmt.Errorf("write BPF config: %w", err)
	}
	return p, nil
}

func (p *Probes) log() logr.Logger { return p.opts.Log }

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

func closeLinks(ls *[]link.Link) {
	for _, l := range *ls {
		l.Close()
	}
	*ls = nil
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

// SetPIDs replaces a tracked gateway's PIDs (after a reload or a worker respawn).
func (p *Probes) SetPIDs(id discovery.GatewayID, pids []int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if g, ok := p.gws[id]; ok {
		if err := p.setPIDsLocked(g, pids); err != nil {
			p.lastErr = err.Error()
			p.log().Error(err, "update process filter", "gateway", id)
		}
	}
}

// setPIDsLocked makes the kernel filter hold the gateway's pids and its master. The master
// serves no requests in master/worker mode (and is one of pids when it does), but with it in
// the filter the kernel accepts the requests of workers it forks before user space lists
// them, and adds them to the filter itself (adopt() in bpf/nginxreq.c). Adopted entries of
// processes that are gone (or no longer the master's children) are removed here.
func (p *Probes) setPIDsLocked(g *gateway, pids []int) error {
	master := g.gw.Master.PID
	want := map[int]bool{master: true}
	for _, pid := range pids {
		want[pid] = true
	}
	p.reapAdoptedLocked(g, want)
	for pid := range g.pids {
		if !want[pid] {
			p.objs.NginxreqProcs.Delete(uint32(pid))
			delete(g.pids, pid)
		}
	}
	for pid := range g.req {
		delete(p.pidOwner, pid)
	}
	g.req = map[int]bool{}
	for _, pid := range pids {
		g.req[pid] = true
		p.pidOwner[pid] = g.gw.ID()
	}
	var errs []error
	for pid := range want {
		if g.pids[pid] {
			continue
		}
		v := bpf.NginxReqNginxreqProc{LayoutId: g.bin.id, Master: uint32(master)}
		if g.bin.info.cachedTime != 0 && !testNoCachedTime {
			base, err := loadBase(pid, g.bin.key.ino, g.bin.info)
			if err != nil {
				// Latency falls back to the kernel clock (not nginx's exact ms).
				p.log().Info("no load base; latency from kernel clock", "pid", pid, "err", err.Error())
			} else {
				v.CachedTimeAddr = base + g.bin.info.cachedTime
			}
		}
		if err := p.objs.NginxreqProcs.Put(uint32(pid), &v); err != nil {
			errs = append(errs, fmt.Errorf("filter pid %d: %w", pid, err))
			continue
		}
		g.pids[pid] = true
	}
	return errors.Join(errs...)
}

// removePIDsLocked takes all of a gateway's entries out of the kernel filter: the master,
// the workers and those the kernel adopted.
func (p *Probes) removePIDsLocked(g *gateway) {
	for _, pid := range p.adoptedLocked(g, nil) {
		p.objs.NginxreqProcs.Delete(uint32(pid))
	}
	for pid := range g.pids {
		p.objs.NginxreqProcs.Delete(uint32(pid))
	}
	for pid := range g.req {
		delete(p.pidOwner, pid)
	}
	g.pids, g.req = map[int]bool{}, map[int]bool{}
}

// reapAdoptedLocked removes the entries the kernel adopted for the gateway whose process is
// gone or is no longer a child of the master (its PID reused); want are about to be put.
func (p *Probes) reapAdoptedLocked(g *gateway, want map[int]bool) {
	master := g.gw.Master.PID
	for _, pid := range p.adoptedLocked(g, want) {
		if ppid, err := parentPID(pid); err == nil && ppid == master {
			continue // a live worker discovery has not listed yet
		}
		p.objs.NginxreqProcs.Delete(uint32(pid))
	}
}

// adoptedLocked lists the kernel filter's entries for the gateway that user space did not
// put there (nor is about to: skip).
func (p *Probes) adoptedLocked(g *gateway, skip map[int]bool) []int {
	var (
		key  uint32
		v    bpf.NginxReqNginxreqProc
		out  []int
		mine = uint32(g.gw.Master.PID)
	)
	it := p.objs.NginxreqProcs.Iterate()
	for it.Next(&key, &v) {
		if v.Master == mine && !g.pids[int(key)] && !skip[int(key)] {
			out = append(out, int(key))
		}
	}
	return out
}

// parentPID reads a process's parent PID from /proc/<pid>/stat (PIDs as the agent sees them).
func parentPID(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no comm", pid)
	}
	fs := strings.Fields(s[i+1:])
	if len(fs) < 2 {
		return 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	return strconv.Atoi(fs[1])
}

// Run reads events until ctx is done, delivering each request to sink.
func (p *Probes) Run(ctx context.Context, sink model.Sink) error {
	var (
		r       record
		req     model.Request
		lastNow time.Time
	)
	tick := func() {
		now := p.opts.Now()
		if now.Sub(lastNow) >= time.Second {
			// The BPF calibration scan looks for start_sec near this.
			p.mu.Lock()
			p.objs.NginxreqCfg.Put(uint32(0), p.config(now))
			p.mu.Unlock()
			lastNow = now
		}
		p.mu.Lock()
		left := p.leftover
		p.leftover = nil
		p.mu.Unlock()
		for i := range left {
			p.deliver(&left[i], &req, sink)
		}
	}
	return p.ring.Read(ctx, pollInterval, tick, func(raw []byte) { p.handle(raw, &r, &req, sink) })
}

func (p *Probes) config(now time.Time) *bpf.NginxReqNginxreqConfig {
	cfg := &bpf.NginxReqNginxreqConfig{NowSec: uint64(now.Unix())}
	if p.lua {
		cfg.Lua = 1
	}
	if p.opts.ClientAddr {
		cfg.Addr = 1
	}
	return cfg
}

func (p *Probes) handle(raw []byte, r *record, req *model.Request, sink model.Sink) {
	cb := p.calPool.Get().(*rawCalib)
	if err := parseRecord(raw, r, cb); err != nil {
		p.calPool.Put(cb)
		p.decodeErrs.Add(1)
		return
	}
	if r.kind == evRequest {
		p.calPool.Put(cb)
		p.deliver(&r.ev, req, sink)
		return
	}
	p.calibs.Add(1)
	if testCalibHook != nil {
		testCalibHook(cb)
	}
	ready, lay, sn := p.calibrate(cb)
	for _, c := range ready {
		if err := p.clk.decodeCalib(c, lay, sn, req); err != nil {
			p.decodeErrs.Add(1)
		} else if ignorable(&c.Ev, req) {
			p.ignored.Add(1)
		} else {
			p.decoded.Add(1)
			sink.Observe(req)
		}
		p.calPool.Put(c)
	}
}

// deliver decodes a fast-path event and hands it to the sink.
func (p *Probes) deliver(ev *rawEvent, req *model.Request, sink model.Sink) {
	p.clk.toRequest(ev, ev.Status, req)
	if ignorable(ev, req) {
		p.ignored.Add(1)
		return
	}
	if !plausible(ev, ev.Status, req) {
		p.decodeErrs.Add(1)
		p.verify(ev.LayoutId, false)
		return
	}
	p.verify(ev.LayoutId, true)
	p.decoded.Add(1)
	sink.Observe(req)
}

// calibrate feeds a calibration event to its binary's learner and returns the calibration
// events that can now be decoded (none while learning) with the layout (and server_name
// offset) to decode them with.
func (p *Probes) calibrate(cb *rawCalib) ([]*rawCalib, nginxlayout.Layout, int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.byID[cb.Ev.LayoutId]
	if b == nil || b.failed != nil {
		p.decodeErrs.Add(1)
		p.calPool.Put(cb)
		return nil, nginxlayout.Layout{}, 0
	}
	if b.layout != nil {
		return []*rawCalib{cb}, *b.layout, b.serverName
	}
	lay, err := b.learner.Add(calibSample(cb, p.opts.Now().Unix()))
	if err != nil {
		b.failed = err
		p.lastErr = fmt.Sprintf("%s: %v", b.exe, err)
		p.log().Error(err, "cannot learn nginx request layout; detaching", "exe", b.exe)
		p.decodeErrs.Add(uint64(len(b.pending)) + 1)
		b.pending = nil
		closeLinks(&b.links)
		closeLinks(&b.luaLinks)
		return nil, nginxlayout.Layout{}, 0
	}
	if lay == nil {
		if len(b.pending) < pendingMax {
			b.pending = append(b.pending, cb)
		} else {
			p.decodeErrs.Add(1)
			p.calPool.Put(cb)
		}
		return nil, nginxlayout.Layout{}, 0
	}
	b.layout = lay
	// r->main (for the Lua probes' subrequest filter) only if every sample agrees.
	mainOK := 0
	for _, c := range append(b.pending, cb) {
		if int(c.S_off) == lay.Start {
			if !nginxlayout.MainIsR(calibSample(c, 0), *lay) {
				mainOK = -1 << 30
			}
			mainOK++
		}
	}
	b.mainOK = mainOK >= learnNeed
	b.serverName = b.learner.ServerName()
	kl := bpf.NginxReqNginxreqLayout{
		Ready:         1,
		OffStatus:     uint32(lay.Status()),
		OffServer:     uint32(lay.Server()),
		OffStart:      uint32(lay.Start),
		OffUstates:    uint32(lay.UpstreamStates),
		OffConn:       nginxlayout.ConnOffset,
		ConnSent:      nginxlayout.ConnSentOffset,
		ConnAddr:      nginxlayout.ConnAddrOffset,
		ConnListening: nginxlayout.ConnListeningOffset,
		UstateRt:      nginxlayout.UpstreamRTOffset,
	}
	if b.mainOK {
		kl.OffMain = uint32(lay.Start + nginxlayout.SToMain)
	}
	if b.serverName != 0 {
		kl.OffSrvConf = nginxlayout.SrvConfOffset
		kl.CscfName = uint32(b.serverName)
	}
	if err := p.objs.NginxreqLayouts.Put(b.id, &kl); err != nil {
		p.lastErr = err.Error()
	}
	p.log().Info("learnt nginx request layout", "exe", b.exe, "layout", lay.String(), "samples", b.learner.Seen(),
		"mainVerified", b.mainOK, "serverNameOffset", b.serverName)
	out := append(b.pending, cb)
	b.pending = nil
	return out, *lay, b.serverName
}

// verify watches the first hot-path events after a layout went live: if most are
// implausible the layout was wrong after all, and the binary goes back to calibration.
func (p *Probes) verify(id uint32, ok bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	b := p.byID[id]
	if b == nil || b.layout == nil || b.verified >= verifyWindow {
		return
	}
	b.verified++
	if !ok {
		b.bad++
	}
	if b.bad*2 > verifyWindow || (b.verified == verifyWindow && b.bad*2 > b.verified) {
		p.log().Info("learnt layout produces implausible requests; recalibrating", "exe", b.exe, "layout", b.layout.String())
		b.layout, b.verified, b.bad = nil, 0, 0
		b.learner = nginxlayout.NewLearner(learnNeed, learnMax)
		p.objs.NginxreqLayouts.Put(b.id, &bpf.NginxReqNginxreqLayout{})
	}
}

// Status reports the probes' state.
func (p *Probes) Status() Status {
	p.mu.Lock()
	defer p.mu.Unlock()
	s := Status{AttachedBinaries: 0, TrackedPIDs: len(p.pidOwner), AttachMethod: p.mode,
		LuaPhases: p.lua, Err: p.lastErr}
	mode := "ready"
	var layouts []string
	calibrating := len(p.bins) == 0
	for _, b := range p.bins {
		if len(b.links) > 0 {
			s.AttachedBinaries++
		}
		switch {
		case b.failed != nil:
			mode = "failed"
		case b.layout == nil:
			calibrating = true
			layouts = append(layouts, b.exe+": calibrating")
		default:
			l := b.exe + ": " + b.layout.String()
			if b.mainOK {
				l += fmt.Sprintf(" main=%d", b.layout.Start+nginxlayout.SToMain)
			}
			if b.serverName != 0 {
				l += fmt.Sprintf(" srv_conf=%d server_name=%d", nginxlayout.SrvConfOffset, b.serverName)
			}
			layouts = append(layouts, l)
		}
	}
	if mode != "failed" && calibrating {
		mode = "calibrating"
	}
	s.Mode = mode
	sort.Strings(layouts)
	s.Layout = strings.Join(layouts, "; ")
	s.Dropped = p.counter(bpf.NginxReqNginxreqCounterC_RING_DROP) + p.counter(bpf.NginxReqNginxreqCounterC_CALIB_DROP) +
		p.counter(bpf.NginxReqNginxreqCounterC_PENDING_LOST)
	s.AdoptedPIDs = p.counter(bpf.NginxReqNginxreqCounterC_ADOPTED)
	s.Decoded = p.decoded.Load()
	s.DecodeErrors = p.decodeErrs.Load()
	s.Calibration = p.calibs.Load()
	s.Ignored = p.ignored.Load()
	return s
}

func (p *Probes) counter(c bpf.NginxReqNginxreqCounter) uint64 {
	return kernel.PerCPUSum(p.objs.NginxreqCounters, uint32(c))
}

// Close detaches everything and unloads the collection. Cancel Run's context first.
func (p *Probes) Close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range p.bins {
		closeLinks(&b.links)
		closeLinks(&b.luaLinks)
	}
	p.bins = map[binKey]*nginxBin{}
	p.ring.Close()
	return p.objs.Close()
}
