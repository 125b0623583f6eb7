package probes

import (
	"context"
	"fmt"
	"maps"
	"os"
	"sort"
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
	// NoCachedTime ignores nginx's ngx_cached_time, as for a binary that does not export it:
	// latency then comes from the kernel's clock (tests and diagnosis of that fallback).
	NoCachedTime bool
	// onCalibration sees every calibration event (tests record real snapshots with it).
	onCalibration func(*rawCalib)
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
	poll time.Duration // the reader's deadline between two drains (pollInterval; a test lengthens it)
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
	procsGen uint64     // the config's procs_gen: see filterChangedLocked
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
	maps.Copy(consts, nginxOffsets())

	p := &Probes{opts: opts, poll: pollInterval, bins: map[binKey]*nginxBin{}, byID: map[uint32]*nginxBin{},
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
	p.clk.hosts, p.clk.uris = newHostCache(), new(stringSlab)
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
	return p.ring.Read(ctx, p.poll, tick, func(raw []byte) { p.handle(raw, &r, &req, sink) })
}

func (p *Probes) config(now time.Time) *bpf.NginxReqNginxreqConfig {
	cfg := &bpf.NginxReqNginxreqConfig{NowSec: uint64(now.Unix()), ProcsGen: p.procsGen}
	if p.lua {
		cfg.Lua = 1
	}
	if p.opts.ClientAddr {
		cfg.Addr = 1
	}
	return cfg
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

// nginxOffsets are the BPF program's nginx offsets, from agent/nginxlayout (their one
// source): the fixed ones and the candidates calibration captures at.
func nginxOffsets() map[string]any {
	u32s := func(xs []int) []uint32 {
		out := make([]uint32, len(xs))
		for i, x := range xs {
			out[i] = uint32(x)
		}
		return out
	}
	return map[string]any{
		"ngx_s_to_msec":         uint32(nginxlayout.SToMsec),
		"ngx_s_to_method":       uint32(nginxlayout.SToMethod),
		"ngx_s_to_httpver":      uint32(nginxlayout.SToHTTPVersion),
		"ngx_s_to_unparsed_uri": uint32(nginxlayout.SToUnparsedURI),
		"ngx_s_to_method_name":  uint32(nginxlayout.SToMethodName),
		"ngx_r_to_conn":         uint32(nginxlayout.ConnOffset),
		"ngx_r_to_srv_conf":     uint32(nginxlayout.SrvConfOffset),
		"ngx_conn_sent":         uint32(nginxlayout.ConnSentOffset),
		"ngx_conn_addr":         uint32(nginxlayout.ConnAddrOffset),
		"ngx_conn_listening":    uint32(nginxlayout.ConnListeningOffset),
		"ngx_ls_to_sockaddr":    uint32(nginxlayout.ListeningSockaddrOffset),
		"ngx_ustate_rt":         uint32(nginxlayout.UpstreamRTOffset),
		"ngx_server_to_ho":      uint32(-nginxlayout.HOToServer),
		"ngx_start_dist":        u32s(nginxlayout.StartDistances[:]),
		"ngx_upstream_cand":     u32s(nginxlayout.UpstreamCandidates[:]),
		"ngx_server_name_cand":  u32s(nginxlayout.ServerNameCandidates[:]),
	}
}
