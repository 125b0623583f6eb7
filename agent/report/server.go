// Package report turns the aggregator's numbers and the per-request stream into what people
// and tools read: the agent's HTTP endpoints (/stats, /metrics, /healthz, /readyz),
// Prometheus metrics, per-request debug logs with masking, the periodic stats log line, the
// short pod annotations and the demo's text table.
package report

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
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

// The server's limits. The agent shares the pod (and with hostNetwork the node's address)
// with Kong: whatever a client does to these endpoints must cost bounded memory and CPU and
// must never slow the counting down.
const (
	// StatsRefresh is how old the /stats document may be. Taking a snapshot holds the
	// aggregator's lock for about a millisecond with full tables, and the event reader waits
	// meanwhile; so the HTTP side takes at most one snapshot per StatsRefresh, whatever the
	// request rate, and every request in between is served the same encoded document.
	StatsRefresh = time.Second
	// MaxInFlightStats and MaxInFlightMetrics bound the /stats and /metrics requests being
	// served at once; one more is answered 503 with Retry-After at once rather than queued.
	// They are separate so that a flood of one cannot starve Prometheus's scrape of the other.
	MaxInFlightStats   = 8
	MaxInFlightMetrics = 4
	// DefaultMaxBindRetry caps the delay between two attempts to bind the address while it
	// is taken (StartRetrying); the first retry comes after a second, then the delay doubles.
	DefaultMaxBindRetry = 30 * time.Second
	// unavailableReportEvery: while the address stays unavailable, the log line (and
	// BindRetry.Unavailable) repeats this often, not at every attempt.
	unavailableReportEvery = 10 * time.Minute

	readHeaderTimeout = 5 * time.Second
	readTimeout       = 10 * time.Second
	// writeTimeout leaves room for a large /metrics to a slow scraper.
	writeTimeout   = 30 * time.Second
	idleTimeout    = 60 * time.Second
	maxHeaderBytes = 16 << 10
)

// Server serves the agent's HTTP endpoints:
//   - /stats: the Stats JSON (indented with ?pretty), at most StatsRefresh old;
//   - /metrics: Prometheus exposition of reg;
//   - /healthz: 200 while the process serves HTTP (liveness); it depends on nothing else,
//     neither the aggregator nor the in-flight limits;
//   - /readyz: 200 when ready() says so, else 503 with its reason (readiness).
//
// /stats and /metrics answer 503 with Retry-After beyond MaxInFlightStats/MaxInFlightMetrics
// concurrent requests.
type Server struct {
	addr    string
	handler http.Handler
	log     logr.Logger

	bindFailures prometheus.Counter
	rejected     *prometheus.CounterVec
	statsLimit   *limiter
	metricsLimit *limiter

	mu       sync.Mutex
	srv      *http.Server
	listener net.Listener
	closed   bool          // Shutdown was called: bind and serve no more
	stop     chan struct{} // closed by Shutdown: ends a bind retry wait
	done     chan struct{} // closed when the serving goroutine ends; nil before Start
}

// NewServer builds the server; nothing listens until Start or StartRetrying. ready may be nil
// (always ready); stats may be nil (an empty document); reg may be nil (a new NewRegistry).
// The server's own metrics (bind failures, requests rejected by the in-flight limits) are
// registered on reg.
func NewServer(addr string, stats func() v1alpha1.Stats, ready func() (bool, string), reg *prometheus.Registry, log logr.Logger) *Server {
	if ready == nil {
		ready = func() (bool, string) { return true, "ok" }
	}
	if stats == nil {
		stats = func() v1alpha1.Stats {
			return v1alpha1.Stats{APIVersion: v1alpha1.StatsAPIVersion, Kind: v1alpha1.StatsKind}
		}
	}
	if reg == nil {
		reg = NewRegistry()
	}
	s := &Server{addr: addr, log: log, stop: make(chan struct{})}
	s.bindFailures = prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kong_watcher", Name: "http_bind_failures_total",
		Help: "Failed attempts to bind the agent's HTTP address (METRICS_ADDR); while it fails these endpoints are unreachable."})
	s.rejected = prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kong_watcher", Name: "http_rejected_total",
		Help: "Requests to /stats and /metrics answered 503 because too many were in flight."}, []string{"path"})
	for _, c := range []prometheus.Collector{s.bindFailures, s.rejected} {
		if err := reg.Register(c); err != nil {
			log.Error(err, "registering the HTTP server's metrics")
		}
	}

	cache := &statsCache{stats: stats, every: StatsRefresh}
	mux := http.NewServeMux()
	s.statsLimit = s.limit("/stats", MaxInFlightStats, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := cache.get()
		if err != nil {
			log.Error(err, "encoding /stats")
			http.Error(w, "cannot encode the stats", http.StatusInternalServerError)
			return
		}
		if _, pretty := r.URL.Query()["pretty"]; pretty {
			var buf bytes.Buffer
			if json.Indent(&buf, body, "", "  ") == nil {
				body = buf.Bytes()
			}
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		w.Header().Set("Content-Length", strconv.Itoa(len(body)))
		if _, err := w.Write(body); err != nil {
			log.V(1).Info("writing /stats", "err", err.Error())
		}
	}))
	s.metricsLimit = s.limit("/metrics", MaxInFlightMetrics,
		promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg, ErrorHandling: promhttp.ContinueOnError}))
	mux.Handle("GET /stats", s.statsLimit)
	mux.Handle("GET /metrics", s.metricsLimit)
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
	s.handler = mux
	return s
}

// limit serves at most n requests to h at once. One more is answered 503 with Retry-After
// at once: a queue would hold a connection, a goroutine and its buffers per waiting client,
// without bound.
func (s *Server) limit(path string, n int, h http.Handler) *limiter {
	return &limiter{slots: make(chan struct{}, n), h: h, rejected: s.rejected.WithLabelValues(path)}
}

type limiter struct {
	slots    chan struct{}
	h        http.Handler
	rejected prometheus.Counter
}

func (l *limiter) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	select {
	case l.slots <- struct{}{}:
		defer func() { <-l.slots }()
		l.h.ServeHTTP(w, r)
	default:
		l.rejected.Inc()
		w.Header().Set("Retry-After", "1")
		http.Error(w, "too many requests in flight; retry later", http.StatusServiceUnavailable)
	}
}

// statsCache keeps the last /stats document, encoded, and takes a new snapshot when it is
// older than every: at most one per interval, by one request while the others are served the
// previous document (only the very first requests wait for the first snapshot).
type statsCache struct {
	stats   func() v1alpha1.Stats
	every   time.Duration
	refresh sync.Mutex // held by the request taking a new snapshot
	cur     atomic.Pointer[encodedStats]
}

type encodedStats struct {
	at   time.Time
	body []byte
}

func (c *statsCache) get() ([]byte, error) {
	e := c.cur.Load()
	if e != nil && time.Since(e.at) < c.every {
		return e.body, nil
	}
	if e == nil {
		c.refresh.Lock()
	} else if !c.refresh.TryLock() {
		return e.body, nil // another request is taking the new snapshot
	}
	defer c.refresh.Unlock()
	if e := c.cur.Load(); e != nil && time.Since(e.at) < c.every {
		return e.body, nil
	}
	body, err := json.Marshal(c.stats())
	if err != nil {
		return nil, err
	}
	body = append(body, '\n')
	c.cur.Store(&encodedStats{at: time.Now(), body: body})
	return body, nil
}

// Handler returns the endpoints' handler (for tests or another server).
func (s *Server) Handler() http.Handler { return s.handler }

// Start binds addr and serves in the background; it returns once listening, or the bind
// error (and then does nothing more). When ctx ends the server shuts down gracefully, as with
// Shutdown.
func (s *Server) Start(ctx context.Context) error {
	ln, err := net.Listen("tcp", s.addr)
	if err != nil {
		s.bindFailures.Inc()
		return err
	}
	srv := s.adopt(ln)
	s.launch(ctx, func() {
		if err := s.serve(srv, ln); err != nil {
			s.log.Error(err, "HTTP server stopped", "addr", ln.Addr().String())
		}
	})
	return nil
}

// BindRetry configures StartRetrying.
type BindRetry struct {
	// Max caps the delay between two attempts (<= 0: DefaultMaxBindRetry).
	Max time.Duration
	// Unavailable, when set, hears why addr cannot be bound: at the first failure, then every
	// 10 minutes while it lasts. It is called from the retry goroutine and must not block.
	Unavailable func(err error)
}

// StartRetrying is Start for a process that must stay up whatever happens to its port: it
// returns at once and serves in the background. While addr cannot be bound (another process
// on the pod's or, with hostNetwork, the node's network listens on it; an address not
// configured yet) it says why (one log line, then one every 10 minutes; the
// kong_watcher_http_bind_failures_total counter; r.Unavailable) and tries again with
// exponential backoff, from 1 s up to r.Max; it serves as soon as a bind succeeds, and binds
// again if serving ever fails. Addr is "" while nothing is bound.
func (s *Server) StartRetrying(ctx context.Context, r BindRetry) {
	if r.Max <= 0 {
		r.Max = DefaultMaxBindRetry
	}
	s.launch(ctx, func() {
		for {
			ln := s.bindRetrying(ctx, r)
			if ln == nil {
				return
			}
			err := s.serve(s.adopt(ln), ln)
			if err == nil || s.stopping(ctx) {
				return
			}
			s.log.Error(err, "HTTP server stopped; binding again", "addr", s.addr)
			s.sleep(ctx, time.Second) // not a busy loop if it keeps failing
		}
	})
}

// launch runs serveLoop in the background and shuts the server down when ctx ends.
func (s *Server) launch(ctx context.Context, serveLoop func()) {
	done := make(chan struct{})
	s.mu.Lock()
	s.done = done
	s.mu.Unlock()
	go func() {
		defer close(done)
		serveLoop()
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
}

// bindRetrying binds addr, retrying until it succeeds; nil once ctx ends or Shutdown is called.
func (s *Server) bindRetrying(ctx context.Context, r BindRetry) net.Listener {
	delay := min(time.Second, r.Max)
	var firstFailure, lastReport time.Time
	failures := 0
	for {
		if s.stopping(ctx) {
			return nil
		}
		ln, err := net.Listen("tcp", s.addr)
		if err == nil {
			if failures > 0 {
				s.log.Info("the HTTP address can be bound again", "addr", s.addr, "failedAttempts", failures,
					"unavailableFor", time.Since(firstFailure).Round(time.Second).String())
			}
			return ln
		}
		s.bindFailures.Inc()
		failures++
		now := time.Now()
		tell := true
		if failures == 1 {
			firstFailure, lastReport = now, now
			s.log.Error(err, "cannot listen: /metrics, /stats, /healthz and /readyz are unreachable until the address frees; the agent keeps running and retries",
				"addr", s.addr, "maxRetryDelay", r.Max.String())
		} else if now.Sub(lastReport) >= unavailableReportEvery {
			lastReport = now
			s.log.Error(err, "still cannot listen; the agent keeps running and retries", "addr", s.addr,
				"failedAttempts", failures, "unavailableFor", now.Sub(firstFailure).Round(time.Second).String())
		} else {
			tell = false
		}
		if tell && r.Unavailable != nil {
			r.Unavailable(err)
		}
		s.sleep(ctx, delay)
		delay = min(2*delay, r.Max)
	}
}

// sleep waits d, or less if ctx ends or Shutdown is called.
func (s *Server) sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-s.stop:
	case <-t.C:
	}
}

// stopping reports whether ctx ended or Shutdown was called.
func (s *Server) stopping(ctx context.Context) bool {
	select {
	case <-ctx.Done():
		return true
	case <-s.stop:
		return true
	default:
		return false
	}
}

// adopt makes ln the server's listener and returns the http.Server to serve it with; nil
// (and ln closed) once Shutdown was called.
func (s *Server) adopt(ln net.Listener) *http.Server {
	srv := &http.Server{
		Handler:           s.handler,
		ReadHeaderTimeout: readHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       idleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		ln.Close()
		return nil
	}
	s.srv, s.listener = srv, ln
	return srv
}

// serve serves srv on ln until the server shuts down (nil) or fails (the error).
func (s *Server) serve(srv *http.Server, ln net.Listener) error {
	if srv == nil {
		return nil
	}
	s.log.Info("serving HTTP", "addr", ln.Addr().String(), "paths", "/stats /metrics /healthz /readyz")
	err := srv.Serve(ln)
	ln.Close()
	s.mu.Lock()
	s.listener = nil
	s.mu.Unlock()
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Addr returns the bound address while serving ("" before, or while the address cannot be
// bound), e.g. to find the port of ":0".
func (s *Server) Addr() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.listener == nil {
		return ""
	}
	return s.listener.Addr().String()
}

// Shutdown stops accepting connections (and any bind retry) and waits for in-flight
// requests until ctx ends.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.closed {
		s.closed = true
		close(s.stop)
	}
	srv, done := s.srv, s.done
	s.mu.Unlock()
	var err error
	if srv != nil {
		err = srv.Shutdown(ctx)
	}
	if done != nil {
		select {
		case <-done:
		case <-ctx.Done():
		}
	}
	return err
}
