package wire

import (
	"fmt"
	"testing"
	"unsafe"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"

	"github.com/kong-watcher/kong-watcher/bpf"
)

// handle decodes the event header by offset; this pins those offsets to the C layout (as
// bpf2go generated it from BTF).
func TestEventHeaderLayout(t *testing.T) {
	var h bpf.WireWireEventHdr
	for _, c := range []struct {
		name      string
		got, want uintptr
	}{
		{"ts", unsafe.Offsetof(h.Ts), 0},
		{"conn", unsafe.Offsetof(h.Conn), 8},
		{"tgid", unsafe.Offsetof(h.Tgid), 16},
		{"len", unsafe.Offsetof(h.Len), 20},
		{"cap", unsafe.Offsetof(h.Cap), 24},
		{"fn", unsafe.Offsetof(h.Fn), 26},
		{"kind", unsafe.Offsetof(h.Kind), 27},
		{"dir", unsafe.Offsetof(h.Dir), 28},
		{"tls", unsafe.Offsetof(h.Tls), 29},
		{"size", unsafe.Sizeof(h), 32},
	} {
		if c.got != c.want {
			t.Errorf("%s at %d, decoder assumes %d", c.name, c.got, c.want)
		}
	}
}

// Uprobe programs are preemptible (migration is disabled, preemption is not), so a task on the
// same CPU can run them in the middle of another run: an event staged in a per-CPU buffer could
// be overwritten before it is sent. Events must be built in the ring records they reserve. This
// checks the compiled object: per-CPU maps hold counters only, and nothing is sent with
// bpf_ringbuf_output (which copies a staged event).
func TestNoSharedEventScratch(t *testing.T) {
	spec, err := bpf.LoadWire()
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range sharedScratch(spec) {
		t.Error(p)
	}
}

func sharedScratch(spec *ebpf.CollectionSpec) (problems []string) {
	for name, m := range spec.Maps {
		if (m.Type == ebpf.PerCPUArray || m.Type == ebpf.PerCPUHash) && m.ValueSize > 8 {
			problems = append(problems, fmt.Sprintf("map %s: per-CPU values of %d bytes (a scratch buffer shared by preempted runs?)", name, m.ValueSize))
		}
	}
	for name, p := range spec.Programs {
		for _, ins := range p.Instructions {
			if ins.IsBuiltinCall() && asm.BuiltinFunc(ins.Constant) == asm.FnRingbufOutput {
				problems = append(problems, fmt.Sprintf("program %s: bpf_ringbuf_output copies an event staged elsewhere", name))
			}
		}
	}
	return problems
}
