package aggregate

import (
	"encoding/json"
	"errors"
	"fmt"

	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// Bounds a Stats document from outside the agent (an annotation anyone with pod patch rights
// can write, or a report) must keep. They are far above what an agent produces; they keep
// forged numbers from overflowing when many documents are merged, and forged lists from
// costing memory.
const (
	// MaxStatsBytes is the API server's bound on all of an object's annotations together.
	MaxStatsBytes = 256 << 10
	// MaxCount bounds every count (2^48: a million requests a second for nine years), so that
	// summing 65,536 documents cannot overflow.
	MaxCount = 1 << 48
	// maxFloat bounds rates, periods and latencies; a sum of many stays finite.
	maxFloat = 1e15
)

// ParseStats decodes a kong-watcher.io/stats annotation and checks it with Validate.
func ParseStats(s string) (v1alpha1.Stats, error) {
	var out v1alpha1.Stats
	if len(s) > MaxStatsBytes {
		return out, fmt.Errorf("stats: %d bytes, more than %d", len(s), MaxStatsBytes)
	}
	if err := json.Unmarshal([]byte(s), &out); err != nil {
		return v1alpha1.Stats{}, fmt.Errorf("stats: %w", err)
	}
	if err := Validate(&out); err != nil {
		return v1alpha1.Stats{}, err
	}
	return out, nil
}

// Validate checks what Merge relies on: the header; counts within MaxCount and consistent
// (responses, errors, latency counts, and the method, status and row counts added up, at most
// the requests); finite non-negative numbers; bounded rows and maps
// (v1alpha1.MaxReportedRows entries, names of 1 to v1alpha1.MaxReportedNames bytes); at most
// v1alpha1.MaxListeners listeners, each checked as a summary is; and
// well-formed histograms: a known scheme, spans ascending, not overlapping, inside the scheme
// and neither starting nor ending with an empty bucket, counts adding up to their Latency's
// Count, MinUs and MaxUs in the first and last bucket.
func Validate(s *v1alpha1.Stats) error {
	if s.APIVersion != v1alpha1.StatsAPIVersion || s.Kind != v1alpha1.StatsKind {
		return fmt.Errorf("stats: apiVersion %q kind %q, want %q %q", s.APIVersion, s.Kind, v1alpha1.StatsAPIVersion, v1alpha1.StatsKind)
	}
	if len(s.DataPath) > v1alpha1.MaxReportedNames {
		return errors.New("stats: dataPath too long")
	}
	if err := validateSummary(&s.Total); err != nil {
		return fmt.Errorf("stats: total: %w", err)
	}
	if err := validateSummary(&s.Window); err != nil {
		return fmt.Errorf("stats: window: %w", err)
	}
	return nil
}

func validateSummary(s *v1alpha1.Summary) error {
	for _, n := range [...]uint64{s.Requests, s.Responses, s.Errors, s.ClientErrors, s.DroppedEvents} {
		if n > MaxCount {
			return fmt.Errorf("count %d above %d", n, uint64(MaxCount))
		}
	}
	if s.Responses > s.Requests || s.Errors > s.Requests || s.ClientErrors > s.Responses {
		return fmt.Errorf("responses %d, errors %d, client errors %d do not fit %d requests", s.Responses, s.Errors, s.ClientErrors, s.Requests)
	}
	if err := checkFloats(s.PeriodSeconds, s.RequestsPerSecond); err != nil {
		return err
	}
	lat := [...]*v1alpha1.Latency{&s.LatencyMs, &s.UpstreamLatencyMs, &s.KongLatencyMs}
	for _, l := range lat {
		if err := validateLatency(l, s.Requests); err != nil {
			return err
		}
	}
	if err := validateHistograms(s.Histograms, lat); err != nil {
		return err
	}
	for _, m := range [...]map[string]uint64{s.Methods, s.StatusCodes, s.StatusClasses} {
		if err := checkMap(m); err != nil {
			return err
		}
		var sum uint64
		for _, n := range m {
			if sum += n; n > s.Requests || sum > s.Requests {
				return fmt.Errorf("method or status counts add up to more than the %d requests", s.Requests)
			}
		}
	}
	if err := checkMap(s.LuaPhasesMs); err != nil {
		return err
	}
	for _, l := range s.LuaPhasesMs {
		if err := validateLatency(&l, s.Requests); err != nil {
			return err
		}
	}
	if len(s.Listeners) > v1alpha1.MaxListeners {
		return fmt.Errorf("%d listeners, more than %d", len(s.Listeners), v1alpha1.MaxListeners)
	}
	for name, l := range s.Listeners {
		ls := summaryOf(l)
		if err := checkName(name); err != nil {
			return fmt.Errorf("listener: %w", err)
		}
		if err := validateSummary(&ls); err != nil {
			return fmt.Errorf("listener %q: %w", name, err)
		}
	}
	for _, rows := range [...][]v1alpha1.Row{s.Hosts, s.Paths} {
		if len(rows) > v1alpha1.MaxReportedRows {
			return fmt.Errorf("%d rows, more than %d", len(rows), v1alpha1.MaxReportedRows)
		}
		// Rows add up to at most the summary's requests and errors (exactly, from an agent), so
		// that merged rows, duplicate names included, never count more than their summary.
		var requests, errs uint64
		for _, r := range rows {
			if err := checkName(r.Name); err != nil {
				return err
			}
			requests, errs = requests+min(r.Requests, MaxCount+1), errs+min(r.Errors, MaxCount+1)
			if r.Errors > r.Requests || requests > s.Requests || errs > s.Errors {
				return fmt.Errorf("row %q: rows add up to %d requests and %d errors in a summary of %d and %d", r.Name, requests, errs, s.Requests, s.Errors)
			}
			if err := checkFloats(r.P99Ms); err != nil {
				return err
			}
		}
	}
	return nil
}

func checkMap[V any](m map[string]V) error {
	if len(m) > v1alpha1.MaxReportedRows {
		return fmt.Errorf("%d entries, more than %d", len(m), v1alpha1.MaxReportedRows)
	}
	for k := range m {
		if err := checkName(k); err != nil {
			return err
		}
	}
	return nil
}

func checkName(name string) error {
	if name == "" || len(name) > v1alpha1.MaxReportedNames {
		return fmt.Errorf("a name of %d bytes (want 1 to %d)", len(name), v1alpha1.MaxReportedNames)
	}
	return nil
}

func checkFloats(fs ...float64) error {
	for _, f := range fs {
		if !(f >= 0 && f <= maxFloat) { // also false for NaN
			return fmt.Errorf("number %v out of range [0, %g]", f, maxFloat)
		}
	}
	return nil
}

func validateLatency(l *v1alpha1.Latency, requests uint64) error {
	if l.Count > requests {
		return fmt.Errorf("latency count %d above the %d requests", l.Count, requests)
	}
	return checkFloats(l.Avg, l.P50, l.P95, l.P99, l.Max)
}

// validateHistograms checks h against the summary's latency, upstream and Kong latencies.
func validateHistograms(h *v1alpha1.Histograms, lat [3]*v1alpha1.Latency) error {
	if h == nil {
		return nil
	}
	if h.Bits < 1 || h.Bits > v1alpha1.MaxHistogramBits {
		return fmt.Errorf("histograms: bits %d, want 1 to %d", h.Bits, v1alpha1.MaxHistogramBits)
	}
	for i, x := range [...]*v1alpha1.Histogram{h.Latency, h.Upstream, h.Kong} {
		if err := validateHistogram(x, uint(h.Bits), lat[i].Count); err != nil {
			return fmt.Errorf("histograms: %s: %w", [...]string{"latency", "upstream", "kong"}[i], err)
		}
	}
	return nil
}

func validateHistogram(x *v1alpha1.Histogram, bits uint, count uint64) error {
	if x == nil || len(x.Spans) == 0 {
		if count != 0 {
			return fmt.Errorf("no buckets for %d values", count)
		}
		return nil
	}
	n := uint64(numBuckets(bits))
	var sum, next uint64 // next: the lowest index the next span may start at
	for _, s := range x.Spans {
		// A span's buckets are [s[0], s[0]+len(s)-2]: inside the scheme, after the last span.
		if len(s) < 2 {
			return errors.New("a span without counts")
		}
		if s[0] < next || s[0] >= n || uint64(len(s)-1) > n-s[0] {
			return fmt.Errorf("a span of %d counts at bucket %d overlaps another or leaves the %d buckets", len(s)-1, s[0], n)
		}
		if s[1] == 0 || s[len(s)-1] == 0 {
			return fmt.Errorf("the span at bucket %d starts or ends with an empty bucket", s[0])
		}
		for _, c := range s[1:] {
			if c > MaxCount-sum {
				return fmt.Errorf("bucket counts add up to more than %d", uint64(MaxCount))
			}
			sum += c
		}
		next = s[0] + uint64(len(s)) - 1
	}
	if sum != count {
		return fmt.Errorf("buckets count %d values, the latency %d", sum, count)
	}
	first, end := x.Spans[0], x.Spans[len(x.Spans)-1]
	if x.MinUs > x.MaxUs ||
		uint64(bucketIndex(bits, x.MinUs/histUnitUs)) != first[0] ||
		uint64(bucketIndex(bits, x.MaxUs/histUnitUs)) != end[0]+uint64(len(end))-2 {
		return fmt.Errorf("min %d µs or max %d µs outside the first or last bucket", x.MinUs, x.MaxUs)
	}
	return nil
}
