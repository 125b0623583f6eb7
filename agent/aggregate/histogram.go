package aggregate

import (
	"math"
	"math/bits"
	"time"

	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// histogram is a log-linear (HDR-style) latency histogram.
//
// Values are bucketed in units of 100 µs. Below 2^subBits units every unit has its own bucket;
// above, each power of two is split into 2^(subBits-1) equal buckets, so a bucket is never
// wider than 1/2^(subBits-1) of its lower bound. Values of 2^maxBits units (~56 min) and more
// share the last bucket (Max is still exact).
//
// Percentiles use the nearest-rank definition: p is the ceil(p/100*n)-th smallest value. The
// histogram finds the bucket holding that value exactly (counts are exact) and reports:
//   - with sums (the summary histograms, subBits 7): the mean of the values in that bucket,
//     which lies inside the bucket, so the error is below one bucket width: < 0.1 ms under
//     12.8 ms, < 1.6% above. A bucket narrower than 1 ms holds at most one whole-millisecond
//     value, so for nginx's millisecond data percentiles up to 102.4 ms are exact;
//   - without sums (the per-row histograms, subBits 6, half the memory): the bucket midpoint,
//     error at most half a width: <= 0.05 ms under 6.4 ms, <= 1.6% above.
//
// Either way the result is clamped to the exact [min, max] seen.
type histogram struct {
	subBits uint
	unitUs  uint64 // bucket unit in µs: histUnitUs, or luaUnitUs for Lua phase times
	counts  []uint64
	sumsUs  []uint64 // per-bucket sums in µs; nil for midpoint reporting
	n       uint64
	sumUs   uint64
	minUs   uint64
	maxUs   uint64
}

const (
	histUnitUs = 100 // bucket unit: 100 µs
	// Lua phase times are tens of µs (Kong's rewrite, filters, balancer): 1 µs buckets keep
	// their percentiles exact to the µs below 128 µs. They are never merged across agents.
	luaUnitUs         = 1
	histMaxBits       = 32 // 2^32 units = 5 days (WebSockets live long)
	summarySubBits    = 7  // 1728 buckets, with sums: 27 KiB
	rowSubBits        = 6  // 896 buckets, no sums: 7 KiB
	maxRecordableUnit = 1<<histMaxBits - 1
)

func newHistogram(subBits uint, withSums bool) histogram {
	n := numBuckets(subBits)
	h := histogram{subBits: subBits, unitUs: histUnitUs, counts: make([]uint64, n), minUs: math.MaxUint64}
	if withSums {
		h.sumsUs = make([]uint64, n)
	}
	return h
}

// numBuckets is the number of buckets of the scheme with subBits (see histogram).
func numBuckets(subBits uint) int {
	return int(1<<subBits + (histMaxBits-subBits)<<(subBits-1))
}

// bucketIndex returns the bucket of a value of units (100 µs) in the scheme with subBits.
func bucketIndex(subBits uint, units uint64) int {
	sub := uint64(1) << subBits
	if units < sub {
		return int(units)
	}
	if units > maxRecordableUnit {
		units = maxRecordableUnit
	}
	e := uint(bits.Len64(units)) - subBits
	half := sub >> 1
	return int(sub + uint64(e-1)*half + (units>>e - half))
}

// bucketBounds returns bucket i's lower bound and width in units, in the scheme with subBits.
func bucketBounds(subBits uint, i int) (lower, width uint64) {
	sub := 1 << subBits
	if i < sub {
		return uint64(i), 1
	}
	half := sub >> 1
	k := i - sub
	e := uint(k/half + 1)
	return uint64(k%half+half) << e, 1 << e
}

func (h *histogram) index(units uint64) int { return bucketIndex(h.subBits, units) }

func (h *histogram) bounds(i int) (lower, width uint64) { return bucketBounds(h.subBits, i) }

func (h *histogram) record(d time.Duration) {
	us := uint64(0)
	if d > 0 {
		us = uint64(d / time.Microsecond)
	}
	i := h.index(us / h.unitUs)
	h.counts[i]++
	if h.sumsUs != nil {
		h.sumsUs[i] += us
	}
	h.n++
	h.sumUs += us
	h.minUs = min(h.minUs, us)
	h.maxUs = max(h.maxUs, us)
}

func (h *histogram) merge(o *histogram) {
	if o.n == 0 {
		return
	}
	for i, c := range o.counts {
		h.counts[i] += c
	}
	if h.sumsUs != nil && o.sumsUs != nil {
		for i, s := range o.sumsUs {
			h.sumsUs[i] += s
		}
	}
	h.n += o.n
	h.sumUs += o.sumUs
	h.minUs = min(h.minUs, o.minUs)
	h.maxUs = max(h.maxUs, o.maxUs)
}

func (h *histogram) reset() {
	if h.n == 0 {
		return
	}
	clear(h.counts)
	clear(h.sumsUs)
	h.n, h.sumUs, h.minUs, h.maxUs = 0, 0, math.MaxUint64, 0
}

// quantileMs returns the nearest-rank q-quantile (0 < q <= 1) in milliseconds, 0 if empty.
func (h *histogram) quantileMs(q float64) float64 {
	if h.n == 0 {
		return 0
	}
	rank := uint64(math.Ceil(q * float64(h.n)))
	rank = min(max(rank, 1), h.n)
	if rank == h.n {
		return float64(h.maxUs) / 1000 // the largest value is known exactly
	}
	var seen uint64
	for i, c := range h.counts {
		seen += c
		if seen < rank {
			continue
		}
		var us float64
		if h.sumsUs != nil {
			us = float64(h.sumsUs[i]) / float64(c)
		} else {
			lower, width := h.bounds(i)
			us = (float64(lower) + float64(width)/2) * float64(h.unitUs)
		}
		us = min(max(us, float64(h.minUs)), float64(h.maxUs))
		return us / 1000
	}
	return float64(h.maxUs) / 1000 // not reached: counts sum to n
}

func (h *histogram) latency() v1alpha1.Latency {
	if h.n == 0 {
		return v1alpha1.Latency{}
	}
	return v1alpha1.Latency{
		Count: h.n,
		Avg:   float64(h.sumUs) / float64(h.n) / 1000,
		P50:   h.quantileMs(0.50),
		P95:   h.quantileMs(0.95),
		P99:   h.quantileMs(0.99),
		Max:   float64(h.maxUs) / 1000,
	}
}
