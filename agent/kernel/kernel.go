// Package kernel is the kernel boundary both data paths share (agent/probes on nginx's
// request object, agent/wire on libc and OpenSSL): it loads a bpf2go collection with the
// agent's PID namespace set as load-time constants, attaches a path's table of probes with
// one fallback policy, explains missing capabilities, and reads the event ring buffer.
//
// # Attach modes
//
// uprobe_multi links (kernel 6.6+) need only CAP_BPF and CAP_PERFMON and cover all of a
// program's functions in a file with one link. Perf-event uprobes are the fallback on older
// kernels and need CAP_SYS_ADMIN as well. A program is loaded for one mode or the other, so
// the mode is decided once, by a feature probe, before loading: ModeMulti when the kernel
// has it, else ModePerf. Status fields of both paths use these two names.
package kernel

import (
	"errors"
	"fmt"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// The attach modes.
const (
	ModeMulti = "uprobe_multi"
	ModePerf  = "perf"
)

// PIDNamespace is the agent's own PID namespace as bpf_get_ns_current_pid_tgid wants it.
type PIDNamespace struct {
	// Dev is the nsfs device in the kernel's internal dev_t encoding (major<<20 | minor),
	// which the helper compares against, not stat's st_dev encoding.
	Dev uint64
	Ino uint64
	// Init: the agent runs in the initial PID namespace, where the PIDs it sees are global.
	Init bool
}

// procPidInitIno is the inode of the initial PID namespace (PROC_PID_INIT_INO).
const procPidInitIno = 0xEFFFFFFC

// OwnPIDNamespace stats /proc/self/ns/pid.
func OwnPIDNamespace() (PIDNamespace, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/pid", &st); err != nil {
		return PIDNamespace{}, fmt.Errorf("stat own PID namespace: %w", err)
	}
	return PIDNamespace{
		Dev:  uint64(unix.Major(st.Dev))<<20 | uint64(unix.Minor(st.Dev)),
		Ino:  st.Ino,
		Init: st.Ino == procPidInitIno,
	}, nil
}

// Load describes how to load one data path's collection.
type Load struct {
	// Name names the collection in errors ("nginxreq", "wire").
	Name string
	// Ring is the ring buffer map resized to RingBytes (a power of two pages).
	Ring      string
	RingBytes int
	// Consts are the load-time constants (volatile const globals) to set; NamespaceConsts
	// gives the PID namespace's.
	Consts map[string]any
	// ForcePerfEvent loads and attaches for perf-event uprobes even where uprobe_multi
	// exists: for tests and diagnosis of the older kernels' path.
	ForcePerfEvent bool
}

// NamespaceConsts returns the constants the BPF programs filter processes with, by the
// names each program gives them ("" for a constant the program does not have).
func (ns PIDNamespace) NamespaceConsts(dev, ino, init string) map[string]any {
	m := map[string]any{dev: ns.Dev, ino: ns.Ino}
	if init != "" {
		v := uint32(0)
		if ns.Init {
			v = 1
		}
		m[init] = v
	}
	return m
}

// Mode decides the attach mode: uprobe_multi where the kernel has it (unless forced off).
func Mode(forcePerf bool) (string, error) {
	if forcePerf {
		return ModePerf, nil
	}
	err := features.HaveBPFLinkUprobeMulti()
	switch {
	case err == nil:
		return ModeMulti, nil
	case IsPerm(err):
		return "", PermError("probe for uprobe_multi support", err, CapBPF, CapPerfmon)
	}
	return ModePerf, nil
}

// LoadAndAssign loads spec into objs (a bpf2go objects struct) for the attach mode it
// decides, and returns that mode.
func LoadAndAssign(spec *ebpf.CollectionSpec, objs any, l Load) (string, error) {
	mode, err := Mode(l.ForcePerfEvent)
	if err != nil {
		return "", err
	}
	if l.Ring != "" {
		m, ok := spec.Maps[l.Ring]
		if !ok {
			return "", fmt.Errorf("%s: no map %s", l.Name, l.Ring)
		}
		m.MaxEntries = uint32(l.RingBytes)
	}
	for name, v := range l.Consts {
		if name == "" {
			continue
		}
		c, ok := spec.Variables[name]
		if !ok {
			return "", fmt.Errorf("%s: no constant %s", l.Name, name)
		}
		if err := c.Set(v); err != nil {
			return "", fmt.Errorf("%s: set %s: %w", l.Name, name, err)
		}
	}
	if mode == ModeMulti {
		for _, p := range spec.Programs {
			p.AttachType = ebpf.AttachTraceUprobeMulti
		}
	}
	if err := spec.LoadAndAssign(objs, nil); err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) {
			return "", fmt.Errorf("BPF verifier rejected %s: %+v", l.Name, ve)
		}
		return "", PermError("load BPF programs ("+l.Name+")", err, CapBPF, CapPerfmon)
	}
	return mode, nil
}

// Probe is one row of a data path's probe table.
type Probe struct {
	Sym  string
	Prog *ebpf.Program
	// Ret: a return probe (uretprobe).
	Ret bool
	// Offset is where inside the function the probe sits (0: its entry).
	Offset uint64
	// Cookie is what the program reads with bpf_get_attach_cookie.
	Cookie uint64
}

// Open opens a binary or library to attach to; reading another process's files through
// /proc/<pid>/root or /proc/<pid>/exe needs CAP_SYS_PTRACE.
func Open(path string) (*link.Executable, error) {
	ex, err := link.OpenExecutable(path)
	if err != nil {
		return nil, PermError("open "+path, err, CapSysPtrace)
	}
	return ex, nil
}

// Attach attaches a table of probes to ex in mode. With uprobe_multi, the probes of one
// program and kind (entry or return) share one link; groups are attached in the order of
// their first row, so a return probe listed first is in place before its entry probe fires.
// With perf-event uprobes every row is a link of its own, in table order. On error nothing
// stays attached.
func Attach(ex *link.Executable, mode string, probes []Probe) ([]link.Link, error) {
	var links []link.Link
	fail := func(what string, err error, need ...int) ([]link.Link, error) {
		Close(links)
		return nil, PermError(what, err, need...)
	}
	if mode == ModePerf {
		for _, p := range probes {
			opts := &link.UprobeOptions{Offset: p.Offset, Cookie: p.Cookie}
			var l link.Link
			var err error
			if p.Ret {
				l, err = ex.Uretprobe(p.Sym, p.Prog, opts)
			} else {
				l, err = ex.Uprobe(p.Sym, p.Prog, opts)
			}
			if err != nil {
				return fail(fmt.Sprintf("attach %s to %s (perf)", p.Prog, p.Sym), err, CapSysAdmin, CapPerfmon, CapBPF)
			}
			links = append(links, l)
		}
		return links, nil
	}
	type groupKey struct {
		prog *ebpf.Program
		ret  bool
	}
	var order []groupKey
	groups := map[groupKey][]Probe{}
	for _, p := range probes {
		k := groupKey{p.Prog, p.Ret}
		if _, ok := groups[k]; !ok {
			order = append(order, k)
		}
		groups[k] = append(groups[k], p)
	}
	for _, k := range order {
		g := groups[k]
		syms := make([]string, len(g))
		var offs, cookies []uint64
		for i, p := range g {
			syms[i] = p.Sym
			if p.Offset != 0 && offs == nil {
				offs = make([]uint64, len(g))
			}
			if p.Cookie != 0 && cookies == nil {
				cookies = make([]uint64, len(g))
			}
		}
		for i, p := range g {
			if offs != nil {
				offs[i] = p.Offset
			}
			if cookies != nil {
				cookies[i] = p.Cookie
			}
		}
		opts := &link.UprobeMultiOptions{Offsets: offs, Cookies: cookies}
		var l link.Link
		var err error
		if k.ret {
			l, err = ex.UretprobeMulti(syms, k.prog, opts)
		} else {
			l, err = ex.UprobeMulti(syms, k.prog, opts)
		}
		if err != nil {
			return fail(fmt.Sprintf("attach %s to %s (uprobe_multi)", k.prog, strings.Join(syms, ",")), err, CapBPF, CapPerfmon)
		}
		links = append(links, l)
	}
	return links, nil
}

// Close closes links.
func Close(links []link.Link) {
	for _, l := range links {
		l.Close()
	}
}
