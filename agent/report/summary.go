package report

import (
	"cmp"
	"encoding/json"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/aggregate"
	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// StatsLine returns the key/value pairs of the periodic info log line: the last window's
// traffic and latency, with running totals for context.
func StatsLine(s v1alpha1.Stats) []any {
	w, t := s.Window, s.Total
	kv := []any{
		"windowSeconds", round(w.PeriodSeconds, 1),
		"requests", w.Requests,
		"rps", round(w.RequestsPerSecond, 2),
		"errors", w.Errors,
		"clientErrors", w.ClientErrors,
		"p50Ms", round(w.LatencyMs.P50, 2),
		"p95Ms", round(w.LatencyMs.P95, 2),
		"p99Ms", round(w.LatencyMs.P99, 2),
		"upstreamP99Ms", round(w.UpstreamLatencyMs.P99, 2),
		"kongP99Ms", round(w.KongLatencyMs.P99, 2),
		"bytesSent", w.BytesSent,
		"dropped", w.DroppedEvents,
		"totalRequests", t.Requests,
		"totalErrors", t.Errors,
		"totalDropped", t.DroppedEvents,
		"dataPath", s.DataPath,
	}
	if len(w.Hosts) > 0 {
		kv = append(kv, "topHost", w.Hosts[0].Name)
	}
	if len(w.Paths) > 0 {
		kv = append(kv, "topPath", w.Paths[0].Name)
	}
	return kv
}

func round(v float64, digits int) float64 {
	p := math.Pow10(digits)
	return math.Round(v*p) / p
}

// DefaultMaxStatsJSON bounds the kong-watcher.io/stats annotation.
const DefaultMaxStatsJSON = 16 << 10

// topN is how many hosts / paths the short annotations list.
const topN = 5

// Annotations returns the agent's pod annotations (api/v1alpha1 names them):
//
//	kong-watcher.io/requests     total=1234 errors=5 (0.4%) rate=12.3/s
//	kong-watcher.io/latency      avg=3.2ms p50=2.1ms p95=8.0ms p99=20.1ms
//	kong-watcher.io/methods      GET=1000 POST=200
//	kong-watcher.io/status       2xx=1200 4xx=30 5xx=4
//	kong-watcher.io/top-hosts    api.example.com=900 www.example.com=300 other=34
//	kong-watcher.io/top-paths    GET /users/{id}=800, POST /orders=200, other=234
//	kong-watcher.io/last-request 2026-01-02T03:04:05Z (absent before the first request)
//	kong-watcher.io/stats        the Stats JSON, at most maxStatsJSON bytes
//
// Counts and latencies are since the agent started (Total); rate is the last window's. A
// maxStatsJSON <= 0 means DefaultMaxStatsJSON.
func Annotations(s v1alpha1.Stats, maxStatsJSON int) map[string]string {
	t := s.Total
	a := map[string]string{
		v1alpha1.AnnotationRequests: fmt.Sprintf("total=%d errors=%d (%s) rate=%s/s",
			t.Requests, t.Errors, percent(t.Errors, t.Requests), strconv.FormatFloat(round(s.Window.RequestsPerSecond, 1), 'f', -1, 64)),
		v1alpha1.AnnotationLatency: fmt.Sprintf("avg=%s p50=%s p95=%s p99=%s",
			duration(t.LatencyMs.Avg), duration(t.LatencyMs.P50), duration(t.LatencyMs.P95), duration(t.LatencyMs.P99)),
		v1alpha1.AnnotationMethods:  counts(t.Methods, nil),
		v1alpha1.AnnotationStatus:   counts(t.StatusClasses, statusClassOrder),
		v1alpha1.AnnotationTopHosts: topRows(t.Hosts, t.Requests, " "),
		v1alpha1.AnnotationTopPaths: topRows(t.Paths, t.Requests, ", "),
		v1alpha1.AnnotationStats:    StatsJSON(s, maxStatsJSON),
	}
	if t.LastRequestTime != nil {
		a[v1alpha1.AnnotationLastRequest] = t.LastRequestTime.UTC().Format(time.RFC3339)
	}
	return a
}

var statusClassOrder = []string{"1xx", "2xx", "3xx", "4xx", "5xx", "none"}

func percent(part, whole uint64) string {
	if whole == 0 {
		return "0.0%"
	}
	return strconv.FormatFloat(100*float64(part)/float64(whole), 'f', 1, 64) + "%"
}

// FormatMs renders milliseconds as the annotations do (0.4ms, 20.1ms, 1.25s), for Events
// that quote them.
func FormatMs(msVal float64) string { return duration(msVal) }

// duration renders milliseconds short, with a unit: 0.4ms, 20.1ms, 1.25s.
func duration(msVal float64) string {
	if msVal >= 1000 {
		return strconv.FormatFloat(msVal/1000, 'f', 2, 64) + "s"
	}
	return strconv.FormatFloat(msVal, 'f', 1, 64) + "ms"
}

// counts renders "k=v" pairs: in order's order when given, else by count (descending).
func counts(m map[string]uint64, order []string) string {
	keys := order
	if keys == nil {
		keys = make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		slices.SortFunc(keys, func(a, b string) int { return cmp.Or(cmp.Compare(m[b], m[a]), cmp.Compare(a, b)) })
	}
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		if n := m[k]; n > 0 {
			parts = append(parts, k+"="+strconv.FormatUint(n, 10))
		}
	}
	return strings.Join(parts, " ")
}

// topRows renders the first topN named rows and one "other" for the rest.
func topRows(rows []v1alpha1.Row, total uint64, sep string) string {
	parts := make([]string, 0, topN+1)
	var shown uint64
	for _, r := range rows {
		if r.Name == v1alpha1.OtherRow {
			continue
		}
		if len(parts) == topN {
			break
		}
		parts = append(parts, r.Name+"="+strconv.FormatUint(r.Requests, 10))
		shown += r.Requests
	}
	if total > shown {
		parts = append(parts, v1alpha1.OtherRow+"="+strconv.FormatUint(total-shown, 10))
	}
	return strings.Join(parts, sep)
}

// StatsJSON marshals s in at most limit bytes (limit <= 0: DefaultMaxStatsJSON). When the whole
// document is too big, what goes first is the host and path rows, then the listeners, then
// histogram resolution:
//
//  1. The proxy listener's histograms, which are the summary's own (aggregate.Merge takes the
//     proxy's from the summary), are left out, and the host and path lists of both summaries
//     are cut to the largest common length that fits, the cut rows folding into the "other"
//     row (its p99 becomes the largest p99 of the rows folded in: an upper bound).
//  2. If the listeners do not fit even with no rows, they lose their histograms (a merge then
//     takes their percentiles as upper bounds), with as many rows as then fit.
//  3. If they still do not fit, they are left out (a merge counts the pod's requests as its
//     proxy's only), and only if the histograms do not fit even with no rows are both
//     summaries' histograms coarsened, one bit at a time (half the buckets per octave: 8, 4,
//     2, 1), each time with as many rows as then fit; a coarser scheme only widens the stated
//     percentile error.
//  4. If even one bucket per octave does not fit, the histograms are dropped (a merge then
//     counts the pod's requests but takes its percentiles as upper bounds, see
//     aggregate.Merge), and the rows are cut again.
//  5. If even empty lists do not fit, only the header and the scalar counts are kept; failing
//     that, "{}".
//
// The result is always valid JSON.
func StatsJSON(s v1alpha1.Stats, limit int) string {
	if limit <= 0 {
		limit = DefaultMaxStatsJSON
	}
	if b, err := json.Marshal(s); err == nil && len(b) <= limit {
		return string(b)
	}
	c := s
	c.Total.Listeners = compactListeners(s.Total.Listeners, true)
	c.Window.Listeners = compactListeners(s.Window.Listeners, true)
	if b := fitRows(c, limit); b != nil {
		return string(b)
	}
	c.Total.Listeners = compactListeners(s.Total.Listeners, false)
	c.Window.Listeners = compactListeners(s.Window.Listeners, false)
	if b := fitRows(c, limit); b != nil {
		return string(b)
	}
	s.Total.Listeners, s.Window.Listeners = nil, nil
	bits := 0
	for _, h := range []*v1alpha1.Histograms{s.Total.Histograms, s.Window.Histograms} {
		if h != nil {
			bits = max(bits, h.Bits)
		}
	}
	for ; bits >= 0; bits-- {
		c := s
		c.Total.Histograms = aggregate.CoarsenHistograms(s.Total.Histograms, bits)
		c.Window.Histograms = aggregate.CoarsenHistograms(s.Window.Histograms, bits)
		if b := fitRows(c, limit); b != nil {
			return string(b)
		}
	}
	bare := v1alpha1.Stats{APIVersion: s.APIVersion, Kind: s.Kind, Since: s.Since, Updated: s.Updated, DataPath: s.DataPath,
		Total: scalars(s.Total), Window: scalars(s.Window)}
	if b, err := json.Marshal(bare); err == nil && len(b) <= limit {
		return string(b)
	}
	return "{}"
}

// compactListeners returns a copy of ls without the proxy's histograms, and without any
// listener's if onlyProxy is false.
func compactListeners(ls map[string]v1alpha1.ListenerSummary, onlyProxy bool) map[string]v1alpha1.ListenerSummary {
	if ls == nil {
		return nil
	}
	out := make(map[string]v1alpha1.ListenerSummary, len(ls))
	for name, l := range ls {
		if name == model.ListenerProxy || !onlyProxy {
			l.Histograms = nil
		}
		out[name] = l
	}
	return out
}

// fitRows returns s with the most rows that fit in limit bytes, nil if none fits even
// without named rows.
func fitRows(s v1alpha1.Stats, limit int) []byte {
	longest := 0
	for _, l := range [][]v1alpha1.Row{s.Total.Hosts, s.Total.Paths, s.Window.Hosts, s.Window.Paths} {
		longest = max(longest, len(l))
	}
	// Largest k in [0, longest] whose document fits; fits(k) is monotonic in k.
	fits := func(k int) ([]byte, bool) {
		b, err := json.Marshal(trimStats(s, k))
		return b, err == nil && len(b) <= limit
	}
	best, ok := fits(0)
	if !ok {
		return nil
	}
	lo, hi := 0, longest+1 // fits(lo) known true, fits(hi) known false
	for hi-lo > 1 {
		mid := (lo + hi) / 2
		if b, ok := fits(mid); ok {
			lo, best = mid, b
		} else {
			hi = mid
		}
	}
	return best
}

func trimStats(s v1alpha1.Stats, k int) v1alpha1.Stats {
	s.Total.Hosts, s.Total.Paths = foldRows(s.Total.Hosts, k), foldRows(s.Total.Paths, k)
	s.Window.Hosts, s.Window.Paths = foldRows(s.Window.Hosts, k), foldRows(s.Window.Paths, k)
	return s
}

// foldRows keeps the first k named rows and folds the rest into a final "other" row (see
// aggregate.FoldRows, which the merge of several pods' rows uses too).
func foldRows(rows []v1alpha1.Row, k int) []v1alpha1.Row { return aggregate.FoldRows(rows, k) }

func scalars(s v1alpha1.Summary) v1alpha1.Summary {
	s.Methods, s.StatusCodes, s.LuaPhasesMs, s.Hosts, s.Paths, s.Histograms, s.Listeners = nil, nil, nil, nil, nil, nil, nil
	return s
}
