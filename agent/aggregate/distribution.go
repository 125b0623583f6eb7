package aggregate

import (
	"math"
	"slices"

	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// The Stats document's histograms (v1alpha1.Histograms) use the internal scheme with fewer
// bits and no per-bucket sums: 464 buckets at v1alpha1.MaxHistogramBits instead of 1728, so
// that both summaries' three distributions fit in the 16 KiB annotation beside some rows.
// The internal scheme's buckets nest in the exported ones, so exporting loses resolution, not
// counts.

// export returns h's values in the scheme with bits (<= h.subBits), nil when h is empty.
func (h *histogram) export(bits uint) *v1alpha1.Histogram {
	if h.n == 0 {
		return nil
	}
	out := &v1alpha1.Histogram{SumUs: h.sumUs, MinUs: h.minUs, MaxUs: h.maxUs}
	for i, c := range h.counts {
		if c > 0 {
			out.Spans = appendCount(out.Spans, h.subBits, bits, uint64(i), c)
		}
	}
	return out
}

// maxSpanGap is the most empty buckets written as zeros inside a span ("0," is 2 bytes; a new
// span "],[123," is about 7).
const maxSpanGap = 3

// appendCount adds count c of bucket i of scheme from to spans, which are in scheme to
// (to <= from). Calls must come by ascending i; the schemes' nesting keeps the spans
// ascending.
func appendCount(spans [][]uint64, from, to uint, i, c uint64) [][]uint64 {
	if to != from {
		lower, _ := bucketBounds(from, int(i))
		i = uint64(bucketIndex(to, lower))
	}
	if n := len(spans); n > 0 {
		s := spans[n-1]
		last := s[0] + uint64(len(s)) - 2 // the span's last bucket
		switch {
		case i == last:
			s[len(s)-1] = satAdd(s[len(s)-1], c)
			return spans
		case i-last <= maxSpanGap+1:
			for ; last+1 < i; last++ {
				s = append(s, 0)
			}
			spans[n-1] = append(s, c)
			return spans
		}
	}
	return append(spans, []uint64{i, c})
}

// buckets calls f with the index and count of every bucket of x (validated) that holds values.
func buckets(x *v1alpha1.Histogram, f func(i, c uint64)) {
	if x == nil {
		return
	}
	for _, s := range x.Spans {
		for k, c := range s[1:] {
			if c > 0 {
				f(s[0]+uint64(k), c)
			}
		}
	}
}

// add counts x (a validated histogram in the scheme with bits >= h.subBits) into h, which has
// no per-bucket sums. Counts saturate instead of wrapping.
func (h *histogram) add(x *v1alpha1.Histogram, bits uint) {
	if x == nil {
		return
	}
	buckets(x, func(i, c uint64) {
		j := int(i)
		if bits != h.subBits {
			lower, _ := bucketBounds(bits, j)
			j = bucketIndex(h.subBits, lower)
		}
		h.counts[j] = satAdd(h.counts[j], c)
		h.n = satAdd(h.n, c)
	})
	h.sumUs = satAdd(h.sumUs, x.SumUs)
	h.minUs = min(h.minUs, x.MinUs)
	h.maxUs = max(h.maxUs, x.MaxUs)
}

// coarsen returns x in the scheme with bits <= from (x itself when bits == from).
func coarsen(x *v1alpha1.Histogram, from, bits uint) *v1alpha1.Histogram {
	if x == nil || bits == from {
		return x
	}
	out := &v1alpha1.Histogram{SumUs: x.SumUs, MinUs: x.MinUs, MaxUs: x.MaxUs}
	buckets(x, func(i, c uint64) { out.Spans = appendCount(out.Spans, from, bits, i, c) })
	return out
}

// CoarsenHistograms returns h in the scheme with bits, or nil when bits is 0 (no histograms).
// bits at or above h.Bits returns h unchanged; h is never modified.
func CoarsenHistograms(h *v1alpha1.Histograms, bits int) *v1alpha1.Histograms {
	if h == nil || bits <= 0 {
		return nil
	}
	if bits >= h.Bits {
		return h
	}
	from, to := uint(h.Bits), uint(bits)
	return &v1alpha1.Histograms{Bits: bits,
		Latency: coarsen(h.Latency, from, to), Upstream: coarsen(h.Upstream, from, to), Kong: coarsen(h.Kong, from, to)}
}

func cloneHistogram(x *v1alpha1.Histogram) *v1alpha1.Histogram {
	if x == nil {
		return nil
	}
	c := *x
	c.Spans = make([][]uint64, len(x.Spans))
	for i, s := range x.Spans {
		c.Spans[i] = slices.Clone(s)
	}
	return &c
}

func cloneHistograms(h *v1alpha1.Histograms) *v1alpha1.Histograms {
	if h == nil {
		return nil
	}
	return &v1alpha1.Histograms{Bits: h.Bits,
		Latency: cloneHistogram(h.Latency), Upstream: cloneHistogram(h.Upstream), Kong: cloneHistogram(h.Kong)}
}

// satAdd is a + b, or the largest uint64 instead of wrapping: forged counts from an
// annotation must not wrap around to small numbers when summed.
func satAdd(a, b uint64) uint64 {
	if s := a + b; s >= a {
		return s
	}
	return math.MaxUint64
}
