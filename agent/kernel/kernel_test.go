package kernel

import (
	"errors"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestOwnPIDNamespace: the device is given in the kernel's internal encoding, whatever
// stat's encoding of it is, and the two programs' constants get the same values.
func TestOwnPIDNamespace(t *testing.T) {
	ns, err := OwnPIDNamespace()
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/pid", &st); err != nil {
		t.Fatal(err)
	}
	if want := uint64(unix.Major(st.Dev))<<20 | uint64(unix.Minor(st.Dev)); ns.Dev != want || ns.Ino != st.Ino {
		t.Fatalf("%+v, want dev %#x ino %d", ns, want, st.Ino)
	}
	a := ns.NamespaceConsts("agent_ns_dev", "agent_ns_ino", "agent_in_init_ns")
	b := ns.NamespaceConsts("pidns_dev", "pidns_ino", "")
	if a["agent_ns_dev"] != b["pidns_dev"] || a["agent_ns_ino"] != b["pidns_ino"] || len(b) != 2 {
		t.Fatalf("%v vs %v", a, b)
	}
	if init, _ := a["agent_in_init_ns"].(uint32); (init == 1) != ns.Init {
		t.Fatalf("init %v, namespace %+v", a["agent_in_init_ns"], ns)
	}
}

func TestPermError(t *testing.T) {
	if err := PermError("open x", errors.New("boom"), CapSysPtrace); err.Error() != "open x: boom" {
		t.Fatalf("%v", err)
	}
	err := PermError("load", unix.EPERM, CapBPF)
	if !errors.Is(err, unix.EPERM) || !strings.Contains(err.Error(), "CAP_BPF") {
		t.Fatalf("%v: want EPERM wrapped and CAP_BPF named", err)
	}
}
