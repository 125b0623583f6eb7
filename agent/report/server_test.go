package report

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-logr/logr"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

func get(t *testing.T, h http.Handler, path string) (int, string, http.Header) {
	t.Helper()
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
	return rec.Code, rec.Body.String(), rec.Header()
}

func TestServerEndpoints(t *testing.T) {
	reg := NewRegistry()
	m := NewMetrics(MetricsOptions{})
	if err := m.Register(reg); err != nil {
		t.Fatal(err)
	}
	m.Observe(&model.Request{Method: "GET", Host: "api.example.com", URI: "/users/1", Status: 200, Latency: 3 * time.Millisecond})
	var ready atomic.Bool
	s := NewServer("127.0.0.1:0", sampleStats, func() (bool, string) {
		if ready.Load() {
			return true, "probes attached"
		}
		return false, "no Kong process found yet"
	}, reg, logr.Discard())
	h := s.Handler()

	code, body, hdr := get(t, h, "/stats")
	var st v1alpha1.Stats
	if code != 200 || hdr.Get("Content-Type") != "application/json" || json.Unmarshal([]byte(body), &st) != nil || st.Total.Requests != 1234 {
		t.Errorf("/stats = %d %q %q", code, hdr.Get("Content-Type"), body)
	}
	if _, body, _ = get(t, h, "/stats?pretty"); !strings.Contains(body, "\n  \"apiVersion\"") {
		t.Errorf("/stats?pretty not indented: %.80q", body)
	}
	code, body, _ = get(t, h, "/metrics")
	for _, want := range []string{`kong_watcher_requests_total{code="200",host="api.example.com",method="GET",path="/users/{id}"} 1`,
		"kong_watcher_request_duration_seconds_bucket", "go_goroutines", "process_cpu_seconds_total"} {
		if code != 200 || !strings.Contains(body, want) {
			t.Errorf("/metrics (%d) lacks %s", code, want)
		}
	}
	if code, body, _ = get(t, h, "/healthz"); code != 200 || body != "ok\n" {
		t.Errorf("/healthz = %d %q", code, body)
	}
	if code, body, _ = get(t, h, "/readyz"); code != 503 || body != "no Kong process found yet\n" {
		t.Errorf("/readyz not ready = %d %q", code, body)
	}
	ready.Store(true)
	if code, body, _ = get(t, h, "/readyz"); code != 200 || body != "probes attached\n" {
		t.Errorf("/readyz ready = %d %q", code, body)
	}
	if code, _, _ = get(t, h, "/nope"); code != 404 {
		t.Errorf("/nope = %d", code)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/stats", nil))
	if rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /stats = %d", rec.Code)
	}
}

func TestServerStartAndShutdown(t *testing.T) {
	s := NewServer("127.0.0.1:0", func() v1alpha1.Stats { return v1alpha1.Stats{} }, nil, NewRegistry(), logr.Discard())
	if s.Addr() != "" {
		t.Error("Addr set before Start")
	}
	ctx, cancel := context.WithCancel(context.Background())
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	resp, err := http.Get("http://" + s.Addr() + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != "ok\n" {
		t.Errorf("/readyz with nil ready func = %d %q", resp.StatusCode, body)
	}
	// A second server on the same address fails to start, with the bind error.
	if err := NewServer(s.Addr(), nil, nil, NewRegistry(), logr.Discard()).Start(context.Background()); err == nil {
		t.Error("second Start on a used address succeeded")
	}
	cancel()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := http.Get("http://" + s.Addr() + "/healthz")
		if err != nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("server still serving after its context ended")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err := s.Shutdown(context.Background()); err != nil {
		t.Errorf("Shutdown after stop: %v", err)
	}
}
