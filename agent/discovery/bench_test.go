package discovery

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"syscall"
	"testing"
	"time"
)

// The scan benchmarks report, beside ns/op, the process CPU time (user + system, GC
// included, from getrusage) per scan, and what that is as a share of one core when Watch
// scans once a second: the agent's fixed cost. Run with -benchtime=10s for the figure of a
// ten-second loop of scans.

func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchScans measures scans as Watch makes them, one after the other with the same
// cache, or (cold) as Scan makes them, each from nothing.
func benchScans(b *testing.B, s Scanner, cold bool) {
	c := newProcCache(s)
	defer c.close()
	scan := c.scan
	if cold {
		scan = s.Scan
	} else if _, err := scan(); err != nil && !errors.Is(err, os.ErrPermission) {
		b.Fatal(err) // the first scan fills the cache
	}
	b.ReportAllocs()
	start := cpuTime(b)
	n := 0
	for b.Loop() {
		// Only an unreadable root fails: a gateway whose executable cannot be
		// identified is still a scanned gateway.
		if gs, err := scan(); err != nil && gs == nil {
			b.Fatal(err)
		}
		n++
	}
	cpu := float64(cpuTime(b)-start) / float64(n)
	b.ReportMetric(cpu, "cpu-ns/op")
	b.ReportMetric(cpu/1e9*100, "%core@1/s")
}

// BenchmarkScanHostProc measures a scan of this machine's /proc (what Watch costs per
// interval).
func BenchmarkScanHostProc(b *testing.B) {
	b.Run("watch", func(b *testing.B) { benchScans(b, Scanner{}, false) })
	b.Run("cold", func(b *testing.B) { benchScans(b, Scanner{}, true) })
	// 500 more processes the scan does not watch, as on a busy node.
	b.Run("+500/watch", func(b *testing.B) { spawnSleepers(b, 500); benchScans(b, Scanner{}, false) })
}

func spawnSleepers(b *testing.B, n int) {
	for range n {
		cmd := exec.Command("sleep", "600")
		if err := cmd.Start(); err != nil {
			b.Skip(err)
		}
		b.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	}
}

// BenchmarkScanSynthetic scans a fake /proc of n processes of which only one gateway
// (a master and four workers) is nginx: the cost must come from what is not watched.
func BenchmarkScanSynthetic(b *testing.B) {
	for _, n := range []int{100, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			root := b.TempDir()
			bin := root + "/bin"
			if err := os.WriteFile(bin, []byte("x"), 0o755); err != nil {
				b.Fatal(err)
			}
			procs := []fakeProc{{pid: 10, ppid: 1, comm: "nginx", start: 10, cmdline: padded("nginx: master process nginx"), exe: bin}}
			for pid := 11; pid < 15; pid++ {
				procs = append(procs, fakeProc{pid: pid, ppid: 10, comm: "nginx", start: uint64(pid), cmdline: padded("nginx: worker process"), exe: bin})
			}
			for pid := 100; len(procs) < n; pid++ {
				procs = append(procs, fakeProc{pid: pid, ppid: 1, comm: "java", start: uint64(pid), cmdline: title("java -jar app.jar")})
			}
			writeFakeProc(b, root, procs)
			benchScans(b, Scanner{ProcRoot: root}, false)
		})
	}
}
