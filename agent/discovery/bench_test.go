package discovery

import (
	"fmt"
	"os"
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

func benchScans(b *testing.B, s Scanner) {
	b.ReportAllocs()
	start := cpuTime(b)
	n := 0
	for b.Loop() {
		// Only an unreadable root fails: a gateway whose executable cannot be
		// identified is still a scanned gateway.
		if gs, err := s.Scan(); err != nil && gs == nil {
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
func BenchmarkScanHostProc(b *testing.B) { benchScans(b, Scanner{}) }

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
			benchScans(b, Scanner{ProcRoot: root})
		})
	}
}
