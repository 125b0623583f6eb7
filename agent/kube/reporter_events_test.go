package kube

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// Events go with the next report, in order, those of one moment together, and once.
func TestEventsDeliveredOnceInOrderBatched(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	r, _ := newReporter(t, m, &statsBox{s: stats(100, 1, 5)}, nil)
	note(r, "a1")
	note(r, "a2")
	// While the first report is in flight, a burst: it goes together in the next one.
	m.set(func(m *fakeManager) {
		m.onReport = func(n int) {
			if n == 0 {
				for i := 1; i <= 3; i++ {
					note(r, fmt.Sprintf("b%d", i))
				}
			}
		}
	})
	stop, _ := start(t, r)
	m.waitDelivered("b3")
	got := m.reports()
	if len(got) != 2 {
		t.Fatalf("%d reports, want 2", len(got))
	}
	if ev := eventStrings(got[0].rep.Events); !slices.Equal(ev, notes("a", 1, 2)) {
		t.Errorf("first report: %q", ev)
	}
	if ev := eventStrings(got[1].rep.Events); !slices.Equal(ev, notes("b", 1, 3)) {
		t.Errorf("second report: %q", ev)
	}
	if got[1].rep.Stats != nil {
		t.Error("unchanged stats sent again with the Events")
	}
	// Nothing is left to send: a report now would carry only what was not acknowledged.
	waitAcked(t, r)
	stop()
	if !r.Tick(context.Background()) {
		t.Fatal("tick failed")
	}
	if ev, want := m.delivered(), slices.Concat(notes("a", 1, 2), notes("b", 1, 3)); !slices.Equal(ev, want) {
		t.Errorf("delivered\n%q\nwant\n%q", ev, want)
	}
}

func TestAlertsRaiseOnceClearOnce(t *testing.T) {
	m := newManager(t)
	box := &statsBox{s: stats(10, 9, 5)} // 90% errors, but under the minimum request count
	r, _ := newReporter(t, m, box, nil)
	now := time.Now()
	r.evaluate(box.get(), now)
	if ev := queued(r); len(ev) != 0 {
		t.Fatalf("under MinRequests: %v", ev)
	}
	box.set(func(s *v1alpha1.Stats) { *s = stats(100, 10, 5) }) // 10% > 5%
	for range 3 {
		r.evaluate(box.get(), now)
	}
	ev := queued(r)
	if len(ev) != 1 || !strings.HasPrefix(ev[0], "Warning HighErrorRate ") || !strings.Contains(ev[0], "10 of 100 requests") {
		t.Fatalf("want one HighErrorRate Warning, got %q", ev)
	}
	box.set(func(s *v1alpha1.Stats) { *s = stats(100, 2, 1500) }) // errors fine, latency too high
	r.evaluate(box.get(), now)
	r.evaluate(box.get(), now)
	ev = queued(r)
	if len(ev) != 2 || !strings.HasPrefix(ev[0], "Normal HighErrorRateResolved ") || !strings.HasPrefix(ev[1], "Warning HighLatency ") {
		t.Fatalf("got %q", ev)
	}
	box.set(func(s *v1alpha1.Stats) { *s = stats(0, 0, 0) }) // traffic stopped: the episode ends
	r.evaluate(box.get(), now)
	r.evaluate(box.get(), now)
	ev = queued(r)
	if len(ev) != 1 || !strings.HasPrefix(ev[0], "Normal HighLatencyResolved ") {
		t.Fatalf("got %q", ev)
	}
}

func TestTrafficStatsEvent(t *testing.T) {
	m := newManager(t)
	box := &statsBox{s: stats(0, 0, 0)}
	r, _ := newReporter(t, m, box, func(o *Options) { o.TrafficStatsInterval = time.Minute })
	now := time.Now()
	r.lastTraffic = now
	// No traffic yet: nothing until the interval has passed.
	r.evaluate(box.get(), now.Add(30*time.Second))
	if ev := queued(r); len(ev) != 0 {
		t.Fatalf("no traffic, before the interval: got %q", ev)
	}
	// A few requests (the kubelet's probes, say): not yet.
	box.set(func(s *v1alpha1.Stats) { *s = stats(3, 0, 5) })
	r.evaluate(box.get(), now.Add(35*time.Second))
	if ev := queued(r); len(ev) != 0 {
		t.Fatalf("a window of 3 requests (below ALERT_MIN_REQUESTS): got %q", ev)
	}
	// The first busy window: an Event at once, not a minute after the start.
	box.set(func(s *v1alpha1.Stats) { *s = stats(100, 0, 5) })
	r.evaluate(box.get(), now.Add(40*time.Second))
	ev := queued(r)
	if len(ev) != 1 || !strings.HasPrefix(ev[0], "Normal TrafficStats ") || !strings.Contains(ev[0], "100 requests") {
		t.Fatalf("first traffic: got %q", ev)
	}
	// Then one per interval.
	r.evaluate(box.get(), now.Add(61*time.Second))
	r.evaluate(box.get(), now.Add(99*time.Second))
	if ev := queued(r); len(ev) != 0 {
		t.Fatalf("within the interval after the first: got %q", ev)
	}
	r.evaluate(box.get(), now.Add(101*time.Second))
	if ev := queued(r); len(ev) != 1 {
		t.Fatalf("one interval after the first: got %q", ev)
	}
	r.o.TrafficStatsInterval = 0
	r.evaluate(box.get(), now.Add(time.Hour))
	if ev := queued(r); len(ev) != 0 {
		t.Fatalf("interval 0 must record nothing, got %q", ev)
	}
}

// The manager answers with the pod's threshold annotations: they apply from then on.
func TestThresholdsFromTheManagersAnswer(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	m.annotations = map[string]string{
		v1alpha1.AnnotationHighErrorRateThreshold: "20%",
		v1alpha1.AnnotationHighLatencyP99Ms:       "2000",
	}
	box := &statsBox{s: stats(100, 1, 5)}
	r, logs := newReporter(t, m, box, nil)
	ctx := context.Background()
	if !r.Tick(ctx) {
		t.Fatal("report failed")
	}
	if th := r.Thresholds(); th.ErrorRate != 0.2 || th.LatencyP99Ms != 2000 || th.MinRequests != DefaultMinRequests {
		t.Fatalf("thresholds %+v", th)
	}
	r.evaluate(stats(100, 10, 1500), time.Now())
	if ev := queued(r); len(ev) != 0 {
		t.Fatalf("below the annotated thresholds, got %q", ev)
	}
	r.evaluate(stats(100, 25, 2500), time.Now())
	if ev := queued(r); len(ev) != 2 || !strings.Contains(ev[0], "above the 20.0% threshold") || !strings.Contains(ev[1], "above the 2.00s threshold") {
		t.Fatalf("above the annotated thresholds, got %q", ev)
	}
	r.errorAlert, r.latencyAlert = false, false
	// An invalid annotation is ignored (its default applies, the valid one stays) and logged once.
	m.set(func(m *fakeManager) {
		m.annotations = map[string]string{v1alpha1.AnnotationHighErrorRateThreshold: "lots", v1alpha1.AnnotationHighLatencyP99Ms: "2000"}
	})
	for i := range 3 {
		box.set(func(s *v1alpha1.Stats) { s.Total.Requests = uint64(200 + i) })
		if !r.Tick(ctx) {
			t.Fatal("report failed")
		}
	}
	if th := r.Thresholds(); th.ErrorRate != DefaultErrorRateThreshold || th.LatencyP99Ms != 2000 {
		t.Fatalf("thresholds %+v", th)
	}
	if l := logs.matching("invalid alert threshold"); len(l) != 1 || !strings.Contains(l[0], `\"lots\"`) {
		t.Fatalf("invalid threshold logged %d times: %q", len(l), l)
	}
	// Annotations removed: the defaults again.
	m.set(func(m *fakeManager) { m.annotations = nil })
	box.set(func(s *v1alpha1.Stats) { s.Total.Requests = 300 })
	r.Tick(ctx)
	if th := r.Thresholds(); th != DefaultThresholds() {
		t.Fatalf("thresholds %+v after the annotations were removed", th)
	}
	for _, c := range []struct {
		in   string
		want float64
	}{{"5%", 0.05}, {"0.1", 0.1}, {"100%", 1}, {" 20% ", 0.2}} {
		if f, err := ParseErrorRate(c.in); err != nil || f != c.want {
			t.Errorf("ParseErrorRate(%q) = %v, %v", c.in, f, err)
		}
	}
	for _, in := range []string{"", "-1%", "2", "abc", "NaN"} {
		if _, err := ParseErrorRate(in); err == nil {
			t.Errorf("ParseErrorRate(%q) accepted", in)
		}
	}
	if f, err := ParseLatencyMs("1.5s"); err != nil || f != 1500 {
		t.Errorf("ParseLatencyMs(1.5s) = %v %v", f, err)
	}
	for _, in := range []string{"", "0", "-5", "fast", "Inf"} {
		if _, err := ParseLatencyMs(in); err == nil {
			t.Errorf("ParseLatencyMs(%q) accepted", in)
		}
	}
}

// Past MaxReportEvents the oldest Events go; the newest are delivered and the drop logged once.
func TestEventQueueKeepsTheNewest(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	r, logs := newReporter(t, m, &statsBox{s: stats(100, 1, 5)}, nil)
	over := v1alpha1.MaxReportEvents + 10
	for i := 1; i <= over; i++ {
		note(r, fmt.Sprintf("e%d", i))
	}
	start(t, r)
	m.waitDelivered(fmt.Sprintf("e%d", over))
	if ev, want := m.delivered(), notes("e", 11, over); !slices.Equal(ev, want) {
		t.Errorf("delivered %d Events %q, want %q", len(ev), ev, want)
	}
	if l := logs.matching("Events dropped"); len(l) != 1 || !strings.Contains(l[0], `"dropped"=10`) {
		t.Errorf("the drop logged as %q", l)
	}
}

// The queue overflowing while a full report is in flight must not make its Events go twice.
func TestOverflowDuringAReportDeliversOnce(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	r, _ := newReporter(t, m, &statsBox{s: stats(100, 1, 5)}, nil)
	full := v1alpha1.MaxReportEvents
	for i := 1; i <= full; i++ {
		note(r, fmt.Sprintf("e%d", i))
	}
	m.onReport = func(n int) {
		if n == 0 {
			note(r, fmt.Sprintf("e%d", full+1))
		}
	}
	start(t, r)
	m.waitDelivered(fmt.Sprintf("e%d", full+1))
	if ev, want := m.delivered(), notes("e", 1, full+1); !slices.Equal(ev, want) {
		t.Errorf("delivered %d Events, want %d once each in order: %q", len(ev), len(want), ev)
	}
}

// An agent that could not start (Stats nil) sends its Events, never stats, and nothing when it
// has nothing to say.
func TestEventsOnly(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	r, _ := newReporter(t, m, nil, nil)
	r.AgentDisabled(errors.New("no BPF here"))
	stop, _ := start(t, r)
	waitFor(t, "the AgentDisabled Event", func() bool { return len(m.delivered()) > 0 })
	waitAcked(t, r)
	stop()
	got := m.reports()
	for i, g := range got {
		if g.rep.Stats != nil {
			t.Errorf("report %d has stats", i)
		}
	}
	if ev := m.delivered(); len(ev) != 1 || !strings.HasPrefix(ev[0], "Warning ProbeAttachFailed the agent cannot start") ||
		!strings.Contains(ev[0], "no BPF here") {
		t.Errorf("delivered %q", ev)
	}
	n := len(got)
	if !r.Tick(context.Background()) {
		t.Fatal("tick failed")
	}
	if extra := m.count() - n; extra != 0 {
		t.Errorf("%d empty reports sent", extra)
	}
	r.MetricsPortUnavailable(":9464", errors.New("address already in use"))
	r.Tick(context.Background())
	if ev := m.delivered(); len(ev) != 2 || !strings.HasPrefix(ev[1], "Warning MetricsPortUnavailable cannot listen on :9464") {
		t.Errorf("delivered %q", ev)
	}
}

// An Event's message is valid UTF-8 within the manager's bound whatever it was made of (a
// process title, an error text).
func TestEventMessagesWithinTheManagersRules(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	r, _ := newReporter(t, m, nil, nil)
	r.event(corev1.EventTypeWarning, v1alpha1.ReasonProbeAttachFailed, "%s", strings.Repeat("é", 1000))
	r.event(corev1.EventTypeWarning, v1alpha1.ReasonProbeAttachFailed, "bad bytes %s", strings.Repeat("\xff\xfe", 1000))
	r.ProbeAttachFailed(discovery.Gateway{Master: discovery.Process{PID: 7}}, errors.New(strings.Repeat("x", 799)+"€ and more"))
	if !r.Tick(context.Background()) {
		t.Fatal("report failed") // the fake manager says why
	}
	if ev := m.delivered(); len(ev) != 3 || !strings.HasSuffix(ev[0], "é...") {
		t.Errorf("delivered %q", ev)
	}
}
