package report

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// tableRows is how many hosts / paths Table lists.
const tableRows = 10

// Table renders s as a plain-text screen for the demo (redrawn every refresh): traffic, errors
// and latency for the whole run and the last window side by side, then methods, status
// classes, Lua phases and the top hosts and paths of the whole run. Plain ASCII, no colour,
// so it also reads well in a log or a test golden file.
func Table(s v1alpha1.Stats) string {
	var b strings.Builder
	t, w := s.Total, s.Window
	dataPath := s.DataPath
	if dataPath == "" {
		dataPath = "none"
	}
	fmt.Fprintf(&b, "kong-watcher  data path: %s  since %s (%s)  updated %s\n\n", dataPath,
		s.Since.UTC().Format(time.RFC3339), s.Updated.Sub(s.Since).Round(time.Second), s.Updated.UTC().Format(time.RFC3339))

	tw := tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintf(tw, "\tTOTAL\tLAST %s\n", time.Duration(w.PeriodSeconds*float64(time.Second)).Round(time.Second))
	fmt.Fprintf(tw, "requests\t%d\t%d\n", t.Requests, w.Requests)
	fmt.Fprintf(tw, "rate\t%.1f/s\t%.1f/s\n", t.RequestsPerSecond, w.RequestsPerSecond)
	fmt.Fprintf(tw, "errors (5xx, none)\t%d (%s)\t%d (%s)\n", t.Errors, percent(t.Errors, t.Requests), w.Errors, percent(w.Errors, w.Requests))
	fmt.Fprintf(tw, "client errors (4xx)\t%d\t%d\n", t.ClientErrors, w.ClientErrors)
	fmt.Fprintf(tw, "bytes sent\t%s\t%s\n", bytesIEC(t.BytesSent), bytesIEC(w.BytesSent))
	fmt.Fprintf(tw, "dropped events\t%d\t%d\n", t.DroppedEvents, w.DroppedEvents)
	_ = tw.Flush()

	fmt.Fprintf(&b, "\n%-19s%8s%9s%9s%9s%9s%9s\n", "latency ms", "count", "avg", "p50", "p95", "p99", "max")
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
