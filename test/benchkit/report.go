package benchkit

import (
	"net"
	"time"
)

// Percentile is the nearest-rank q-quantile (0 < q <= 1) of sorted: the smallest value with at
// least q of the samples at or below it; Percentile(sorted, 1) is the maximum. 0 when empty.
func Percentile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}

// Millis is d in milliseconds, the unit the reports give latencies in.
func Millis(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

// Micros is d in microseconds, the unit the reports give CPU per request in.
func Micros(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// MiB is b bytes in MiB, the unit the reports give memory in.
func MiB(b uint64) float64 { return float64(b) / (1 << 20) }

// FreePort is a TCP port on 127.0.0.1 that was free a moment ago, for a server the benchmark
// starts (the benchmarks listen on loopback only).
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
