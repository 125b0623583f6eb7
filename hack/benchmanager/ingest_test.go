package main

import (
	"encoding/base64"
	"encoding/json"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/webhook/ingest"
)

// testReport is a steady-round report of the benchmark's first agent, as JSON.
func testReport(tb testing.TB) []byte {
	tb.Helper()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: kongNamespace, Name: "kong-gw-00-bcdfghjkl-mnpqr"}}
	a := newSimAgent(0, pod, "", 0, routeSetFor(7), 600)
	now := time.Now()
	a.traffic(30*time.Second, now.Add(-30*time.Second))
	a.traffic(30*time.Second, now)
	b, err := json.Marshal(a.report(10, false)) // (0+10)%10 == 0: with a TrafficStats Event
	if err != nil {
		tb.Fatal(err)
	}
	return b
}

// testDecodedReport is testReport as the manager decodes it.
func testDecodedReport(tb testing.TB) *kwv1.Report {
	tb.Helper()
	rep, err := ingest.DecodeReport(testReport(tb))
	if err != nil {
		tb.Fatal(err)
	}
	return rep
}

// testToken is shaped like a projected report token (claims only; the signature is not
// checked by ingest.Precheck, the TokenReview does that).
func testToken(tb testing.TB) string {
	tb.Helper()
	enc := base64.RawURLEncoding.EncodeToString
	hdr, _ := json.Marshal(map[string]string{"alg": "RS256", "kid": "0123456789abcdef0123456789abcdef01234567"})
	now := time.Now()
	claims, _ := json.Marshal(map[string]any{
		"aud": []string{kwv1.ReportAudience}, "exp": now.Add(time.Hour).Unix(), "iat": now.Unix(), "nbf": now.Unix(),
		"iss": "https://127.0.0.1:6443/", "jti": "9f1c1a6e-6d1e-4a53-9a57-0c6a1c5f2e11",
		"sub": "system:serviceaccount:kong:kong",
		"kubernetes.io": map[string]any{"namespace": "kong", "node": map[string]string{"name": "node-01", "uid": "1b0c2a5e-3f0e-4b8e-9d57-0c6a1c5f2e11"},
			"pod":            map[string]string{"name": "kong-gw-00-bcdfghjkl-mnpqr", "uid": "2b0c2a5e-3f0e-4b8e-9d57-0c6a1c5f2e11"},
			"serviceaccount": map[string]string{"name": "kong", "uid": "3b0c2a5e-3f0e-4b8e-9d57-0c6a1c5f2e11"}},
	})
	sig := make([]byte, 256)
	return enc(hdr) + "." + enc(claims) + "." + enc(sig)
}

// TestReportIsValid: the synthetic agents' reports pass the manager's checks.
func TestReportIsValid(t *testing.T) {
	body := testReport(t)
	rep, err := ingest.DecodeReport(body)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Stats == nil || rep.Stats.Window.Requests == 0 || len(rep.Stats.Total.Paths) < 5 || len(rep.Events) != 1 {
		t.Fatalf("report without traffic, paths or its TrafficStats Event: %s", body)
	}
	if _, err := ingest.Precheck(testToken(t), kwv1.ReportAudience, time.Now()); err != nil {
		t.Fatal(err)
	}
	t.Logf("report: %d bytes, %d hosts, %d paths; pod patch %d bytes", len(body), len(rep.Stats.Total.Hosts), len(rep.Stats.Total.Paths),
		len(ingest.PodPatch("uid", *rep.Stats, 0)))
}

// The manager's per-report work that needs no network, step by step (make bench-manager
// prints the same figures, measured in its run):
//
//	go test -run - -bench . -benchmem ./hack/benchmanager
func BenchmarkPrecheck(b *testing.B) {
	tok := testToken(b)
	b.ReportAllocs()
	for b.Loop() {
		if _, err := ingest.Precheck(tok, kwv1.ReportAudience, time.Now()); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkDecodeReport(b *testing.B) {
	body := testReport(b)
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		if _, err := ingest.DecodeReport(body); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkValidateReport is the checks alone, on a decoded report.
func BenchmarkValidateReport(b *testing.B) {
	rep := testDecodedReport(b)
	b.ReportAllocs()
	for b.Loop() {
		if err := ingest.ValidateReport(rep); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkPodPatch(b *testing.B) {
	rep := testDecodedReport(b)
	b.ReportAllocs()
	for b.Loop() {
		_ = ingest.PodPatch("2b0c2a5e-3f0e-4b8e-9d57-0c6a1c5f2e11", *rep.Stats, 0)
	}
}
