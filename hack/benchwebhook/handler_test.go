package main

import (
	"bytes"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/go-logr/logr"

	"github.com/kong-watcher/kong-watcher/webhook/inject"
)

// BenchmarkHandler is the injection handler alone (no TLS, no HTTP server, no Events), for
// the same review the TLS benchmark sends: it splits the webhook's cost into the handler's
// own and the transport's.
//
//	go test -run - -bench Handler -benchmem ./hack/benchwebhook
func BenchmarkHandler(b *testing.B) {
	cfg := inject.DefaultConfig()
	cfg.Image = "kong-watcher/agent:bench"
	h := inject.NewWebhook(cfg, nil, logr.Discard())
	body, err := reviewBody()
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	b.SetBytes(int64(len(body)))
	for b.Loop() {
		req := httptest.NewRequest(http.MethodPost, inject.Path, bytes.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		rw := httptest.NewRecorder()
		h.ServeHTTP(rw, req)
		if rw.Code != http.StatusOK || !bytes.Contains(rw.Body.Bytes(), []byte(`"patch":`)) {
			b.Fatalf("HTTP %d: %s", rw.Code, rw.Body.String())
		}
	}
}
