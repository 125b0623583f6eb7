package rollup

import (
	"fmt"
	"math"
	"strconv"
	"time"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"

	"github.com/kong-watcher/kong-watcher/agent/report"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// maxNote bounds an Event's note (the API server refuses more than 1 KiB).
const maxNote = 1000

// eventAction is the Events' action: what the manager did when it noticed.
const eventAction = "Rollup"

// evaluate raises and resolves the workload's alerts on the merged window, and records
// TrafficStats when due. An alert is raised once per episode, resolved once.
func (r *Rollup) evaluate(st *state, w workloadRef, m v1alpha1.Stats, th thresholds, reporting string, now time.Time) {
	win := m.Window
	enough := win.Requests > 0 && win.Requests >= th.minRequests
	ratio := 0.0
	if win.Requests > 0 {
		ratio = float64(win.Errors) / float64(win.Requests)
	}
	over := fmt.Sprintf("over the last %s (%s)", span(win.PeriodSeconds), reporting)
	if high := enough && ratio > th.errorRate; high != st.errorAlert {
		st.errorAlert = high
		if high {
			r.event(w, corev1.EventTypeWarning, v1alpha1.ReasonHighErrorRate,
				"error rate %s %s: %d of %d requests failed (5xx or no response), above the %s threshold",
				pct(ratio), over, win.Errors, win.Requests, pct(th.errorRate))
		} else {
			r.event(w, corev1.EventTypeNormal, v1alpha1.ReasonHighErrorRateResolved,
				"error rate back to %s %s: %d of %d requests, threshold %s", pct(ratio), over, win.Errors, win.Requests, pct(th.errorRate))
		}
	}
	p99 := win.LatencyMs.P99
	if high := enough && p99 > th.latencyP99Ms; high != st.latencyAlert {
		st.latencyAlert = high
		if high {
			r.event(w, corev1.EventTypeWarning, v1alpha1.ReasonHighLatency,
				"p99 latency %s %s: %d requests, p50 %s, max %s, above the %s threshold",
				report.FormatMs(p99), over, win.Requests, report.FormatMs(win.LatencyMs.P50), report.FormatMs(win.LatencyMs.Max), report.FormatMs(th.latencyP99Ms))
		} else {
			r.event(w, corev1.EventTypeNormal, v1alpha1.ReasonHighLatencyResolved,
				"p99 latency back to %s %s: %d requests, threshold %s", report.FormatMs(p99), over, win.Requests, report.FormatMs(th.latencyP99Ms))
		}
	}
	// The first TrafficStats comes with the first window busy enough to alert on, then one
	// every TrafficStatsInterval.
	if every := r.o.TrafficStatsInterval; every > 0 && (enough && !st.sawTraffic || now.Sub(st.lastTraffic) >= every) {
		st.lastTraffic = now
		st.sawTraffic = st.sawTraffic || enough
		r.event(w, corev1.EventTypeNormal, v1alpha1.ReasonTrafficStats,
			"last %s (%s): %d requests (%.1f/s), %d errors (%s), p50 %s p99 %s; the current pods' totals: %d requests, %d errors",
			span(win.PeriodSeconds), reporting, win.Requests, win.RequestsPerSecond, win.Errors, pct(ratio),
			report.FormatMs(win.LatencyMs.P50), report.FormatMs(p99), m.Total.Requests, m.Total.Errors)
	}
}

func (r *Rollup) event(w workloadRef, eventType, reason, format string, args ...any) {
	ref := &corev1.ObjectReference{Kind: w.Kind, APIVersion: "apps/v1", Namespace: w.Namespace, Name: w.Name, UID: w.UID}
	r.rec.Eventf(ref, nil, eventType, reason, eventAction, "%s", truncate(fmt.Sprintf(format, args...), maxNote))
}

// truncate cuts s to at most n bytes on a character boundary.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func pct(f float64) string { return strconv.FormatFloat(100*f, 'f', 1, 64) + "%" }

// span renders a period in whole seconds: 30s, 1m0s.
func span(sec float64) string {
	return (time.Duration(math.Round(min(sec, 1e9))) * time.Second).String()
}
