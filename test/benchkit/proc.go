package benchkit

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// ClockTicks is USER_HZ, the unit of utime and stime in /proc/<pid>/stat: 100 on every Linux
// architecture Go supports (sysconf(_SC_CLK_TCK) would need cgo).
const ClockTicks = 100

// readStat reads /proc/<pid>/stat (pid may be "self") and returns the command name and the
// fields after it, so that fields[0] is field 3 of proc(5) (state), fields[1] field 4 (ppid),
// fields[11] and [12] fields 14 and 15 (utime, stime), fields[16] field 19 (nice). The name
// may hold spaces and parentheses: it runs from the first '(' to the last ')'.
func readStat(pid string) (comm string, fields []string, err error) {
	raw, err := os.ReadFile("/proc/" + pid + "/stat")
	if err != nil {
		return "", nil, err
	}
	s := string(raw)
	open, closeP := strings.IndexByte(s, '('), strings.LastIndexByte(s, ')')
	if open < 0 || closeP < open {
		return "", nil, fmt.Errorf("/proc/%s/stat: no (comm)", pid)
	}
	return s[open+1 : closeP], strings.Fields(s[closeP+1:]), nil
}

// ProcCPUTicks is utime+stime of pid (all its threads, live and exited) in ClockTicks.
func ProcCPUTicks(pid int) (uint64, error) {
	_, f, err := readStat(strconv.Itoa(pid))
	if err != nil {
		return 0, err
	}
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f))
	}
	u, err1 := strconv.ParseUint(f[11], 10, 64)
	s, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, fmt.Errorf("/proc/%d/stat: bad utime/stime", pid)
	}
	return u + s, nil
}

// ProcCPU is pid's user + system CPU time so far (ProcCPUTicks as a duration).
func ProcCPU(pid int) (time.Duration, error) {
	t, err := ProcCPUTicks(pid)
	return time.Duration(t) * time.Second / ClockTicks, err
}

// ProcMem is pid's VmRSS and VmHWM (the peak RSS) in bytes, from /proc/<pid>/status. It fails
// when neither is there (a kernel thread, or a zombie whose memory is gone).
func ProcMem(pid int) (rss, hwm uint64, err error) {
	raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, 0, err
	}
	sc := bufio.NewScanner(bytes.NewReader(raw))
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if !ok || (k != "VmRSS" && k != "VmHWM") {
			continue
		}
		f := strings.Fields(v) // "12345 kB"
		if len(f) < 1 {
			continue
		}
		kb, err := strconv.ParseUint(f[0], 10, 64)
		if err != nil {
			continue
		}
		if k == "VmRSS" {
			rss = kb << 10
		} else {
			hwm = kb << 10
		}
	}
	if rss == 0 && hwm == 0 {
		return 0, 0, fmt.Errorf("/proc/%d/status: no VmRSS/VmHWM", pid)
	}
	return rss, hwm, nil
}

// ChildrenNamed returns the pids of this process's children whose command name is name, such
// as the kube-apiserver and etcd envtest starts, so their CPU can be read too.
func ChildrenNamed(name string) []int {
	ents, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	me := os.Getpid()
	var out []int
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		comm, f, err := readStat(e.Name())
		if err != nil || len(f) < 2 || comm != name {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); ppid == me {
			out = append(out, pid)
		}
	}
	return out
}

// SelfCPU is this process's user + system CPU time so far (getrusage, exact: not sampled in ticks).
func SelfCPU() time.Duration { return rusageCPU(syscall.RUSAGE_SELF) }

// ThreadCPU is the calling OS thread's CPU time: with runtime.LockOSThread, the cost of a
// loop that the rest of the machine's load does not inflate as much as wall time.
func ThreadCPU() time.Duration { return rusageCPU(1 /* RUSAGE_THREAD: not in package syscall */) }

func rusageCPU(who int) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(who, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// Niceness is this process's nice value (field 19 of /proc/self/stat), for the reports: the
// benchmark scripts raise their priority on the shared machine when they can.
func Niceness() int {
	_, f, err := readStat("self")
	if err != nil || len(f) < 17 {
		return 0
	}
	n, _ := strconv.Atoi(f[16])
	return n
}

// LoadAvg is the 1, 5 and 15-minute load averages as /proc/loadavg prints them ("?" when
// unreadable): a run's numbers are only comparable with the machine's other load beside them.
func LoadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "?"
	}
	return strings.Join(f[:3], " ")
}
