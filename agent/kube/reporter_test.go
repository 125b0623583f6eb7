package kube

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	corev1 "k8s.io/api/core/v1"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/webhook/ingest"
)

const ns, podName = "kong", "kong-0"

// waitTimeout bounds every wait for something the reporter does in the background; it is only
// reached when a test fails (the slowest path, an Event's batching delay, is 1 s).
const waitTimeout = 4 * time.Second

// statsBox is a stats func the test can change.
type statsBox struct {
	mu sync.Mutex
	s  v1alpha1.Stats
}

func (b *statsBox) get() v1alpha1.Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.s
}

func (b *statsBox) set(f func(*v1alpha1.Stats)) {
	b.mu.Lock()
	defer b.mu.Unlock()
	f(&b.s)
}

func stats(total, errs uint64, p99 float64) v1alpha1.Stats {
	now := time.Now()
	sum := v1alpha1.Summary{PeriodSeconds: 30, ListenerSummary: v1alpha1.ListenerSummary{Requests: total, Responses: total, Errors: errs,
		RequestsPerSecond: float64(total) / 30, LatencyMs: v1alpha1.Latency{Count: total, P50: p99 / 2, P99: p99, Max: p99},
		Methods: map[string]uint64{"GET": total}, StatusClasses: map[string]uint64{"2xx": total - errs, "5xx": errs}}}
	return v1alpha1.Stats{APIVersion: v1alpha1.StatsAPIVersion, Kind: v1alpha1.StatsKind, Since: now.Add(-time.Hour), Updated: now,
		Total: sum, Window: sum}
}

type logLines struct {
	mu    sync.Mutex
	lines []string
}

func (l *logLines) logger() logr.Logger {
	return funcr.New(func(prefix, args string) {
		l.mu.Lock()
		l.lines = append(l.lines, args)
		l.mu.Unlock()
	}, funcr.Options{})
}

func (l *logLines) matching(sub string) []string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var out []string
	for _, s := range l.lines {
		if strings.Contains(s, sub) {
			out = append(out, s)
		}
	}
	return out
}

func (l *logLines) count(sub string) int { return len(l.matching(sub)) }

func (l *logLines) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return strings.Join(l.lines, "\n")
}

// received is one report as the fake manager saw it.
type received struct {
	at     time.Time
	token  string
	rep    v1alpha1.Report
	status int // the answer
}

// fakeManager is the manager's report endpoint over TLS: it checks every report with the
// manager's own decoder (an invalid one fails the test), records it and answers as told.
type fakeManager struct {
	t   *testing.T
	srv *httptest.Server
	// closing unblocks handlers told to hang, so that the server can close.
	closing chan struct{}

	mu   sync.Mutex
	got  []received
	hang bool // answer nothing until the client gives up
	// answer gives the status of the n-th report (0-based); nil: 200.
	answer func(n int) int
	// onReport runs before the n-th report is answered (the reporter is waiting for it).
	onReport    func(n int)
	annotations map[string]string
}

func newManager(t *testing.T) *fakeManager {
	t.Helper()
	m := &fakeManager{t: t, closing: make(chan struct{})}
	m.srv = httptest.NewUnstartedServer(http.HandlerFunc(m.serve))
	// A refused handshake (the test of another CA) is what the test wants, not stderr noise.
	m.srv.Config.ErrorLog = log.New(io.Discard, "", 0)
	m.srv.StartTLS()
	t.Cleanup(func() {
		close(m.closing)
		m.srv.Close()
	})
	return m
}

func (m *fakeManager) serve(w http.ResponseWriter, req *http.Request) {
	if req.Method != http.MethodPost || req.URL.Path != v1alpha1.ReportPath {
		m.t.Errorf("%s %s, want POST %s", req.Method, req.URL.Path, v1alpha1.ReportPath)
		http.NotFound(w, req)
		return
	}
	if ct := req.Header.Get("Content-Type"); ct != "application/json" {
		m.t.Errorf("Content-Type %q", ct)
	}
	token, ok := strings.CutPrefix(req.Header.Get("Authorization"), "Bearer ")
	if !ok {
		m.t.Errorf("no bearer token: Authorization %q", req.Header.Get("Authorization"))
	}
	body, err := io.ReadAll(req.Body)
	if err != nil {
		return
	}
	rep, err := ingest.DecodeReport(body)
	if err != nil {
		m.t.Errorf("the agent sent a report the manager refuses: %v", err)
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	m.mu.Lock()
	n := len(m.got)
	status := http.StatusOK
	if m.answer != nil {
		status = m.answer(n)
	}
	m.got = append(m.got, received{at: time.Now(), token: token, rep: *rep, status: status})
	hang, onReport := m.hang, m.onReport
	resp := v1alpha1.ReportResponse{Annotations: m.annotations}
	m.mu.Unlock()
	if onReport != nil {
		onReport(n)
	}
	if hang {
		select {
		case <-req.Context().Done():
		case <-m.closing:
		}
		return
	}
	if status != http.StatusOK {
		http.Error(w, fmt.Sprintf("refused by the test (%d)\nsecond line", status), status)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(resp)
}

func (m *fakeManager) reports() []received {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.got)
}

func (m *fakeManager) count() int { return len(m.reports()) }

func (m *fakeManager) set(f func(m *fakeManager)) {
	m.mu.Lock()
	defer m.mu.Unlock()
	f(m)
}

// delivered is every Event of the reports answered 200, in order, as "Type Reason Message".
func (m *fakeManager) delivered() []string {
	var out []string
	for _, g := range m.reports() {
		if g.status == http.StatusOK {
			out = append(out, eventStrings(g.rep.Events)...)
		}
	}
	return out
}

// waitDelivered waits until the Event whose message is msg has been delivered.
func (m *fakeManager) waitDelivered(msg string) {
	m.t.Helper()
	waitFor(m.t, "Event "+msg+" delivered", func() bool {
		return slices.ContainsFunc(m.delivered(), func(e string) bool { return strings.HasSuffix(e, " "+msg) })
	})
}

func (m *fakeManager) caPEM() []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m.srv.Certificate().Raw})
}

func eventStrings(evs []v1alpha1.ReportEvent) []string {
	out := make([]string, 0, len(evs))
	for _, e := range evs {
		out = append(out, e.Type+" "+e.Reason+" "+e.Message)
	}
	return out
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(waitTimeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for: %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func writeToken(t *testing.T, path, token string) {
	t.Helper()
	// Replaced atomically, as the kubelet does: a report never reads half a token.
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(token+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// newReporter is a Reporter for m through the real TLS client (m's certificate as the CA),
// reporting box's stats (nil: events-only), with fast backoff and no tick unless o says.
func newReporter(t *testing.T, m *fakeManager, box *statsBox, o func(*Options)) (*Reporter, *logLines) {
	t.Helper()
	tokenFile := filepath.Join(t.TempDir(), "token")
	writeToken(t, tokenFile, "token-1")
	logs := &logLines{}
	opts := Options{URL: m.srv.URL + v1alpha1.ReportPath, CA: m.caPEM(), TokenFile: tokenFile,
		Namespace: ns, PodName: podName, Interval: time.Hour, RequestTimeout: 5 * time.Second,
		InitialBackoff: 10 * time.Millisecond, MaxBackoff: 50 * time.Millisecond, Log: logs.logger()}
	if box != nil {
		opts.Stats = box.get
	}
	if o != nil {
		o(&opts)
	}
	r, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("reporter log:\n%s", logs)
		}
	})
	return r, logs
}

// start runs r until the test ends (or the returned stop is called); Run must then return.
func start(t *testing.T, r *Reporter) (stop func(), done <-chan struct{}) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ch := make(chan struct{})
	go func() {
		defer close(ch)
		r.Run(ctx)
	}()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-ch:
			case <-time.After(waitTimeout):
				t.Error("Run did not return after its context was cancelled")
			}
		})
	}
	t.Cleanup(stop)
	return stop, ch
}

// waitAcked waits until the reporter has had the manager's answer to the Events it sent (the
// manager records a report before the reporter hears back).
func waitAcked(t *testing.T, r *Reporter) {
	t.Helper()
	waitFor(t, "the Events acknowledged", func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		return len(r.pending) == 0
	})
}

// queued takes the Events waiting for the next report, as "Type Reason Message".
func queued(r *Reporter) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := eventStrings(r.pending)
	r.removed += uint64(len(r.pending))
	r.pending = nil
	return out
}

func note(r *Reporter, msg string) {
	r.event(corev1.EventTypeNormal, v1alpha1.ReasonTrafficStats, "%s", msg)
}

func notes(prefix string, from, to int) []string {
	var out []string
	for i := from; i <= to; i++ {
		out = append(out, fmt.Sprintf("Normal TrafficStats %s%d", prefix, i))
	}
	return out
}

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

// While the manager is unavailable the reporter backs off, keeps its Events and logs once;
// when it is back they are delivered and that is logged once.
func TestUnavailableThenBack(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	down := true
	m.answer = func(n int) int {
		switch {
		case !down:
			return http.StatusOK
		case n < 3:
			return http.StatusServiceUnavailable
		default:
			return http.StatusTooManyRequests
		}
	}
	r, logs := newReporter(t, m, &statsBox{s: stats(100, 1, 5)}, nil)
	note(r, "e1")
	note(r, "e2")
	start(t, r)
	waitFor(t, "5 attempts", func() bool { return m.count() >= 5 })
	note(r, "e3")
	m.set(func(*fakeManager) { down = false })
	m.waitDelivered("e3")
	waitFor(t, "the recovery logged", func() bool { return logs.count("reachable again") > 0 })

	got := m.reports()
	backoff := r.o.InitialBackoff
	for i, g := range got {
		if g.status == http.StatusOK {
			break
		}
		if ev := eventStrings(g.rep.Events); len(ev) < 2 || !slices.Equal(ev[:2], notes("e", 1, 2)) {
			t.Errorf("attempt %d carried %q, want the queued Events", i, ev)
		}
		if g.rep.Stats == nil {
			t.Errorf("attempt %d without the stats never delivered", i)
		}
		// Each retry waits at least the backoff (doubling from InitialBackoff, capped).
		if gap := got[i+1].at.Sub(g.at); gap < backoff {
			t.Errorf("retry %d came %v after the failure, want at least %v", i+1, gap, backoff)
		}
		backoff = min(2*backoff, r.o.MaxBackoff)
	}
	if ev := m.delivered(); !slices.Equal(ev, notes("e", 1, 3)) {
		t.Errorf("delivered %q", ev)
	}
	if l := logs.matching(`"msg"="cannot report`); len(l) != 1 || !strings.Contains(l[0], "503 refused by the test (503)") ||
		strings.Contains(l[0], "second line") {
		t.Errorf("failure logged as %q, want one line with the first line of the answer", l)
	}
	if n := logs.count("now for another reason"); n != 1 {
		t.Errorf("503 then 429: the change logged %d times", n)
	}
	if n := logs.count("reachable again"); n != 1 {
		t.Errorf("recovery logged %d times", n)
	}
}

// 400 is the report's own fault: its Events are dropped (a retry cannot fix them), later ones go.
func TestBadReportDropsItsEvents(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	r, logs := newReporter(t, m, &statsBox{s: stats(100, 1, 5)}, nil)
	m.answer = func(n int) int {
		if n == 0 {
			return http.StatusBadRequest
		}
		return http.StatusOK
	}
	m.onReport = func(n int) {
		if n == 0 {
			note(r, "e2") // queued while the bad report is in flight: not part of it
		}
	}
	note(r, "e1")
	start(t, r)
	m.waitDelivered("e2")
	got := m.reports()
	if ev := eventStrings(got[0].rep.Events); !slices.Equal(ev, notes("e", 1, 1)) {
		t.Errorf("first report carried %q", ev)
	}
	if ev := m.delivered(); !slices.Equal(ev, notes("e", 2, 2)) {
		t.Errorf("delivered %q, want only e2", ev)
	}
	if l := logs.matching("cannot report"); len(l) != 1 || !strings.Contains(l[0], "400") {
		t.Errorf("400 logged as %q", l)
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

// A manager whose certificate does not chain to the injected CA is not reported to.
func TestManagerWithAnotherCAIsRefused(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	r, logs := newReporter(t, m, &statsBox{s: stats(100, 1, 5)}, func(o *Options) { o.CA = anotherCA(t) })
	note(r, "e1")
	start(t, r)
	waitFor(t, "the TLS failure logged", func() bool { return logs.count("cannot report") > 0 })
	if l := logs.matching("cannot report"); len(l) != 1 || !strings.Contains(l[0], "certificate signed by unknown authority") {
		t.Errorf("logged %q, want the certificate error", l)
	}
	if n := m.count(); n != 0 {
		t.Errorf("%d reports reached a manager the agent does not trust", n)
	}
}

func anotherCA(t *testing.T) []byte {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "another CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, DNSNames: []string{"example.com"}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
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

func TestNotifierEvents(t *testing.T) {
	t.Parallel()
	m := newManager(t)
	r, _ := newReporter(t, m, &statsBox{s: stats(100, 1, 5)}, nil)
	gw := discovery.Gateway{Master: discovery.Process{PID: 7, Title: "nginx: master process"}, Workers: []discovery.Process{{PID: 8}}}
	r.ProbesAttached(gw, "nginx-request")
	r.ProbeAttachFailed(gw, errors.New("no symbol"))
	r.KongDetected(gw) // reads the version in its own goroutine
	waitFor(t, "KongDetected queued", func() bool { r.mu.Lock(); defer r.mu.Unlock(); return len(r.pending) == 3 })
	start(t, r)
	waitFor(t, "3 Events", func() bool { return len(m.delivered()) >= 3 })
	ev := m.delivered()
	if len(ev) != 3 {
		t.Fatalf("got %q", ev)
	}
	slices.Sort(ev)
	if !strings.HasPrefix(ev[1], "Normal ProbesAttached ") || !strings.Contains(ev[1], "nginx-request") ||
		!strings.HasPrefix(ev[2], "Warning ProbeAttachFailed ") || !strings.Contains(ev[2], "no symbol") ||
		!strings.HasPrefix(ev[0], "Normal KongDetected ") || !strings.Contains(ev[0], "master PID 7 with 1 workers (nginx: master process), version unknown") {
		t.Fatalf("got %q", ev)
	}
}

func TestNginxVersion(t *testing.T) {
	const exe = "/usr/sbin/nginx"
	if _, err := os.Stat(exe); err != nil {
		t.Skip("no nginx binary here")
	}
	v := NginxVersion(exe)
	if !strings.HasPrefix(v, "nginx/1.") {
		t.Fatalf("NginxVersion(%s) = %q", exe, v)
	}
	t.Logf("%s: %s", exe, v)
	if NginxVersion("/nonexistent") != "" {
		t.Fatal("a missing file must give no version")
	}
}
