package main

import (
	"encoding/json"
	"fmt"
	"os/exec"
	"syscall"
	"unsafe"
)

// enableBPFStats turns on the kernel's run-time accounting of BPF programs (BPF_ENABLE_STATS,
// BPF_STATS_RUN_TIME) for as long as the returned function is not called: unlike the
// kernel.bpf_stats_enabled sysctl it cannot be left on by a crash (the fd closes with us).
func enableBPFStats() (func(), error) {
	const (
		sysBPF          = 321 // x86-64
		bpfEnableStats  = 32
		bpfStatsRunTime = 0
	)
	attr := struct{ typ uint32 }{bpfStatsRunTime}
	fd, _, errno := syscall.Syscall(sysBPF, bpfEnableStats, uintptr(unsafe.Pointer(&attr)), unsafe.Sizeof(attr))
	if errno != 0 {
		return func() {}, fmt.Errorf("BPF_ENABLE_STATS: %w", errno)
	}
	return func() { syscall.Close(int(fd)) }, nil
}

// bpfProgStats is the run count and run time of the BPF programs owned by pid.
type bpfProgStats struct {
	Progs         int
	RunCnt, RunNS uint64
}

func agentBPFStats(pid int) (bpfProgStats, error) {
	var s bpfProgStats
	if pid == 0 {
		return s, fmt.Errorf("no agent")
	}
	own := ownedProgIDs(pid)
	if len(own) == 0 {
		return s, fmt.Errorf("no BPF program fd in /proc/%d/fdinfo", pid)
	}
	out, err := exec.Command("bpftool", "-j", "prog", "show").Output()
	if err != nil {
		return s, fmt.Errorf("bpftool prog show: %w", err)
	}
	var progs []struct {
		ID        int    `json:"id"`
		RunTimeNS uint64 `json:"run_time_ns"`
		RunCnt    uint64 `json:"run_cnt"`
	}
	if err := json.Unmarshal(out, &progs); err != nil {
		return s, fmt.Errorf("bpftool prog show: %w", err)
	}
	for _, p := range progs {
		if own[p.ID] {
			s.Progs++
			s.RunCnt += p.RunCnt
			s.RunNS += p.RunTimeNS
		}
	}
	return s, nil
}
