package main

import (
	"crypto/md5"
	"encoding/hex"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestRoutes(t *testing.T) {
	srv := httptest.NewUnstartedServer(handler(50 * time.Millisecond))
	var conns atomic.Int32
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	defer srv.Close()
	c := srv.Client()

	do := func(method, path, body string, hdr map[string]string) (int, map[string]any, time.Duration) {
		t.Helper()
		var rd io.Reader
		if body != "" {
			rd = strings.NewReader(body)
		}
		req, err := http.NewRequest(method, srv.URL+path, rd)
		if err != nil {
			t.Fatal(err)
		}
		for k, v := range hdr {
			req.Header.Set(k, v)
		}
		start := time.Now()
		resp, err := c.Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		var doc map[string]any
		if resp.StatusCode == http.StatusNoContent {
			return resp.StatusCode, nil, time.Since(start)
		}
		if err := json.NewDecoder(resp.Body).Decode(&doc); err != nil {
			t.Fatalf("%s %s: body is not JSON: %v", method, path, err)
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("%s %s: Content-Type %q", method, path, ct)
		}
		return resp.StatusCode, doc, time.Since(start)
	}

	for path, want := range map[string]int{
		"/status/200": 200, "/status/204": 204, "/status/404": 404, "/status/418": 418,
		"/status/500": 500, "/status/503": 503, "/status/599": 599,
		"/status/199": 400, "/status/600": 400, "/status/abc": 400, "/status/": 400,
		"/status/+200": 400, "/status/99999999999999999999": 400,
	} {
		code, doc, _ := do("GET", path, "", nil)
		if code != want {
			t.Errorf("GET %s: %d, want %d", path, code, want)
		}
		if code != http.StatusNoContent && doc["status"] != float64(want) {
			t.Errorf("GET %s: body %v", path, doc)
		}
	}

	code, doc, d := do("GET", "/slow", "", nil)
	if code != 200 || doc["delay_ms"] != float64(50) || d < 50*time.Millisecond {
		t.Errorf("GET /slow: %d %v after %v", code, doc, d)
	}
	code, doc, d = do("GET", "/slow?delay_ms=120", "", nil)
	if code != 200 || doc["delay_ms"] != float64(120) || d < 120*time.Millisecond {
		t.Errorf("GET /slow?delay_ms=120: %d %v after %v", code, doc, d)
	}
	code, doc, _ = do("GET", "/slow?delay_ms=-5", "", nil)
	if code != 200 || doc["delay_ms"] != float64(50) {
		t.Errorf("GET /slow?delay_ms=-5: %d %v", code, doc)
	}

	body := strings.Repeat("kong-watcher ", 10000)
	sum := md5.Sum([]byte(body))
	code, doc, _ = do("POST", "/echo", body, nil)
	if code != 200 || doc["bytes"] != float64(len(body)) || doc["md5"] != hex.EncodeToString(sum[:]) || doc["method"] != "POST" {
		t.Errorf("POST /echo: %d %v", code, doc)
	}
	code, doc, _ = do("POST", "/echo", "", nil)
	if code != 200 || doc["bytes"] != float64(0) || doc["md5"] != "d41d8cd98f00b204e9800998ecf8427e" {
		t.Errorf("POST /echo (empty): %d %v", code, doc)
	}

	code, doc, _ = do("PUT", "/anything/else?x=1", "some body", map[string]string{"X-Consumer-Username": "demo"})
	want := map[string]any{"service": "backend", "method": "PUT", "path": "/anything/else", "consumer": "demo"}
	if code != 200 || len(doc) != len(want) {
		t.Errorf("PUT /anything/else: %d %v", code, doc)
	}
	for k, v := range want {
		if doc[k] != v {
			t.Errorf("PUT /anything/else: %s = %v, want %v", k, doc[k], v)
		}
	}
	code, _, _ = do("GET", "/healthz", "", nil)
	if code != 200 {
		t.Errorf("GET /healthz: %d", code)
	}
	// Keep-alive: the requests, one after the other, all went over one connection.
	if n := conns.Load(); n != 1 {
		t.Errorf("%d connections, want 1 (keep-alive)", n)
	}
}

func TestSlowStopsWhenTheClientGoes(t *testing.T) {
	srv := httptest.NewServer(handler(50 * time.Millisecond))
	defer srv.Close()
	c := &http.Client{Timeout: 100 * time.Millisecond}
	start := time.Now()
	if _, err := c.Get(srv.URL + "/slow?delay_ms=60000"); err == nil {
		t.Fatal("GET /slow?delay_ms=60000 answered within 100ms")
	}
	// httptest.Server.Close waits for the handler: it must return soon, not in 60s.
	srv.Close()
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the /slow handler outlived its client by %v", d)
	}
}
