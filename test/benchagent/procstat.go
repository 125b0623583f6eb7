package main

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/kong-watcher/kong-watcher/test/benchkit"
)

// onCPUNanos returns the time pid's threads spent on a CPU, in ns, from
// /proc/<pid>/task/*/schedstat (exact, unlike the tick-sampled utime/stime; but threads
// that already exited are missing, so it is only used for the single-threaded workers).
func onCPUNanos(pid int) (uint64, error) {
	tasks, err := filepath.Glob(filepath.Join("/proc", strconv.Itoa(pid), "task", "*", "schedstat"))
	if err != nil || len(tasks) == 0 {
		return 0, fmt.Errorf("/proc/%d/task/*/schedstat: %v", pid, err)
	}
	var sum uint64
	for _, t := range tasks {
		raw, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		f := strings.Fields(string(raw))
		if len(f) < 1 {
			continue
		}
		n, err := strconv.ParseUint(f[0], 10, 64)
		if err == nil {
			sum += n
		}
	}
	return sum, nil
}

// cpuSample is the CPU used so far by a set of processes.
type cpuSample struct {
	at     time.Time
	ticks  map[int]uint64
	nanos  map[int]uint64
	failed []int
}

func sampleCPU(pids []int) cpuSample {
	s := cpuSample{at: time.Now(), ticks: map[int]uint64{}, nanos: map[int]uint64{}}
	for _, p := range pids {
		t, err := benchkit.ProcCPUTicks(p)
		if err != nil {
			s.failed = append(s.failed, p)
			continue
		}
		s.ticks[p] = t
		if n, err := onCPUNanos(p); err == nil {
			s.nanos[p] = n
		}
	}
	return s
}

// cpuDelta is the CPU the processes used between two samples: seconds of CPU from the
// ticks, and from schedstat, and the wall time. A process missing in either sample counts 0.
type cpuDelta struct {
	TickSec, SchedSec, WallSec float64
}

func diffCPU(a, b cpuSample) cpuDelta {
	d := cpuDelta{WallSec: b.at.Sub(a.at).Seconds()}
	for p, t1 := range b.ticks {
		if t0, ok := a.ticks[p]; ok && t1 >= t0 {
			d.TickSec += float64(t1-t0) / benchkit.ClockTicks
		}
	}
	for p, n1 := range b.nanos {
		if n0, ok := a.nanos[p]; ok && n1 >= n0 {
			d.SchedSec += float64(n1-n0) / 1e9
		}
	}
	return d
}

// countLines counts the newline-terminated lines of a file.
func countLines(path string) (int, error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	n := 0
	for {
		m, err := f.Read(buf)
		n += bytes.Count(buf[:m], []byte{'\n'})
		if err != nil {
			break
		}
	}
	return n, nil
}

// sampleTasks is the on-CPU time of each of pid's threads so far (ns, from
// /proc/<pid>/task/<tid>/schedstat): exact, unlike the tick-sampled utime+stime, which at
// 10 ms per tick cannot resolve the agent's few ms per second.
func sampleTasks(pid int) map[string]uint64 {
	out := map[string]uint64{}
	if pid == 0 {
		return out
	}
	tasks, _ := filepath.Glob(filepath.Join("/proc", strconv.Itoa(pid), "task", "*", "schedstat"))
	for _, t := range tasks {
		raw, err := os.ReadFile(t)
		if err != nil {
			continue
		}
		f := strings.Fields(string(raw))
		if len(f) < 1 {
			continue
		}
		if n, err := strconv.ParseUint(f[0], 10, 64); err == nil {
			out[filepath.Base(filepath.Dir(t))] = n
		}
	}
	return out
}

// diffTasks is the CPU seconds pid's threads used between two sampleTasks: a thread that
// started in between counts from 0; one that ended in between is lost (the Go runtime seldom
// ends its threads).
func diffTasks(a, b map[string]uint64) float64 {
	var sum uint64
	for tid, n1 := range b {
		if n0 := a[tid]; n1 >= n0 {
			sum += n1 - n0
		}
	}
	return float64(sum) / 1e9
}
