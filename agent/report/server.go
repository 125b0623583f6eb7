// Package report turns the aggregator's numbers and the per-request stream into what people
// and tools read: the agent's HTTP endpoints (/stats, /metrics, /healthz, /readyz),
// Prometheus metrics, per-request debug logs with masking, the periodic stats log line, the
// short pod annotations and the demo's text table.
package report

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// NewRegistry returns a registry with the Go runtime and process collectors, for NewServer
// and Metrics.Register. A dedicated registry (not the global one) keeps /metrics to what
// this agent chose to export.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Server serves the agent's HTTP endpoints:
//   - /stats: the Stats JSON (indented with ?pretty);
//   - /metrics: Prometheus exposition of reg;
//   - /healthz: 200 while the process serves HTTP (liveness);
//   - /readyz: 200 when ready() says so, else 503 with its reason (readiness).
type Server struct {
	addr    string
	handler http.Handler
	log     logr.Logger

	mu       sync.Mutex
	srv      *http.Server
	listener net.Listener
	done     chan struct{}
}

// NewServer builds the server; nothing listens until Start. ready may be nil (always ready);
// stats may be nil (an empty document).
func NewServer(addr string, stats func() v1alpha1.Stats, ready func() (bool, string), reg *prometheus.Registry, log logr.Logger) *Server {
	if ready == nil {
		ready = func() (bool, string) { return true, "ok" }
	}
	if stats == nil {
		stats = func() v1alpha1.Stats {
			return v1alpha1.Stats{APIVersion: v1alpha1.StatsAPIVersion, Kind: v1alpha1.StatsKind}
		}
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /stats", func(w http.ResponseWriter, r *http.Request) {
		enc := json.NewEncoder(w)
		if _, pretty := r.URL.Query()["pretty"]; pretty {
			enc.SetIndent("", "  ")
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		if err := enc.Encode(stats()); err != nil {
			log.V(1).Info("writing /stats", "err", err.Error())
		}
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, ErrorHandling: promhttp.ContinueOnError}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok\n"))
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, reason := ready()
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !ok {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
		_, _ = w.Write([]byte(reason + "\n"))
	})
	return &Server{addr: addr, handler: mux, log: log}
}

// Handler returns the endpoints' handler (for tests or another server).
func (s *Server) Handler() http.Handler { return s.handler }

// Start binds addr and serves in the background; it returns once listening (or the bind
// error). When ctx ends the server shuts down gracefully, as with Shutdown.
func (s *Server) Start(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		return err
	}
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      30 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
	s.mu.Lock()
	s.srv, s.listener, s.done = srv, ln, make(chan struct{})
	done := s.done
	s.mu.Unlock()
	go func() {
		defer close(done)
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error(err, "HTTP server stopped", "addr", ln.Addr().String())
		}
	}()
	go func() {
		select {
		case <-ctx.Done():
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_ = s.Shutdown(sctx)
		case <-done:
		}
	}()
	s.log.Info("serving HTTP", "addr", ln.Addr().String(), "paths", "/stats /metrics /healthz /readyz")
	return nil
}

// Addr returns the bound address once started ("" before), e.g. to find the port of ":0".
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listener == nil {
		return ""
	}
	return s.listener.Addr().String()
}

// Shutdown stops accepting connections and waits for in-flight requests until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	srv, done := s.srv, s.done
	s.mu.Unlock()
	if srv == nil {
		return nil
	}
	err := srv.Shutdown(ctx)
	select {
	case <-done:
	case <-ctx.Done():
	}
	return err
}
