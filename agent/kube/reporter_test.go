package kube

import (
	"context"
	"net/http"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

func TestNewChecksItsOptions(t *testing.T) {
	m := newManager(t)
	if _, err := New(Options{CA: m.caPEM(), TokenFile: "/t", Namespace: ns, PodName: podName}); err == nil {
		t.Error("no URL accepted")
	}
	_, err := New(Options{URL: m.srv.URL, CA: []byte("not a PEM"), TokenFile: "/t", Namespace: ns, PodName: podName})
	if err == nil || !strings.Contains(err.Error(), v1alpha1.EnvManagerCA) {
		t.Errorf("a CA without a certificate: %v", err)
	}
}

// The token is sent as a bearer token and read again for every report (the kubelet rotates
// it); the report names the agent's pod.
func TestReportCarriesTokenAndPod(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	box := &statsBox{s: stats(100, 1, 5)}
	r, _ := newReporter(t, m, box, nil)
	ctx := context.Background()
	if !r.Tick(ctx) {
		t.Fatal("first report failed")
	}
	writeToken(t, r.o.TokenFile, "token-2")
	box.set(func(s *v1alpha1.Stats) { s.Total.Requests++ })
	if !r.Tick(ctx) {
		t.Fatal("second report failed")
	}
	got := m.reports()
	if len(got) != 2 {
		t.Fatalf("%d reports, want 2", len(got))
	}
	if got[0].token != "token-1" || got[1].token != "token-2" {
		t.Errorf("tokens %q and %q, want token-1 then token-2 (trimmed, read for each report)", got[0].token, got[1].token)
	}
	for i, g := range got {
		if g.rep.Pod != (v1alpha1.PodRef{Namespace: ns, Name: podName}) {
			t.Errorf("report %d: pod %+v", i, g.rep.Pod)
		}
	}
	if got[0].rep.Stats == nil || got[0].rep.Stats.Total.Requests != 100 || got[1].rep.Stats == nil || got[1].rep.Stats.Total.Requests != 101 {
		t.Errorf("stats not sent as they changed: %+v, %+v", got[0].rep.Stats, got[1].rep.Stats)
	}
	// A token that cannot be read is a failed report, retried; nothing is sent without it.
	if err := os.Remove(r.o.TokenFile); err != nil {
		t.Fatal(err)
	}
	box.set(func(s *v1alpha1.Stats) { s.Total.Requests++ })
	if r.Tick(ctx) {
		t.Error("a report without its token succeeded")
	}
	if n := m.count(); n != 2 {
		t.Errorf("%d reports sent without a token", n-2)
	}
}

func TestStatsSentOnlyWhenChanged(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	box := &statsBox{s: stats(100, 1, 5)}
	r, _ := newReporter(t, m, box, nil)
	ctx := context.Background()
	tick := func(want int, what string) *v1alpha1.Report {
		t.Helper()
		if !r.Tick(ctx) {
			t.Fatalf("%s: report failed", what)
		}
		got := m.reports()
		if len(got) != want {
			t.Fatalf("%s: %d reports, want %d", what, len(got), want)
		}
		return &got[len(got)-1].rep
	}
	if rep := tick(1, "first"); rep.Stats == nil {
		t.Fatal("the first report has no stats")
	}
	// Only the always-moving fields change: nothing to send.
	box.set(func(s *v1alpha1.Stats) { s.Updated = s.Updated.Add(30 * time.Second); s.Window.PeriodSeconds = 30.02 })
	tick(1, "only updated and the window's period moved")
	box.set(func(s *v1alpha1.Stats) { s.Total.Requests = 150 })
	if rep := tick(2, "new traffic"); rep.Stats == nil || rep.Stats.Total.Requests != 150 {
		t.Fatalf("new traffic: stats %+v", rep.Stats)
	}
	// An Event alone: a report without stats.
	note(r, "e1")
	if rep := tick(3, "an Event"); rep.Stats != nil || len(rep.Events) != 1 {
		t.Fatalf("an Event with unchanged stats: stats %v, %d Events", rep.Stats != nil, len(rep.Events))
	}
	// Unchanged stats two intervals old are sent again (the manager tells a live pod by them).
	r.sentAt = r.sentAt.Add(-2 * r.o.Interval)
	if rep := tick(4, "two intervals"); rep.Stats == nil || rep.Stats.Total.Requests != 150 {
		t.Fatalf("unchanged stats two intervals old not sent again: %+v", rep.Stats)
	}
	tick(4, "just sent")
}

// Run sends unchanged stats about every other interval, not at every tick.
func TestRunResendsUnchangedStatsEveryOtherInterval(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	const interval = 40 * time.Millisecond
	base := stats(100, 1, 5)
	r, _ := newReporter(t, m, nil, func(o *Options) {
		o.Interval = interval
		o.Stats = func() v1alpha1.Stats {
			s := base
			s.Updated = time.Now()
			s.Window.PeriodSeconds = 30 + float64(time.Now().UnixNano()%1000)/1e6
			return s
		}
	})
	start(t, r)
	waitFor(t, "4 reports", func() bool { return m.count() >= 4 })
	got := m.reports()
	for i, g := range got {
		if g.rep.Stats == nil {
			t.Fatalf("report %d without stats (nothing else to send)", i)
		}
		if i > 0 {
			// A report is sent when the last one is 1.9 intervals old, measured from its answer.
			if gap := g.at.Sub(got[i-1].at); gap < 19*interval/10 {
				t.Errorf("report %d came %v after the previous, want at least 1.9 intervals (%v)", i, gap, 19*interval/10)
			}
		}
	}
}

// 410: the pod is gone; the reporter stops.
func TestPodGoneStopsReporting(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	m.answer = func(int) int { return http.StatusGone }
	r, logs := newReporter(t, m, &statsBox{s: stats(100, 1, 5)}, nil)
	note(r, "e1")
	_, done := start(t, r)
	select {
	case <-done:
	case <-time.After(waitTimeout):
		t.Fatal("Run still running after 410")
	}
	if n := m.count(); n != 1 {
		t.Errorf("%d reports, want 1", n)
	}
	if n := logs.count("no longer exists (410)"); n != 1 {
		t.Errorf("410 logged %d times", n)
	}
	if n := logs.count("cannot report"); n != 0 {
		t.Errorf("410 logged as a failure")
	}
}

func TestRunReturnsWhenCancelled(t *testing.T) {
	t.Parallel()
	for name, setup := range map[string]func(m *fakeManager, o *Options){
		"idle": func(*fakeManager, *Options) {},
		"report in flight": func(m *fakeManager, o *Options) {
			m.hang = true
			o.RequestTimeout = time.Hour
		},
		"backing off": func(m *fakeManager, o *Options) {
			m.answer = func(int) int { return http.StatusServiceUnavailable }
			o.InitialBackoff, o.MaxBackoff = time.Hour, time.Hour
		},
	} {
		t.Run(name, func(t *testing.T) {
			t.Parallel()
			m := newManager(t)
			r, _ := newReporter(t, m, &statsBox{s: stats(100, 1, 5)}, func(o *Options) { setup(m, o) })
			stop, done := start(t, r)
			waitFor(t, "the first report", func() bool { return m.count() > 0 })
			stop()
			select {
			case <-done:
			default:
				t.Fatal("Run did not return")
			}
		})
	}
}
