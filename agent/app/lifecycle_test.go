package app

import (
	"bytes"
	"context"
	"encoding/json"
	"encoding/pem"
	"errors"
	"io"
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
	"github.com/prometheus/client_golang/prometheus"
	corev1 "k8s.io/api/core/v1"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
	"github.com/kong-watcher/kong-watcher/agent/kube"
	"github.com/kong-watcher/kong-watcher/agent/report"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/webhook/ingest"
)

// The whole start path, in process, with its metrics port held by another listener: the agent
// stays up (Serve does not return) and serves as soon as the port frees. Whether its BPF
// programs load here (root) or not (it then runs disabled), it must behave the same.
func TestServeStaysUpWhileItsPortIsTaken(t *testing.T) {
	holder := holdPort(t)
	defer holder.Close()
	addr := holder.Addr().String()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var stderr bytes.Buffer
	exit := make(chan int, 1)
	go func() {
		exit <- Serve(ctx, env(map[string]string{
			"METRICS_ADDR": addr, "STATS_INTERVAL": "1h", "LOG_LEVEL": "error",
			// Follow nothing on this machine (other nginx instances run here).
			"KONG_PROCESS_NAME": "kw-none", "KONG_WATCHER_ONLY_PIDS": "2147483647",
		}), &stderr)
	}()

	select {
	case code := <-exit:
		t.Fatalf("the agent exited with %d while its port was taken: %s", code, stderr.String())
	case <-time.After(3 * time.Second):
	}
	holder.Close()
	// Bind attempts back off up to 30 s; the next one after 3 s comes within 4 s more.
	c := &http.Client{Timeout: 5 * time.Second}
	deadline := time.Now().Add(40 * time.Second)
	for {
		resp, err := c.Get("http://" + addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				break
			}
		}
		select {
		case code := <-exit:
			t.Fatalf("the agent exited with %d: %s", code, stderr.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("/healthz not answered 40 s after the port freed: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	cancel()
	select {
	case code := <-exit:
		if code != 0 {
			t.Errorf("exit status %d after stop, want 0", code)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("the agent did not stop 15 s after its context ended")
	}
}

func TestServeRejectsAnInvalidMetricsAddr(t *testing.T) {
	var stderr bytes.Buffer
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if code := Serve(ctx, env(map[string]string{"METRICS_ADDR": "9464"}), &stderr); code != 2 {
		t.Errorf("exit status %d, want 2", code)
	}
	if msg := stderr.String(); !strings.Contains(msg, `METRICS_ADDR="9464"`) || !strings.Contains(msg, "[host]:port") {
		t.Errorf("error %q does not say what is wrong", msg)
	}
}

// fakeManager is the manager's report endpoint over TLS: it records the Events of the reports
// it accepts, after checking each report with the manager's own decoder.
type fakeManager struct {
	t      *testing.T
	srv    *httptest.Server
	mu     sync.Mutex
	events []v1alpha1.ReportEvent
}

func newManager(t *testing.T) *fakeManager {
	m := &fakeManager{t: t}
	m.srv = httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, err := io.ReadAll(req.Body)
		if err != nil {
			return
		}
		if req.URL.Path != v1alpha1.ReportPath || req.Header.Get("Authorization") != "Bearer the-token" {
			t.Errorf("report to %s with Authorization %q", req.URL.Path, req.Header.Get("Authorization"))
		}
		rep, err := ingest.DecodeReport(body)
		if err != nil {
			t.Errorf("the agent sent a report the manager refuses: %v", err)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		m.mu.Lock()
		m.events = append(m.events, rep.Events...)
		m.mu.Unlock()
		_ = json.NewEncoder(w).Encode(v1alpha1.ReportResponse{})
	}))
	t.Cleanup(m.srv.Close)
	return m
}

func (m *fakeManager) received() []v1alpha1.ReportEvent {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.events)
}

// The port found taken becomes a Warning Event on the agent's pod, through the reporter to the
// manager that carries the agent's other Events; once, not at every bind attempt.
func TestPortTakenIsAWarningEvent(t *testing.T) {
	holder := holdPort(t)
	defer holder.Close()
	addr := holder.Addr().String()
	m := newManager(t)
	tokenFile := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(tokenFile, []byte("the-token\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	rep, err := kube.New(kube.Options{URL: m.srv.URL + v1alpha1.ReportPath,
		CA:        pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: m.srv.Certificate().Raw}),
		TokenFile: tokenFile, Namespace: "kong", PodName: "kong-1",
		Stats: func() v1alpha1.Stats {
			return v1alpha1.Stats{APIVersion: v1alpha1.StatsAPIVersion, Kind: v1alpha1.StatsKind}
		}, Log: logr.Discard()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Add(1)
	go func() { defer wg.Done(); rep.Run(ctx) }()
	reg := report.NewRegistry()
	StartHTTP(ctx, HTTPOptions{Addr: addr, Registry: reg, Notify: portNotifier(rep),
		MaxBindRetry: 20 * time.Millisecond, Log: logr.Discard()})

	poll := func(what string, cond func() bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !cond() {
			if time.Now().After(deadline) {
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	poll("several bind attempts", func() bool { return bindFailures(t, reg) >= 4 })
	// Events are delivered in order: once this one is, any earlier one is too.
	rep.ProbesAttached(discovery.Gateway{Master: discovery.Process{PID: 1}}, "sentinel")
	poll("the Events delivered", func() bool {
		return slices.ContainsFunc(m.received(), func(e v1alpha1.ReportEvent) bool { return e.Reason == v1alpha1.ReasonProbesAttached })
	})
	var port []v1alpha1.ReportEvent
	for _, e := range m.received() {
		if e.Reason == v1alpha1.ReasonMetricsPortUnavailable {
			port = append(port, e)
		}
	}
	if len(port) != 1 {
		t.Fatalf("%d MetricsPortUnavailable Events after several attempts, want one: %+v", len(port), port)
	}
	if e := port[0]; e.Type != corev1.EventTypeWarning || !strings.HasPrefix(e.Message, "cannot listen on "+addr) ||
		!strings.Contains(e.Message, "address already in use") {
		t.Errorf("Event %+v", e)
	}
	if portNotifier(nil) != nil {
		t.Error("portNotifier(nil) is not a nil interface: StartHTTP would call a nil reporter")
	}
}

func bindFailures(t *testing.T, reg *prometheus.Registry) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "kong_watcher_http_bind_failures_total" && len(mf.GetMetric()) > 0 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return 0
}

// An agent whose data path cannot load counts nothing but says why, on the same endpoints as
// any other: /readyz with the reason, /metrics with nothing attached, an empty /stats.
func TestDisabledAgent(t *testing.T) {
	cfg, err := FromEnv(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	cfg.MetricsAddr = "127.0.0.1:0" // any free port
	a := newAgent(cfg, logr.Discard(), dataPaths{}, errors.New("no CAP_BPF"), Options{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("Run = %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a disabled agent's Run did not return")
	}
	if ok, why := a.Ready(); ok || why != "the agent cannot start: no CAP_BPF" {
		t.Errorf("Ready() = %v, %q", ok, why)
	}
	if s := a.Stats(); s.APIVersion != v1alpha1.StatsAPIVersion || s.Kind != v1alpha1.StatsKind || !s.Since.IsZero() || s.Total.Requests != 0 {
		t.Errorf("Stats() = %+v", s)
	}
	base := waitServing(t, a.StartHTTP(ctx, nil), 10*time.Second)
	c := &http.Client{Timeout: 5 * time.Second}
	if code, body, err := httpGet(c, base+"/readyz"); err != nil || code != 503 || !strings.Contains(body, "no CAP_BPF") {
		t.Errorf("/readyz = %d %q %v", code, body, err)
	}
	if _, body, err := httpGet(c, base+"/metrics"); err != nil || !strings.Contains(body, "kong_watcher_probes_attached 0") ||
		!strings.Contains(body, `data_path=""`) {
		t.Errorf("/metrics lacks what an alert on a blind agent looks for (%v):\n%.600s", err, body)
	}
	if notifier(nil) != nil {
		t.Error("notifier(nil) is not a nil interface: the agent would call a nil reporter")
	}
}

// Every StatsInterval the window closes and the reporter is told, never waited for.
func TestStatsLoopClosesWindows(t *testing.T) {
	cfg, err := FromEnv(env(map[string]string{"STATS_INTERVAL": "1s"}))
	if err != nil {
		t.Fatal(err)
	}
	windows := make(chan struct{}, 1)
	a := newPipeline(cfg, logr.Discard(), Options{WindowClosed: windows})
	feed(a, 10)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go a.statsLoop(ctx)
	select {
	case <-windows:
	case <-time.After(10 * time.Second):
		t.Fatal("no window closed in 10 s at a 1 s interval")
	}
	if s := a.Stats(); s.Window.Requests != 10 || s.Total.Requests != 10 {
		t.Errorf("after the first window: window %d, total %d requests, want 10 and 10", s.Window.Requests, s.Total.Requests)
	}
	// Nobody reads windows now: the loop goes on all the same.
	feed(a, 5)
	deadline := time.Now().Add(10 * time.Second)
	for a.Stats().Total.Requests != 15 || a.Stats().Window.Requests != 5 {
		if time.Now().After(deadline) {
			t.Fatalf("the loop stopped closing windows: %+v", a.Stats().Window)
		}
		time.Sleep(50 * time.Millisecond)
	}
}
