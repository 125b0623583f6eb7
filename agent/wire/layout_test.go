package wire

import (
	"testing"
	"unsafe"

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
