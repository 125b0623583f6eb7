package report

import (
	"cmp"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// tableRows is how many hosts / paths Table lists.
const tableRows = 10

// Table renders s as a plain-text screen for the demo (redrawn every refresh), at most 100
// columns wide: the proxy's traffic, errors and latency for the whole run and the last window
// side by side (the headline: the gateway's traffic), every listener's share (proxy, Admin
// API, Status API, unix, ...) of both, then the proxy's methods, status classes, Lua phases
// and top hosts and paths of the whole run. Plain ASCII, no colour, so it also reads well in
// a log or a test golden file.
func Table(s v1alpha1.Stats) string {
	var b strings.Builder
	t, w := s.Total, s.Window
	dataPath := s.DataPath
	if dataPath == "" {
		dataPath = "none"
	}
	// Updated as a time of day: the line stays within 100 columns.
	fmt.Fprintf(&b, "kong-watcher  data path: %s  since %s (%s)  updated %s\n\n", dataPath,
		s.Since.UTC().Format(time.RFC3339), s.Updated.Sub(s.Since).Round(time.Second), s.Updated.UTC().Format("15:04:05Z"))

	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	window := "LAST " + time.Duration(w.PeriodSeconds*float64(time.Second)).Round(time.Second).String()
	fmt.Fprintf(tw, "proxy\tTOTAL\t%s\n", window)
	fmt.Fprintf(tw, "requests\t%d\t%d\n", t.Requests, w.Requests)
	fmt.Fprintf(tw, "rate\t%.1f/s\t%.1f/s\n", t.RequestsPerSecond, w.RequestsPerSecond)
	fmt.Fprintf(tw, "errors (5xx, none)\t%d (%s)\t%d (%s)\n", t.Errors, percent(t.Errors, t.Requests), w.Errors, percent(w.Errors, w.Requests))
	fmt.Fprintf(tw, "client errors (4xx)\t%d\t%d\n", t.ClientErrors, w.ClientErrors)
	fmt.Fprintf(tw, "bytes sent\t%s\t%s\n", bytesIEC(t.BytesSent), bytesIEC(w.BytesSent))
	fmt.Fprintf(tw, "dropped events\t%d\t%d\n", t.DroppedEvents, w.DroppedEvents)
	_ = tw.Flush()

	listenerTable(&b, t.Listeners, w.Listeners, window)

	fmt.Fprintf(&b, "\n%-19s%8s%9s%9s%9s%9s%9s\n", "proxy latency ms", "count", "avg", "p50", "p95", "p99", "max")
	lat := func(name string, l v1alpha1.Latency) {
		fmt.Fprintf(&b, "%-19s%8d%9.1f%9.1f%9.1f%9.1f%9.1f\n", name, l.Count, l.Avg, l.P50, l.P95, l.P99, l.Max)
	}
	lat("total", t.LatencyMs)
	lat("upstream", t.UpstreamLatencyMs)
	lat("kong", t.KongLatencyMs)
	lat("total (window)", w.LatencyMs)
	lat("upstream (window)", w.UpstreamLatencyMs)
	lat("kong (window)", w.KongLatencyMs)
	for _, phase := range model.LuaPhaseNames {
		if l, ok := t.LuaPhasesMs[phase]; ok {
			lat("lua "+phase, l)
		}
	}

	fmt.Fprintf(&b, "\nmethods  %s\nstatus   %s\n", orNone(counts(t.Methods, nil)), orNone(counts(t.StatusClasses, statusClassOrder)))

	rows := func(title string, rs []v1alpha1.Row) {
		b.WriteString("\n")
		if len(rs) == 0 {
			fmt.Fprintf(&b, "%s: none\n", title)
			return
		}
		tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
		fmt.Fprintf(tw, "%s\trequests\terrors\tp99 ms\n", title)
		for _, r := range foldRows(rs, tableRows) {
			name := r.Name
			if name == v1alpha1.OtherRow {
				name = "(other)"
			}
			fmt.Fprintf(tw, "  %s\t%d\t%d\t%.1f\n", name, r.Requests, r.Errors, r.P99Ms)
		}
		_ = tw.Flush()
	}
	rows("top hosts", t.Hosts)
	rows("top paths", t.Paths)
	return b.String()
}

// listenerTable writes every listener of total and window (the union of their names, in
// listenerOrder) as a row: requests, rate, errors (5xx and none) and p50/p99 in ms for both
// periods side by side, "-" for a percentile of no requests. Nothing when neither has any
// listener (an agent that does not attribute requests to listeners).
func listenerTable(b *strings.Builder, total, window map[string]v1alpha1.ListenerSummary, windowTitle string) {
	if len(total) == 0 && len(window) == 0 {
		return
	}
	names := make([]string, 0, len(total)+len(window))
	for name := range total {
		names = append(names, name)
	}
	for name := range window {
		if _, ok := total[name]; !ok {
			names = append(names, name)
		}
	}
	slices.SortFunc(names, listenerOrder)
	// 12 + 41 + 3 + 41 = 97 columns; a longer name or number shifts its row (a space still
	// separates the columns).
	const half = "%9s %8s %6s %7s %7s"
	fmt.Fprintf(b, "\n%-12s%-41s | %s\n", "listeners", "TOTAL", windowTitle)
	fmt.Fprintf(b, "%-12s"+half+" | "+half+"\n", "", "requests", "rate", "errors", "p50 ms", "p99 ms",
		"requests", "rate", "errors", "p50 ms", "p99 ms")
	cols := func(l v1alpha1.ListenerSummary, ok bool) []any {
		if !ok {
			return []any{"-", "-", "-", "-", "-"}
		}
		return []any{strconv.FormatUint(l.Requests, 10), fmt.Sprintf("%.1f/s", l.RequestsPerSecond),
			strconv.FormatUint(l.Errors, 10), pct(l.LatencyMs, l.LatencyMs.P50), pct(l.LatencyMs, l.LatencyMs.P99)}
	}
	for _, name := range names {
		tl, tok := total[name]
		wl, wok := window[name]
		if name == v1alpha1.OtherRow {
			name = "(other)"
		}
		fmt.Fprintf(b, "%-11s "+half+" | "+half+"\n", append(append([]any{name}, cols(tl, tok)...), cols(wl, wok)...)...)
	}
}

// listenerOrder sorts listener names: proxy, admin, status, the other names, unix, port
// numbers (ascending), unknown, other.
func listenerOrder(a, b string) int {
	rank := func(name string) (int, int) {
		switch name {
		case model.ListenerProxy:
			return 0, 0
		case "admin":
			return 1, 0
		case "status":
			return 2, 0
		case model.ListenerUnix:
			return 4, 0
		case model.ListenerUnknown:
			return 6, 0
		case v1alpha1.OtherRow:
			return 7, 0
		}
		if port, err := strconv.Atoi(name); err == nil {
			return 5, port
		}
		return 3, 0
	}
	ra, pa := rank(a)
	rb, pb := rank(b)
	return cmp.Or(cmp.Compare(ra, rb), cmp.Compare(pa, pb), cmp.Compare(a, b))
}

// pct renders a percentile v of l in ms, with one decimal below 10 s; "-" when l has no value.
func pct(l v1alpha1.Latency, v float64) string {
	if l.Count == 0 {
		return "-"
	}
	if v >= 10000 {
		return strconv.FormatFloat(v, 'f', 0, 64)
	}
	return strconv.FormatFloat(v, 'f', 1, 64)
}

func orNone(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func bytesIEC(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := uint64(unit), 0
	for m := n / unit; m >= unit && exp < 4; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTP"[exp])
}
