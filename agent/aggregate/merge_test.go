package aggregate

import (
	"cmp"
	"encoding/json"
	"fmt"
	"maps"
	"math"
	"math/rand/v2"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// halfBucketMs is the error bound of a percentile from a histogram of the Stats' scheme, for
// an exact value of v ms: half the width of v's bucket (0.05 ms below 3.2 ms, 3.125% above).
func halfBucketMs(v float64) float64 {
	_, width := bucketBounds(v1alpha1.MaxHistogramBits, bucketIndex(v1alpha1.MaxHistogramBits, uint64(v*1000)/histUnitUs))
	return float64(width) * histUnitUs / 2 / 1000
}

// randomRequests returns n requests with a mix of listeners, hosts, paths, methods, statuses
// and a heavy-tailed latency, ending between start and start+period.
func randomRequests(r *rand.Rand, n int, start time.Time, period time.Duration) []*model.Request {
	out := make([]*model.Request, n)
	for i := range out {
		lat := time.Duration(math.Exp(r.NormFloat64()*1.3+8.5)) * time.Microsecond
		q := &model.Request{
			Method:    []string{"GET", "GET", "POST", "PURGE"}[r.IntN(4)],
			Host:      fmt.Sprintf("h%d.example.com", r.IntN(6)),
			URI:       fmt.Sprintf("/p%c/%d", 'a'+rune(r.IntN(8)), r.IntN(1000)),
			Status:    []int{200, 200, 200, 201, 404, 500, 502, 0}[r.IntN(8)],
			Latency:   lat,
			BytesSent: uint64(r.IntN(5000)),
			End:       start.Add(time.Duration(r.Int64N(int64(period)))),
			Listener:  []string{"", "", model.ListenerProxy, "admin", model.ListenerUnix}[r.IntN(5)],
		}
		if r.IntN(3) > 0 {
			q.HasUpstream, q.Upstream = true, lat*time.Duration(1+r.IntN(9))/10
		}
		out[i] = q
	}
	return out
}

// feed plays two windows of requests into the aggregators: every request goes to all and to
// one of pods. It returns the exact latencies of the total and of the last window, in ms, by
// listener.
func feed(t *testing.T, r *rand.Rand, clk *fakeClock, all *Aggregator, pods []*Aggregator) (total, window map[string][]float64) {
	t.Helper()
	total = map[string][]float64{}
	for w := 0; w < 2; w++ {
		window = map[string][]float64{}
		for _, q := range randomRequests(r, 3000, clk.Now(), 30*time.Second) {
			all.Observe(q)
			pods[r.IntN(len(pods))].Observe(q)
			ms := float64(q.Latency/time.Microsecond) / 1000
			l := cmp.Or(q.Listener, model.ListenerProxy)
			total[l], window[l] = append(total[l], ms), append(window[l], ms)
		}
		all.AddDropped(2)
		pods[0].AddDropped(2)
		clk.Add(30 * time.Second)
		all.Rotate()
		for _, p := range pods {
			p.Rotate()
		}
	}
	for _, m := range []map[string][]float64{total, window} {
		for _, ms := range m {
			slices.Sort(ms)
		}
	}
	return total, window
}

// The merge of several aggregators' snapshots equals one aggregator fed all the same
// requests: counts exactly, percentiles within half a bucket of the exact nearest-rank value.
func TestMergeEqualsOneAggregator(t *testing.T) {
	r := rand.New(rand.NewPCG(11, 12))
	clk := &fakeClock{t: t0}
	all := New(Options{Now: clk.Now})
	pods := []*Aggregator{New(Options{Now: clk.Now}), New(Options{Now: clk.Now}), New(Options{Now: clk.Now})}
	exactTotal, exactWindow := feed(t, r, clk, all, pods)
	docs := make([]v1alpha1.Stats, len(pods))
	for i, p := range pods {
		docs[i] = roundTrip(t, p.Snapshot())
	}
	want := all.Snapshot()
	got := Merge(docs, MergeOptions{})
	if err := Validate(&got); err != nil {
		t.Fatalf("the merge does not validate: %v", err)
	}
	for _, c := range []struct {
		name      string
		got, want v1alpha1.Summary
		exact     map[string][]float64
	}{{"total", got.Total, want.Total, exactTotal}, {"window", got.Window, want.Window, exactWindow}} {
		t.Run(c.name, func(t *testing.T) {
			// The headline is the proxy's; every listener merges as the headline does.
			if len(c.got.Listeners) != 3 || len(c.want.Listeners) != 3 {
				t.Fatalf("listeners %v, want %v", slices.Sorted(maps.Keys(c.got.Listeners)), slices.Sorted(maps.Keys(c.want.Listeners)))
			}
			for name, l := range c.got.Listeners {
				g, w, exact := summaryOf(l), summaryOf(c.want.Listeners[name]), c.exact[name]
				if g.Requests != uint64(len(exact)) || fmt.Sprint(g.StatusCodes, g.Methods, g.Errors, g.BytesSent, g.UpstreamLatencyMs.Count) !=
					fmt.Sprint(w.StatusCodes, w.Methods, w.Errors, w.BytesSent, w.UpstreamLatencyMs.Count) {
					t.Errorf("listener %s: %d requests, codes %v; want %d, %v", name, g.Requests, g.StatusCodes, len(exact), w.StatusCodes)
				}
				if p99 := nearestRank(exact, 0.99); math.Abs(g.LatencyMs.P99-p99) > halfBucketMs(p99)+1e-9 || g.Histograms == nil {
					t.Errorf("listener %s: p99 %v, exact %v", name, g.LatencyMs.P99, p99)
				}
			}
			if p := summaryOf(c.got.Listeners[model.ListenerProxy]); p.Requests != c.got.Requests || p.LatencyMs != c.got.LatencyMs {
				t.Errorf("listener proxy %d requests %+v, the headline %d %+v", p.Requests, p.LatencyMs, c.got.Requests, c.got.LatencyMs)
			}
			g, w := c.got, c.want
			for _, f := range []struct {
				name      string
				got, want any
			}{
				{"requests", g.Requests, w.Requests}, {"responses", g.Responses, w.Responses}, {"errors", g.Errors, w.Errors},
				{"clientErrors", g.ClientErrors, w.ClientErrors}, {"methods", g.Methods, w.Methods}, {"codes", g.StatusCodes, w.StatusCodes},
				{"classes", g.StatusClasses, w.StatusClasses}, {"bytes", g.BytesSent, w.BytesSent}, {"dropped", g.DroppedEvents, w.DroppedEvents},
				{"last", g.LastRequestTime.Equal(*w.LastRequestTime), true}, {"period", g.PeriodSeconds, w.PeriodSeconds},
				{"latency count", g.LatencyMs.Count, w.LatencyMs.Count}, {"upstream count", g.UpstreamLatencyMs.Count, w.UpstreamLatencyMs.Count},
				{"kong count", g.KongLatencyMs.Count, w.KongLatencyMs.Count}, {"max", g.LatencyMs.Max, w.LatencyMs.Max},
				{"rows", rowCounts(g.Hosts), rowCounts(w.Hosts)}, {"path rows", rowCounts(g.Paths), rowCounts(w.Paths)},
			} {
				if fmt.Sprint(f.got) != fmt.Sprint(f.want) {
					t.Errorf("%s = %v, want %v", f.name, f.got, f.want)
				}
			}
			if math.Abs(g.RequestsPerSecond-w.RequestsPerSecond) > 1e-9 || math.Abs(g.LatencyMs.Avg-w.LatencyMs.Avg) > 1e-9 {
				t.Errorf("rps %v avg %v, want %v %v", g.RequestsPerSecond, g.LatencyMs.Avg, w.RequestsPerSecond, w.LatencyMs.Avg)
			}
			for _, q := range []struct {
				p   float64
				got float64
			}{{0.50, g.LatencyMs.P50}, {0.95, g.LatencyMs.P95}, {0.99, g.LatencyMs.P99}} {
				exact := nearestRank(c.exact[model.ListenerProxy], q.p)
				if math.Abs(q.got-exact) > halfBucketMs(exact)+1e-9 {
					t.Errorf("p%v = %v, exact %v: more than half a bucket (%v) off", q.p*100, q.got, exact, halfBucketMs(exact))
				}
			}
			// A row's p99 is the largest of the pods': at least the true one, less the rows'
			// own bucket error (1/64 of the value), and the rows still add up.
			for i, row := range g.Hosts {
				if single := w.Hosts[i]; row.P99Ms < single.P99Ms*(1-2.0/64)-0.1 {
					t.Errorf("host %s p99 %v below the single aggregator's %v", row.Name, row.P99Ms, single.P99Ms)
				}
			}
			checkSummaryRows(t, c.name, g, DefaultMaxRows)
			if g.Histograms == nil || g.Histograms.Bits != v1alpha1.MaxHistogramBits {
				t.Fatalf("histograms = %+v", g.Histograms)
			}
		})
	}
	if !got.Since.Equal(t0) || !got.Updated.Equal(clk.Now()) || got.Total.PeriodSeconds != 60 {
		t.Errorf("since %v updated %v period %v", got.Since, got.Updated, got.Total.PeriodSeconds)
	}
	// Merging the merge with nothing else changes nothing but what a single part keeps.
	again := Merge([]v1alpha1.Stats{roundTrip(t, got)}, MergeOptions{})
	if a, b := mustJSON(t, again), mustJSON(t, got); a != b {
		t.Errorf("merge of one merged document differs:\n%s\n%s", a, b)
	}
}

func rowCounts(rows []v1alpha1.Row) string {
	var b strings.Builder
	for _, r := range rows {
		fmt.Fprintf(&b, "%s=%d/%d ", r.Name, r.Requests, r.Errors)
	}
	return b.String()
}

// roundTrip is what the rollup sees: the document as JSON, parsed and validated.
func roundTrip(t *testing.T, s v1alpha1.Stats) v1alpha1.Stats {
	t.Helper()
	out, err := ParseStats(mustJSON(t, s))
	if err != nil {
		t.Fatalf("a snapshot does not parse: %v", err)
	}
	return out
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// A pod whose histograms were dropped still counts; its percentiles bound the merged ones from
// above, and the merged document claims no histograms.
func TestMergeWithoutHistograms(t *testing.T) {
	clk := &fakeClock{t: t0}
	fast, slow := New(Options{Now: clk.Now}), New(Options{Now: clk.Now})
	for i := 0; i < 100; i++ {
		fast.Observe(req("GET", "h", "/", 200, time.Duration(1+i%3)*time.Millisecond))
		slow.Observe(req("GET", "h", "/", 200, time.Duration(200+i)*time.Millisecond))
	}
	clk.Add(30 * time.Second)
	a, b := fast.Snapshot(), slow.Snapshot()
	b.Total.Histograms, b.Window.Histograms = nil, nil
	m := Merge([]v1alpha1.Stats{a, b}, MergeOptions{})
	if m.Total.Histograms != nil || m.Window.Histograms != nil {
		t.Error("a merge with a part lacking histograms claims histograms")
	}
	if m.Total.LatencyMs.Count != 200 || m.Total.Requests != 200 {
		t.Errorf("counts %d/%d, want 200", m.Total.LatencyMs.Count, m.Total.Requests)
	}
	// The true p99 is ~298 ms; the bound is the slow pod's p99, the p50 at least the slow pod's.
	if m.Total.LatencyMs.P99 != b.Total.LatencyMs.P99 || m.Total.LatencyMs.P50 < b.Total.LatencyMs.P50 {
		t.Errorf("p50 %v p99 %v, want bounds %v %v", m.Total.LatencyMs.P50, m.Total.LatencyMs.P99, b.Total.LatencyMs.P50, b.Total.LatencyMs.P99)
	}
	if err := Validate(&m); err != nil {
		t.Error(err)
	}
}

// Rows of the same name add up across pods and are re-ranked; the top-N bound holds.
func TestMergeRanksRows(t *testing.T) {
	doc := func(rows ...v1alpha1.Row) v1alpha1.Stats {
		var n uint64
		for _, r := range rows {
			n += r.Requests
		}
		return v1alpha1.Stats{Total: v1alpha1.Summary{ListenerSummary: v1alpha1.ListenerSummary{Requests: n}, Hosts: rows}}
	}
	m := Merge([]v1alpha1.Stats{
		doc(v1alpha1.Row{Name: "a", Requests: 10, P99Ms: 1}, v1alpha1.Row{Name: "c", Requests: 6, Errors: 1, P99Ms: 9}, v1alpha1.Row{Name: "other", Requests: 1, P99Ms: 50}),
		doc(v1alpha1.Row{Name: "b", Requests: 9}, v1alpha1.Row{Name: "c", Requests: 6, Errors: 2, P99Ms: 3}, v1alpha1.Row{Name: "d", Requests: 2, P99Ms: 70}),
	}, MergeOptions{MaxRows: 2})
	want := []v1alpha1.Row{{Name: "c", Requests: 12, Errors: 3, P99Ms: 9}, {Name: "a", Requests: 10, P99Ms: 1}, {Name: "other", Requests: 12, P99Ms: 70}}
	if !slices.Equal(m.Total.Hosts, want) {
		t.Errorf("rows = %+v, want %+v", m.Total.Hosts, want)
	}
}

// The window is the union of the pods' windows; a zero-length window (a stale pod's, left
// out by the caller) takes no part; rates add up.
func TestMergeWindows(t *testing.T) {
	at := func(updated time.Time, period, rps float64, requests uint64) v1alpha1.Stats {
		return v1alpha1.Stats{Since: updated.Add(-time.Hour), Updated: updated, DataPath: "wire",
			Total:  v1alpha1.Summary{ListenerSummary: v1alpha1.ListenerSummary{Requests: 10 * requests, RequestsPerSecond: rps / 10}, PeriodSeconds: 3600},
			Window: v1alpha1.Summary{ListenerSummary: v1alpha1.ListenerSummary{Requests: requests, RequestsPerSecond: rps}, PeriodSeconds: period}}
	}
	stale := at(t0.Add(-10*time.Minute), 30, 5, 150)
	stale.Window = v1alpha1.Summary{}
	stale.DataPath = "nginx-request"
	m := Merge([]v1alpha1.Stats{at(t0, 30, 2, 60), at(t0.Add(-10*time.Second), 30, 1, 30), stale}, MergeOptions{})
	if m.Window.PeriodSeconds != 40 || m.Window.Requests != 90 || m.Window.RequestsPerSecond != 3 {
		t.Errorf("window %vs %d requests %v/s, want 40s 90 3/s", m.Window.PeriodSeconds, m.Window.Requests, m.Window.RequestsPerSecond)
	}
	if m.Total.Requests != 2400 || !m.Since.Equal(t0.Add(-70*time.Minute)) || !m.Updated.Equal(t0) || m.Total.PeriodSeconds != 4200 {
		t.Errorf("total %d since %v updated %v period %v", m.Total.Requests, m.Since, m.Updated, m.Total.PeriodSeconds)
	}
	if m.DataPath != "nginx-request,wire" {
		t.Errorf("dataPath %q", m.DataPath)
	}
	if m := Merge(nil, MergeOptions{}); m.Total.Requests != 0 || m.Window.PeriodSeconds != 0 || m.Kind != v1alpha1.StatsKind {
		t.Errorf("empty merge = %+v", m)
	}
}

// Exported histograms validate, coarsen without losing counts, and stay within the stated
// error after coarsening.
func TestHistogramExportAndCoarsen(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	h := newHistogram(summarySubBits, true)
	var exact []float64
	for i := 0; i < 20000; i++ {
		d := time.Duration(math.Exp(r.NormFloat64()*2+9)) * time.Microsecond
		h.record(d)
		exact = append(exact, float64(d/time.Microsecond)/1000)
	}
	slices.Sort(exact)
	x := h.export(v1alpha1.MaxHistogramBits)
	for bits := v1alpha1.MaxHistogramBits; bits >= 1; bits-- {
		c := CoarsenHistograms(&v1alpha1.Histograms{Bits: v1alpha1.MaxHistogramBits, Latency: x}, bits)
		if err := validateHistogram(c.Latency, uint(bits), h.n); err != nil {
			t.Fatalf("bits %d: %v", bits, err)
		}
		back := newHistogram(uint(bits), false)
		back.add(c.Latency, uint(bits))
		for _, q := range []float64{0.5, 0.9, 0.99} {
			want := nearestRank(exact, q)
			_, width := bucketBounds(uint(bits), bucketIndex(uint(bits), uint64(want*1000)/histUnitUs))
			if got := back.quantileMs(q); math.Abs(got-want) > float64(width)*histUnitUs/2/1000+1e-9 {
				t.Errorf("bits %d p%v = %v, exact %v", bits, q*100, got, want)
			}
		}
		t.Logf("bits %d: %d spans, %d bytes of JSON", bits, len(c.Latency.Spans), len(mustJSON(t, c)))
	}
	if c := CoarsenHistograms(&v1alpha1.Histograms{Bits: 3, Latency: x}, 0); c != nil {
		t.Error("bits 0 keeps histograms")
	}
}

// A summary without listeners (an older agent's, or cut to fit the annotation) counts as its
// proxy's; listeners beyond the bound fold into other, the busiest keeping their names; no
// listeners anywhere, none in the merge.
func TestMergeListeners(t *testing.T) {
	l := func(requests uint64) v1alpha1.ListenerSummary {
		return v1alpha1.ListenerSummary{Requests: requests, Responses: requests, StatusCodes: map[string]uint64{"200": requests}}
	}
	doc := func(requests uint64, ls map[string]v1alpha1.ListenerSummary) v1alpha1.Stats {
		return v1alpha1.Stats{Total: v1alpha1.Summary{ListenerSummary: v1alpha1.ListenerSummary{Requests: requests, Responses: requests}, Listeners: ls}}
	}
	many := map[string]v1alpha1.ListenerSummary{model.ListenerProxy: l(5), OtherListener: l(1)}
	for i := range v1alpha1.MaxListeners {
		many[fmt.Sprint(9000+i)] = l(uint64(100 + i))
	}
	m := Merge([]v1alpha1.Stats{
		doc(5, many),
		doc(7, nil),
		doc(3, map[string]v1alpha1.ListenerSummary{model.ListenerProxy: l(3), "admin": l(4)}),
	}, MergeOptions{})
	got := m.Total.Listeners
	if len(got) != v1alpha1.MaxListeners || got[model.ListenerProxy].Requests != 15 || got["9015"].Requests != 115 ||
		got["9002"].Requests != 102 || got[OtherListener].Requests != 1+4+100+101 {
		t.Errorf("merged listeners %v", listenerCounts(got))
	}
	if err := Validate(&m); err != nil {
		t.Error(err)
	}
	if m := Merge([]v1alpha1.Stats{doc(7, nil), doc(3, nil)}, MergeOptions{}); m.Total.Listeners != nil || m.Window.Listeners != nil {
		t.Errorf("listeners from documents without any: %v", listenerCounts(m.Total.Listeners))
	}
}

func listenerCounts(ls map[string]v1alpha1.ListenerSummary) map[string]uint64 {
	out := map[string]uint64{}
	for name, l := range ls {
		out[name] = l.Requests
	}
	return out
}
