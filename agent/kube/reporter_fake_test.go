package kube

import (
	"context"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log"
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
