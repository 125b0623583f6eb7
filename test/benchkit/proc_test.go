package benchkit

import (
	"os"
	"os/exec"
	"slices"
	"syscall"
	"testing"
	"time"
)

func TestProcReadings(t *testing.T) {
	// Burn a little CPU so that the tick-sampled figure is not 0.
	for start := time.Now(); time.Since(start) < 50*time.Millisecond; {
	}
	cpu, err := ProcCPU(os.Getpid())
	if err != nil || cpu <= 0 || cpu > SelfCPU()+time.Second/ClockTicks {
		t.Fatalf("ProcCPU = %v, %v; SelfCPU %v", cpu, err, SelfCPU())
	}
	if ThreadCPU() <= 0 {
		t.Fatal("ThreadCPU is 0")
	}
	rss, hwm, err := ProcMem(os.Getpid())
	if err != nil || rss == 0 || hwm < rss {
		t.Fatalf("ProcMem = %d, %d, %v", rss, hwm, err)
	}
	if _, err := ProcCPU(-1); err == nil {
		t.Fatal("ProcCPU of no process: no error")
	}
	prio, err := syscall.Getpriority(syscall.PRIO_PROCESS, 0)
	if err != nil {
		t.Fatal(err)
	}
	// The raw syscall returns 20 - nice.
	if n := Niceness(); n != 20-prio {
		t.Fatalf("Niceness = %d, getpriority says %d", n, 20-prio)
	}
	if l := LoadAvg(); l == "?" {
		t.Fatal("no load average")
	}
}

func TestChildrenNamed(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Skip("no sleep:", err)
	}
	defer func() { _ = cmd.Process.Kill(); _ = cmd.Wait() }()
	if got := ChildrenNamed("sleep"); !slices.Contains(got, cmd.Process.Pid) {
		t.Fatalf("ChildrenNamed(sleep) = %v, want %d among them", got, cmd.Process.Pid)
	}
	if got := ChildrenNamed("no-such-command"); len(got) != 0 {
		t.Fatalf("ChildrenNamed = %v", got)
	}
}
