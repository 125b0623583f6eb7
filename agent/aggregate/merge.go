package aggregate

import (
	"cmp"
	"math"
	"slices"
	"strings"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// MergeOptions configure Merge; zero values take the defaults.
type MergeOptions struct {
	// MaxRows bounds the named host and path rows of each merged summary (default
	// DefaultMaxRows); the rest fold into "other".
	MaxRows int
}

// Merge combines the Stats of several pods (validated, see Validate) into one document, as if
// one agent had seen all their requests:
//
//   - Counts, methods, status codes, bytes and dropped events are summed (saturating at the
//     largest uint64 rather than wrapping).
//   - Latency percentiles are recomputed from the merged histograms, never averaged: within
//     half a bucket of the exact value (see v1alpha1.Histograms; 3.125% above 3.2 ms at the
//     default scheme). Histograms of different schemes merge at the coarser. A summary with
//     values but no histograms (StatsJSON dropped them to fit) still counts in Count, Avg
//     (the count-weighted mean of the averages) and Max, and its own percentiles bound the
//     merged ones from above: a mixture's quantile is at most the largest of its parts'. The
//     merged summary then has no Histograms, so a merge of merges stays honest. When only one
//     summary has values, its latencies are kept as they are. Lua phase times have no
//     histograms: their percentiles are the largest of the pods' (an upper bound).
//   - Host and path rows of the same name are summed and re-ranked by requests (then name);
//     the top MaxRows keep a row, the rest and every pod's "other" fold into "other". A row's
//     p99 cannot be recomputed from rows: it is the largest of the pods' p99 for that name (or,
//     for "other", of everything folded in), an upper bound.
//   - Since is the earliest, Updated the latest, LastRequestTime the latest; DataPath is the
//     pods' distinct data paths, sorted and joined by ",".
//   - Listeners of the same name merge as summaries do; a summary without Listeners (from an
//     agent that did not attribute requests, or cut to fit the annotation) counts as its
//     proxy's only. The proxy's part is always the summary itself, which counts the proxy
//     only (report.StatsJSON leaves out the proxy listener's copy of the histograms). Beyond
//     v1alpha1.MaxListeners, the listeners with the fewest requests fold into "other". When
//     no summary has Listeners, neither has the merge.
//   - Total.PeriodSeconds is Updated - Since. Window is the union of the pods' last windows: a
//     window is taken to end at its document's Updated, and PeriodSeconds spans from the
//     earliest start to the latest end; a window of zero length (the caller's way of leaving a
//     stale pod's window out) takes no part. RequestsPerSecond of either is the sum of the
//     pods' rates, since the pods serve side by side: summed requests over the span would
//     undercount when the pods' windows are staggered.
func Merge(docs []v1alpha1.Stats, o MergeOptions) v1alpha1.Stats {
	if o.MaxRows <= 0 {
		o.MaxRows = DefaultMaxRows
	}
	out := v1alpha1.Stats{APIVersion: v1alpha1.StatsAPIVersion, Kind: v1alpha1.StatsKind}
	totals := make([]*v1alpha1.Summary, 0, len(docs))
	windows := make([]*v1alpha1.Summary, 0, len(docs))
	var paths []string
	var wStart, wEnd time.Time
	for i := range docs {
		d := &docs[i]
		if i == 0 || d.Since.Before(out.Since) {
			out.Since = d.Since
		}
		if i == 0 || d.Updated.After(out.Updated) {
			out.Updated = d.Updated
		}
		if d.DataPath != "" && !slices.Contains(paths, d.DataPath) {
			paths = append(paths, d.DataPath)
		}
		totals = append(totals, &d.Total)
		if d.Window.PeriodSeconds > 0 {
			windows = append(windows, &d.Window)
			start := d.Updated.Add(-seconds(d.Window.PeriodSeconds))
			if len(windows) == 1 || start.Before(wStart) {
				wStart = start
			}
			if len(windows) == 1 || d.Updated.After(wEnd) {
				wEnd = d.Updated
			}
		}
	}
	slices.Sort(paths)
	out.DataPath = strings.Join(paths, ",")
	out.Total = mergeSummaries(totals, o.MaxRows)
	out.Total.PeriodSeconds = max(out.Updated.Sub(out.Since).Seconds(), 0)
	out.Total.Listeners = mergeListeners(totals, out.Total)
	out.Window = mergeSummaries(windows, o.MaxRows)
	out.Window.PeriodSeconds = wEnd.Sub(wStart).Seconds()
	out.Window.Listeners = mergeListeners(windows, out.Window)
	return out
}

// mergeListeners merges the Listeners of sums by name (see Merge); merged is the merge of
// sums, the proxy's.
func mergeListeners(sums []*v1alpha1.Summary, merged v1alpha1.Summary) map[string]v1alpha1.ListenerSummary {
	parts := map[string][]*v1alpha1.Summary{}
	requests := map[string]uint64{}
	attributed := false
	for _, s := range sums {
		attributed = attributed || s.Listeners != nil
		for name, l := range s.Listeners {
			if name == model.ListenerProxy {
				continue
			}
			p := summaryOf(l)
			parts[name] = append(parts[name], &p)
			requests[name] = satAdd(requests[name], l.Requests)
		}
	}
	if !attributed {
		return nil
	}
	// The busiest keep their names, beside the proxy and other.
	var names []string
	for name := range parts {
		if name != OtherListener {
			names = append(names, name)
		}
	}
	slices.SortFunc(names, func(a, b string) int { return cmp.Or(cmp.Compare(requests[b], requests[a]), cmp.Compare(a, b)) })
	for _, name := range names[min(len(names), v1alpha1.MaxListeners-2):] {
		parts[OtherListener] = append(parts[OtherListener], parts[name]...)
		delete(parts, name)
	}
	out := make(map[string]v1alpha1.ListenerSummary, len(parts)+1)
	out[model.ListenerProxy] = listenerOf(merged)
	for name, ps := range parts {
		out[name] = listenerOf(mergeSummaries(ps, 0))
	}
	return out
}

// seconds converts s to a Duration, the longest one for more seconds than a Duration holds.
func seconds(s float64) time.Duration {
	if s >= float64(math.MaxInt64/time.Second) {
		return math.MaxInt64
	}
	return time.Duration(s * float64(time.Second))
}

func mergeSummaries(sums []*v1alpha1.Summary, maxRows int) v1alpha1.Summary {
	out := v1alpha1.Summary{ListenerSummary: v1alpha1.ListenerSummary{Methods: map[string]uint64{}, StatusCodes: map[string]uint64{}, StatusClasses: map[string]uint64{}}}
	hosts := make([][]v1alpha1.Row, 0, len(sums))
	paths := make([][]v1alpha1.Row, 0, len(sums))
	lua := map[string][]part{}
	parts := [3][]part{}
	bits := v1alpha1.MaxHistogramBits
	complete := true // every summary with values has histograms
	for _, s := range sums {
		out.Requests = satAdd(out.Requests, s.Requests)
		out.Responses = satAdd(out.Responses, s.Responses)
		out.Errors = satAdd(out.Errors, s.Errors)
		out.ClientErrors = satAdd(out.ClientErrors, s.ClientErrors)
		out.RequestsPerSecond += s.RequestsPerSecond
		out.BytesSent = satAdd(out.BytesSent, s.BytesSent)
		out.DroppedEvents = satAdd(out.DroppedEvents, s.DroppedEvents)
		addCounts(out.Methods, s.Methods)
		addCounts(out.StatusCodes, s.StatusCodes)
		addCounts(out.StatusClasses, s.StatusClasses)
		if t := s.LastRequestTime; t != nil && (out.LastRequestTime == nil || t.After(*out.LastRequestTime)) {
			last := *t
			out.LastRequestTime = &last
		}
		hosts = append(hosts, s.Hosts)
		paths = append(paths, s.Paths)
		for name, l := range s.LuaPhasesMs {
			lua[name] = append(lua[name], part{lat: l})
		}
		h := s.Histograms
		if h == nil {
			h = &v1alpha1.Histograms{}
			complete = complete && s.LatencyMs.Count == 0 && s.UpstreamLatencyMs.Count == 0 && s.KongLatencyMs.Count == 0
		} else {
			bits = min(bits, h.Bits)
		}
		for i, l := range [...]v1alpha1.Latency{s.LatencyMs, s.UpstreamLatencyMs, s.KongLatencyMs} {
			x := [...]*v1alpha1.Histogram{h.Latency, h.Upstream, h.Kong}[i]
			parts[i] = append(parts[i], part{lat: l, hist: x, bits: uint(h.Bits)})
		}
	}
	var hists [3]*v1alpha1.Histogram
	out.LatencyMs, hists[0] = mergeLatency(parts[0], uint(bits))
	out.UpstreamLatencyMs, hists[1] = mergeLatency(parts[1], uint(bits))
	out.KongLatencyMs, hists[2] = mergeLatency(parts[2], uint(bits))
	if complete && out.Requests > 0 {
		out.Histograms = &v1alpha1.Histograms{Bits: bits, Latency: hists[0], Upstream: hists[1], Kong: hists[2]}
	}
	for name, ps := range lua {
		if out.LuaPhasesMs == nil {
			out.LuaPhasesMs = map[string]v1alpha1.Latency{}
		}
		out.LuaPhasesMs[name], _ = mergeLatency(ps, 0)
	}
	out.Hosts = mergeRows(hosts, maxRows)
	out.Paths = mergeRows(paths, maxRows)
	return out
}

func addCounts(dst, src map[string]uint64) {
	for k, n := range src {
		dst[k] = satAdd(dst[k], n)
	}
}

// part is one pod's latency summary and its histogram (nil: none, or no values).
type part struct {
	lat  v1alpha1.Latency
	hist *v1alpha1.Histogram
	bits uint
}

// mergeLatency combines the parts (see Merge) and returns the merged histogram in the scheme
// with bits, nil when some part with values has none.
func mergeLatency(parts []part, bits uint) (v1alpha1.Latency, *v1alpha1.Histogram) {
	var out v1alpha1.Latency
	var only *part
	var weighted float64
	contributors := 0
	for i := range parts {
		p := &parts[i]
		if p.lat.Count == 0 {
			continue
		}
		contributors++
		only = p
		out.Count = satAdd(out.Count, p.lat.Count)
		weighted += p.lat.Avg * float64(p.lat.Count)
		out.Max = max(out.Max, p.lat.Max)
	}
	switch contributors {
	case 0:
		return v1alpha1.Latency{}, nil
	case 1:
		if only.hist == nil {
			return only.lat, nil
		}
		return only.lat, coarsen(only.hist, only.bits, bits)
	}
	out.Avg = weighted / float64(out.Count)
	var h histogram
	if bits > 0 {
		h = newHistogram(bits, false)
	}
	complete := bits > 0
	var bound v1alpha1.Latency // the largest percentiles of the parts without a histogram
	for _, p := range parts {
		switch {
		case p.lat.Count == 0:
		case p.hist == nil || bits == 0:
			complete = false
			bound.P50, bound.P95, bound.P99 = max(bound.P50, p.lat.P50), max(bound.P95, p.lat.P95), max(bound.P99, p.lat.P99)
		default:
			h.add(p.hist, p.bits)
		}
	}
	if h.n > 0 {
		out.P50, out.P95, out.P99 = h.quantileMs(0.50), h.quantileMs(0.95), h.quantileMs(0.99)
	}
	out.P50, out.P95, out.P99 = min(max(out.P50, bound.P50), out.Max), min(max(out.P95, bound.P95), out.Max), min(max(out.P99, bound.P99), out.Max)
	if !complete {
		return out, nil
	}
	return out, h.export(bits)
}

// mergeRows sums the rows of the same name from every list and keeps the top maxRows.
func mergeRows(lists [][]v1alpha1.Row, maxRows int) []v1alpha1.Row {
	byName := map[string]int{}
	var rows []v1alpha1.Row
	other := v1alpha1.Row{Name: v1alpha1.OtherRow}
	for _, l := range lists {
		for _, r := range l {
			dst := &other
			if r.Name != v1alpha1.OtherRow {
				i, ok := byName[r.Name]
				if !ok {
					i = len(rows)
					byName[r.Name] = i
					rows = append(rows, v1alpha1.Row{Name: r.Name})
				}
				dst = &rows[i]
			}
			addRow(dst, r)
		}
	}
	slices.SortFunc(rows, func(a, b v1alpha1.Row) int {
		return cmp.Or(cmp.Compare(b.Requests, a.Requests), cmp.Compare(a.Name, b.Name))
	})
	if other.Requests > 0 {
		rows = append(rows, other)
	}
	return FoldRows(rows, maxRows)
}

func addRow(dst *v1alpha1.Row, r v1alpha1.Row) {
	dst.Requests = satAdd(dst.Requests, r.Requests)
	dst.Errors = satAdd(dst.Errors, r.Errors)
	dst.P99Ms = max(dst.P99Ms, r.P99Ms)
}

// FoldRows keeps the first k named rows and folds the rest, and any "other" row, into a final
// "other" row whose p99 is the largest folded in (an upper bound). It does not modify rows.
func FoldRows(rows []v1alpha1.Row, k int) []v1alpha1.Row {
	out := make([]v1alpha1.Row, 0, min(k, len(rows))+1)
	other := v1alpha1.Row{Name: v1alpha1.OtherRow}
	for _, r := range rows {
		if r.Name != v1alpha1.OtherRow && len(out) < k {
			out = append(out, r)
			continue
		}
		addRow(&other, r)
	}
	if other.Requests > 0 {
		out = append(out, other)
	}
	return out
}
