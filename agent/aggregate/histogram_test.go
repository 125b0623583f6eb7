package aggregate

import (
	"testing"
	"time"
)

// TestLuaHistogramMicroseconds: Lua phase times are tens of µs; their histogram has 1 µs
// buckets, so percentiles there are exact, not one 100 µs bucket's mean.
func TestLuaHistogramMicroseconds(t *testing.T) {
	h := newHistogram(summarySubBits, true)
	h.unitUs = luaUnitUs
	for us := 1; us <= 100; us++ {
		h.record(time.Duration(us) * time.Microsecond)
	}
	l := h.latency()
	if l.P50 != 0.05 || l.P99 != 0.099 || l.Max != 0.1 || l.Count != 100 {
		t.Fatalf("latency %+v, want p50 0.050 ms, p99 0.099 ms, max 0.100 ms of 100", l)
	}
}
