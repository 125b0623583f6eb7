package wire

import (
	"bufio"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/go-logr/logr"
	"golang.org/x/sys/unix"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
	"github.com/kong-watcher/kong-watcher/agent/insn"
	"github.com/kong-watcher/kong-watcher/agent/kernel"
	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/bpf"
)

// Function ids (the attach cookies), record kinds, directions and counter indexes:
// bpf/headers/wire_types.h's enums as bpf2go generates them. A record carries them as bytes.
const (
	fnRecv     = uint8(bpf.WireWireFnWIRE_FN_RECV)
	fnSend     = uint8(bpf.WireWireFnWIRE_FN_SEND)
	fnWritev   = uint8(bpf.WireWireFnWIRE_FN_WRITEV)
	fnSendfile = uint8(bpf.WireWireFnWIRE_FN_SENDFILE)
	fnClose    = uint8(bpf.WireWireFnWIRE_FN_CLOSE)
	fnSSLRead  = uint8(bpf.WireWireFnWIRE_FN_SSL_READ)
	fnSSLWrite = uint8(bpf.WireWireFnWIRE_FN_SSL_WRITE)
	fnSSLFree  = uint8(bpf.WireWireFnWIRE_FN_SSL_FREE)
	fnAccept   = uint8(bpf.WireWireFnWIRE_FN_ACCEPT)
	fnAccept4  = uint8(bpf.WireWireFnWIRE_FN_ACCEPT4)
	fnSSLSetFD = uint8(bpf.WireWireFnWIRE_FN_SSL_SET_FD)

	kindData   = uint8(bpf.WireWireKindWIRE_KIND_DATA)
	kindClose  = uint8(bpf.WireWireKindWIRE_KIND_CLOSE)
	kindAccept = uint8(bpf.WireWireKindWIRE_KIND_ACCEPT)
	kindSSLFD  = uint8(bpf.WireWireKindWIRE_KIND_SSL_FD)
	dirIn      = uint8(bpf.WireWireDirWIRE_DIR_IN)
	dirOut     = uint8(bpf.WireWireDirWIRE_DIR_OUT)
	statEvents = uint32(bpf.WireWireStatWIRE_STAT_EVENTS)
	statDrops  = uint32(bpf.WireWireStatWIRE_STAT_DROPS)
)

// probeFn is one library function the tracer probes.
type probeFn struct {
	sym   string
	fn    uint8
	nargs int
	ret   bool // also a return probe (for the byte count)
}

var libcFns = []probeFn{
	{"recv", fnRecv, 4, true},
	{"send", fnSend, 4, true},
	{"writev", fnWritev, 3, true},
	{"sendfile", fnSendfile, 4, true},
	{"close", fnClose, 1, false},
	// Once per connection: the listening socket it came from.
	{"accept", fnAccept, 3, true},
	{"accept4", fnAccept4, 4, true},
}

var sslFns = []probeFn{
	{"SSL_read", fnSSLRead, 3, true},
	{"SSL_write", fnSSLWrite, 3, true},
	{"SSL_free", fnSSLFree, 1, false},
	{"SSL_set_fd", fnSSLSetFD, 2, false}, // once per TLS connection: its socket
}

// Options configures a Tracer.
type Options struct {
	Log logr.Logger
	// RingBufferBytes is the kernel ring buffer size (a power of two, >= 4 KiB; default 4 MiB).
	RingBufferBytes int
	// MaxConns bounds the connections parsed at once (default 16384).
	MaxConns int
	// MaxBufferedBytes bounds what the parser holds beyond the connections' fixed state:
	// heads arriving in pieces, requests waiting for responses (default 8 MiB, at least
	// 256 KiB). See Parser.MaxBuffered.
	MaxBufferedBytes int64
	// TLS also probes OpenSSL's SSL_read/SSL_write when libssl is mapped.
	TLS bool
	// ForcePerfEvent attaches with perf-event uprobes, as on kernels without uprobe_multi
	// (tests and diagnosis).
	ForcePerfEvent bool
}

// Probe describes one attached function.
type Probe struct {
	Library string // path as seen from the agent
	Symbol  string
	Offset  uint64 // where the probe sits inside the function
	// Emulated is false when no cheap instruction was found and the probe single-steps
	// (~15 us per hit instead of ~1 us).
	Emulated bool
	// Return: this probe reads the return value; ReturnSite: with a plain uprobe on the
	// epilogue (insn.ReturnSite) rather than a uretprobe.
	Return     bool
	ReturnSite bool
}

// Status is the tracer's health.
type Status struct {
	Mode     string // kernel.ModeMulti or kernel.ModePerf ("" before the first attach)
	Probes   []Probe
	Gateways int
	PIDs     int
	Events   uint64 // events the kernel side emitted
	Dropped  uint64 // events lost because the ring buffer was full
	// BadRecords counts ring-buffer records that did not decode as an event: skipped.
	BadRecords uint64
	// ListenerLookups counts the scans of a worker's /proc/<pid>/net tables to find which
	// listener a socket belongs to: about one per worker and listener (see listeners).
	ListenerLookups uint64
	ParserStats
}

type fileID struct{ dev, ino uint64 }

type attachedLib struct {
	path   string
	refs   int
	links  []link.Link
	probes []Probe
}

type gwState struct {
	pids []int
	libs []fileID
}

// Tracer owns the wire programs, their attachments and the parser.
type Tracer struct {
	log  logr.Logger
	opts Options

	mu      sync.Mutex
	objs    bpf.WireObjects
	kmode   string // the attach mode decided at load
	mode    string // kmode once something is attached, "" before
	libs    map[fileID]*attachedLib
	gws     map[discovery.GatewayID]*gwState
	pstats  ParserStats
	bad     uint64 // BadRecords
	lookups uint64 // ListenerLookups

	ring      *kernel.Ring
	monoToRT  int64 // add to a CLOCK_MONOTONIC ns to get Unix ns
	onChunk   func(Chunk)
	closeOnce sync.Once
}

// New loads the programs and maps; nothing is attached until Track.
func New(o Options) (*Tracer, error) {
	if o.RingBufferBytes == 0 {
		o.RingBufferBytes = 4 << 20
	}
	if o.RingBufferBytes < 4096 || o.RingBufferBytes&(o.RingBufferBytes-1) != 0 {
		return nil, fmt.Errorf("RingBufferBytes %d: want a power of two >= 4096", o.RingBufferBytes)
	}
	if o.MaxConns <= 0 {
		o.MaxConns = 16384
	}
	if o.MaxBufferedBytes <= 0 {
		o.MaxBufferedBytes = DefaultMaxBuffered
	}
	// Below a few heads' worth, one large head (32 KiB) or pipeline would be given up alone.
	o.MaxBufferedBytes = max(o.MaxBufferedBytes, 256<<10)
	spec, err := bpf.LoadWire()
	if err != nil {
		return nil, err
	}
	ns, err := kernel.OwnPIDNamespace()
	if err != nil {
		return nil, err
	}
	consts := ns.NamespaceConsts("pidns_dev", "pidns_ino", "")
	consts["wakeup_bytes"] = uint64(o.RingBufferBytes / 16)
	t := &Tracer{log: o.Log, opts: o, libs: map[fileID]*attachedLib{}, gws: map[discovery.GatewayID]*gwState{}}
	t.kmode, err = kernel.LoadAndAssign(spec, &t.objs, kernel.Load{Name: "wire", Ring: "wire_events",
		RingBytes: o.RingBufferBytes, Consts: consts, ForcePerfEvent: o.ForcePerfEvent})
	if err != nil {
		return nil, fmt.Errorf("loading wire programs: %w", err)
	}
	if t.ring, err = kernel.OpenRing(t.objs.WireEvents); err != nil {
		t.objs.Close()
		return nil, err
	}
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	t.monoToRT = time.Now().UnixNano() - ts.Nano()
	return t, nil
}

// libraryPaths returns the paths of libc and libssl mapped by pid, from /proc/<pid>/maps.
func libraryPaths(pid int) (libc, libssl string, err error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/maps", pid))
	if err != nil {
		return "", "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) < 6 || !strings.HasPrefix(fields[5], "/") {
			continue
		}
		p := fields[5]
		base := filepath.Base(p)
		switch {
		case libc == "" && (strings.HasPrefix(base, "libc.so") || strings.HasPrefix(base, "libc-")):
			libc = p
		case libssl == "" && strings.HasPrefix(base, "libssl.so"):
			libssl = p
		}
	}
	if libc == "" {
		return "", "", fmt.Errorf("pid %d maps no libc (statically linked gateway?)", pid)
	}
	return libc, libssl, sc.Err()
}

// Track attaches to the libraries gw's processes map (once per library file, shared by
// gateways) and starts capturing their PIDs.
func (t *Tracer) Track(gw discovery.Gateway) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	id := gw.ID()
	if _, ok := t.gws[id]; ok {
		t.setPIDsLocked(id, gw.PIDs())
		return nil
	}
	pids := gw.PIDs()
	libc, libssl, err := libraryPaths(pids[0])
	if err != nil {
		libc, libssl, err = libraryPaths(gw.Master.PID)
		if err != nil {
			return err
		}
	}
	root := gw.Root
	if root == "" {
		root = fmt.Sprintf("/proc/%d/root", gw.Master.PID)
	}
	st := &gwState{}
	type lib struct {
		path string
		fns  []probeFn
	}
	want := []lib{{filepath.Join(root, libc), libcFns}}
	if t.opts.TLS && libssl != "" {
		want = append(want, lib{filepath.Join(root, libssl), sslFns})
	}
	for _, l := range want {
		fid, err := t.attachLib(l.path, l.fns)
		if err != nil {
			for _, f := range st.libs {
				t.unrefLib(f)
			}
			return err
		}
		st.libs = append(st.libs, fid)
	}
	t.gws[id] = st
	t.setPIDsLocked(id, pids)
	return nil
}

func (t *Tracer) attachLib(path string, fns []probeFn) (fileID, error) {
	var sst unix.Stat_t
	if err := unix.Stat(path, &sst); err != nil {
		return fileID{}, err
	}
	fid := fileID{uint64(sst.Dev), sst.Ino}
	if l, ok := t.libs[fid]; ok {
		l.refs++
		return fid, nil
	}
	ef, err := elf.Open(path)
	if err != nil {
		return fileID{}, err
	}
	defer ef.Close()
	syms, err := ef.DynamicSymbols()
	if err != nil {
		return fileID{}, fmt.Errorf("%s: %w", path, err)
	}
	type symAddr struct{ value, size uint64 }
	addr := map[string]symAddr{}
	for _, s := range syms {
		if elf.ST_TYPE(s.Info) == elf.STT_FUNC && s.Value != 0 {
			if _, dup := addr[s.Name]; !dup {
				addr[s.Name] = symAddr{s.Value, s.Size}
			}
		}
	}
	al := &attachedLib{path: path, refs: 1}
	// Entries, then uretprobes, then return sites: each a program of its own, so one
	// uprobe_multi link each.
	var tables [3][]kernel.Probe
	add := func(g int, f probeFn, site insn.Site, ret bool) {
		prog := [...]*ebpf.Program{t.objs.WireEnter, t.objs.WireExit, t.objs.WireRetSite}[g]
		tables[g] = append(tables[g], kernel.Probe{Sym: f.sym, Prog: prog, Ret: g == 1, Offset: site.Offset, Cookie: uint64(f.fn)})
		al.probes = append(al.probes, Probe{Library: path, Symbol: f.sym, Offset: site.Offset, Emulated: site.Emulated, Return: ret, ReturnSite: g == 2})
	}
	for _, f := range fns {
		a, ok := addr[f.sym]
		if !ok {
			t.log.Info("wire: symbol not found, not probed", "library", path, "symbol", f.sym)
			continue
		}
		code, err := insn.FunctionBytes(ef, a.value, insn.MaxScan)
		if err != nil {
			return fileID{}, err
		}
		// Entry and return probes share one site when the return needs it: a uretprobe
		// hijacks the return address at [rsp], so rsp must still be untouched there.
		site, err := insn.FirstEmulated(code, insn.Args(f.nargs, f.ret))
		if err == nil {
			add(0, f, site, false)
			if f.ret {
				add(1, f, site, true)
			}
			continue
		}
		if f.ret {
			// rsp moves first (OpenSSL): read the arguments a little later, and the return
			// value from the epilogue instead of a uretprobe.
			entry, err1 := insn.FirstEmulated(code, insn.Args(f.nargs, false))
			body, err2 := insn.FunctionBytes(ef, a.value, int(max(a.size, 1)))
			var rs insn.Site
			if err2 == nil {
				rs, err2 = insn.ReturnSite(body)
			}
			if err1 == nil && err2 == nil {
				add(0, f, entry, false)
				add(2, f, rs, true)
				continue
			}
			err = errors.Join(err, err1, err2)
		}
		t.log.Info("wire: no emulated instruction found, probe will be single-stepped (~15us per call)",
			"library", path, "symbol", f.sym, "reason", err.Error())
		add(0, f, insn.Site{}, false)
		if f.ret {
			add(1, f, insn.Site{}, true)
		}
	}
	if len(tables[0]) == 0 {
		return fileID{}, fmt.Errorf("%s: none of the probed functions found", path)
	}
	ex, err := kernel.Open(path)
	if err != nil {
		return fileID{}, err
	}
	links, err := kernel.Attach(ex, t.kmode, slices.Concat(tables[:]...))
	if err != nil {
		return fileID{}, fmt.Errorf("attaching to %s: %w", path, err)
	}
	t.mode = t.kmode
	al.links = links
	t.libs[fid] = al
	t.log.Info("wire: probes attached", "library", path, "mode", t.mode, "probes", len(al.probes))
	return fid, nil
}

func (t *Tracer) unrefLib(fid fileID) {
	l, ok := t.libs[fid]
	if !ok {
		return
	}
	if l.refs--; l.refs > 0 {
		return
	}
	kernel.Close(l.links)
	delete(t.libs, fid)
}

// Untrack stops capturing a gateway and detaches libraries no other gateway uses.
func (t *Tracer) Untrack(id discovery.GatewayID) {
	t.mu.Lock()
	defer t.mu.Unlock()
	st, ok := t.gws[id]
	if !ok {
		return
	}
	t.setPIDsLocked(id, nil)
	for _, f := range st.libs {
		t.unrefLib(f)
	}
	delete(t.gws, id)
}

// SetPIDs replaces a tracked gateway's PIDs (workers respawned, reload).
func (t *Tracer) SetPIDs(id discovery.GatewayID, pids []int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.setPIDsLocked(id, pids)
}

func (t *Tracer) setPIDsLocked(id discovery.GatewayID, pids []int) {
	st, ok := t.gws[id]
	if !ok {
		return
	}
	keep := map[int]bool{}
	for _, p := range pids {
		keep[p] = true
	}
	one := uint8(1)
	for _, p := range st.pids {
		if !keep[p] {
			k := uint32(p)
			_ = t.objs.WirePids.Delete(&k)
		}
	}
	for p := range keep {
		k := uint32(p)
		if err := t.objs.WirePids.Put(&k, &one); err != nil {
			t.log.Error(err, "wire: adding PID to the filter", "pid", p)
		}
	}
	st.pids = append(st.pids[:0], pids...)
}

// Run reads events until ctx ends or the tracer is closed, feeding sink.
func (t *Tracer) Run(ctx context.Context, sink model.Sink) error {
	parser := NewParser(t.opts.MaxConns, func(r *model.Request) { sink.Observe(r) })
	parser.MaxBuffered = t.opts.MaxBufferedBytes
	var gaveUp, lost uint64
	gaveUpLog := logLimiter{every: 10 * time.Second}
	parser.OnGiveUp = func(k ConnKey, reason string, n int) {
		gaveUp++
		lost += uint64(n)
		if ok, held := gaveUpLog.allow(time.Now()); ok {
			t.log.Info("wire: connection given up to keep the parser's memory bounded (a partial head dropped, or the connection ignored until it closes if requests were in flight)",
				"pid", k.TGID, "tls", k.TLS, "conn", k.ID, "reason", reason, "requestsLost", n,
				"givenUp", gaveUp, "lost", lost, "notLogged", held)
		}
	}
	ls := newListeners("/proc")
	parser.Resolve = func(k ConnKey) Listener {
		if k.TLS {
			return Listener{} // a TLS session has no fd of its own to look up
		}
		return ls.socket(k.TGID, uint32(k.ID))
	}
	var h2Logged uint64
	parser.OnH2 = func(k ConnKey) {
		// Log the first ones, then every 1000th: enough to explain the counter.
		if h2Logged++; h2Logged <= 10 || h2Logged%1000 == 0 {
			t.log.Info("wire: HTTP/2 connection not parsed (the wire fallback reads HTTP/1 only; HPACK is out of scope); its requests are counted in h2 unparsed, not in the stats",
				"pid", k.TGID, "tls", k.TLS, "h2Conns", h2Logged)
		}
	}
	parser.OnError = func(k ConnKey, reason string) {
		t.log.V(1).Info("wire: parse error, connection resynchronises at its next message", "pid", k.TGID, "tls", k.TLS, "conn", k.ID, "reason", reason)
	}
	var bad uint64
	badLog := logLimiter{every: 10 * time.Second}
	lastExpire := time.Now()
	tick := func() {
		if time.Since(lastExpire) > time.Second {
			parser.Expire(t.now())
			ls.forget(t.tracks)
			lastExpire = time.Now()
		}
		t.publish(parser, bad, ls.Lookups)
	}
	err := t.ring.Read(ctx, pollInterval, tick, func(raw []byte) {
		ev, derr := decodeEvent(raw, t.monoToRT)
		if derr != nil {
			bad++
			if ok, held := badLog.allow(time.Now()); ok {
				t.log.Info("wire: ring-buffer record skipped", "reason", derr.Error(), "badRecords", bad, "notLogged", held)
			}
			return
		}
		t.handle(parser, ls, ev)
	})
	t.publish(parser, bad, ls.Lookups)
	return err
}

// pollInterval bounds how long an event waits in the ring (its programs batch wake-ups),
// and how stale Status's parser counters are (kernel.IdlePoll after a quiet spell).
const pollInterval = 20 * time.Millisecond

// now is the time on the chunks' clock (CLOCK_MONOTONIC, shifted like their stamps).
func (t *Tracer) now() time.Time {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Unix(0, ts.Nano()+t.monoToRT)
}

func (t *Tracer) publish(p *Parser, bad, lookups uint64) {
	s := p.Stats()
	t.mu.Lock()
	t.pstats = s
	t.bad = bad
	t.lookups = lookups
	t.mu.Unlock()
}

// tracks reports whether pid is one of the followed gateways' processes.
func (t *Tracer) tracks(pid uint32) bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, g := range t.gws {
		for _, p := range g.pids {
			if uint32(p) == pid {
				return true
			}
		}
	}
	return false
}

func (t *Tracer) handle(p *Parser, ls *listeners, ev event) {
	k := ev.chunk.Key
	switch {
	case ev.close:
		p.Close(k, ev.chunk.TS)
		return
	case ev.accepted:
		p.Accept(k, ls.listening(k.TGID, ev.fd), ev.chunk.TS)
		return
	case ev.sslFD:
		l, ok := p.ListenerOf(ConnKey{TGID: k.TGID, ID: uint64(ev.fd)})
		if !ok {
			l = ls.socket(k.TGID, ev.fd) // a socket accepted before the agent
		}
		p.Accept(k, l, ev.chunk.TS)
		return
	}
	if t.onChunk != nil {
		t.onChunk(ev.chunk)
	}
	p.Feed(ev.chunk)
}

// logLimiter lets a log line through at most once per interval and counts those held back.
type logLimiter struct {
	every time.Duration
	last  time.Time
	held  uint64
}

// allow reports whether to log now, and how many lines were held back since the last one.
func (l *logLimiter) allow(now time.Time) (bool, uint64) {
	if !l.last.IsZero() && now.Sub(l.last) < l.every {
		l.held++
		return false, 0
	}
	held := l.held
	l.last, l.held = now, 0
	return true, held
}

// Status reports attachments and counters.
func (t *Tracer) Status() Status {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := Status{Mode: t.mode, Gateways: len(t.gws), ParserStats: t.pstats, BadRecords: t.bad, ListenerLookups: t.lookups}
	for _, l := range t.libs {
		s.Probes = append(s.Probes, l.probes...)
	}
	for _, g := range t.gws {
		s.PIDs += len(g.pids)
	}
	s.Events = kernel.PerCPUSum(t.objs.WireStats, statEvents)
	s.Dropped = kernel.PerCPUSum(t.objs.WireStats, statDrops)
	return s
}

// Close detaches everything and frees the kernel objects. Run returns.
func (t *Tracer) Close() error {
	t.closeOnce.Do(func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		for fid, l := range t.libs {
			kernel.Close(l.links)
			delete(t.libs, fid)
		}
		t.gws = map[discovery.GatewayID]*gwState{}
		t.ring.Close()
		t.objs.Close()
	})
	return nil
}
