package kernel

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Capability numbers (linux/capability.h).
const (
	CapSysPtrace = 19
	CapSysAdmin  = 21
	CapPerfmon   = 38
	CapBPF       = 39
)

var capNames = map[int]string{
	CapSysPtrace: "CAP_SYS_PTRACE",
	CapSysAdmin:  "CAP_SYS_ADMIN",
	CapPerfmon:   "CAP_PERFMON",
	CapBPF:       "CAP_BPF",
}

// EffectiveCaps reads CapEff of the agent itself.
func EffectiveCaps() (uint64, error) {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "CapEff:"); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 16, 64)
		}
	}
	return 0, errors.New("no CapEff in /proc/self/status")
}

// IsPerm reports whether err is the kernel refusing an operation for lack of privilege.
func IsPerm(err error) bool {
	return errors.Is(err, unix.EPERM) || errors.Is(err, unix.EACCES) || errors.Is(err, os.ErrPermission)
}

// PermError explains a permission error by the capabilities that op needs and the agent
// lacks, so a misconfigured securityContext is obvious from the log line. Other errors are
// only prefixed with op.
func PermError(op string, err error, need ...int) error {
	if !IsPerm(err) {
		return fmt.Errorf("%s: %w", op, err)
	}
	eff, cerr := EffectiveCaps()
	if cerr != nil {
		return fmt.Errorf("%s: %w (effective capabilities unknown: %v)", op, err, cerr)
	}
	var missing []string
	for _, c := range need {
		if eff&(1<<c) == 0 {
			missing = append(missing, capNames[c])
		}
	}
	if len(missing) == 0 {
		return fmt.Errorf("%s: %w (CapEff=%#x has %s; a seccomp/LSM policy or sysctl kernel.unprivileged_bpf_disabled/perf_event_paranoid may refuse it)",
			op, err, eff, capList(need))
	}
	return fmt.Errorf("%s: %w: missing capability %s (CapEff=%#x)", op, err, strings.Join(missing, ", "), eff)
}

func capList(cs []int) string {
	var s []string
	for _, c := range cs {
		s = append(s, capNames[c])
	}
	return strings.Join(s, ", ")
}
