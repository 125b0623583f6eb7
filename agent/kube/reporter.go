// Package kube is the agent's Kubernetes reporter. The agent has no rights of its own in the
// API: every STATS_INTERVAL it sends its Stats, and the Events it wants recorded on its pod
// (KongDetected, ProbesAttached, ProbeAttachFailed, TrafficStats, the HighErrorRate /
// HighLatency alerts and their *Resolved counterparts), to the kong-watcher manager, which
// writes them with its own identity. The agent proves which pod it is with its projected,
// pod-bound service-account token (audience v1alpha1.ReportAudience) and verifies the manager
// with the CA the webhook injected.
//
// It never touches the data path: it runs in its own goroutine and only calls the Stats
// function it is given. While the manager is away it keeps counting and retries with
// exponential backoff and jitter; when it is back it sends the latest state (only the windows
// in between are lost). It logs one line when reporting starts failing and one when it is back.
package kube

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/wait"

	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// Defaults.
const (
	DefaultTrafficStatsInterval = 5 * time.Minute
	DefaultErrorRateThreshold   = 0.05
	DefaultLatencyP99Ms         = 1000
	DefaultMinRequests          = 20
	DefaultRequestTimeout       = 10 * time.Second
	// DefaultMaxBackoff caps the retry delay while the manager is away.
	DefaultMaxBackoff = 2 * time.Minute
)

// Options configures a Reporter.
type Options struct {
	// URL is the manager's report endpoint (KONG_WATCHER_MANAGER_URL).
	URL string
	// CA is the PEM bundle the manager's certificate must chain to (KONG_WATCHER_MANAGER_CA).
	CA []byte
	// TokenFile holds the projected report token; it is read again for every report (the
	// kubelet rotates it).
	TokenFile string
	// FallbackAddr (KONG_WATCHER_MANAGER_ADDR, the manager Service's cluster IP and port) is
	// dialled when the URL's host name cannot be resolved: a pod whose DNS is not the
	// cluster's (hostNetwork without ClusterFirstWithHostNet, dnsPolicy Default) still reaches
	// the manager, verified under the URL's name all the same.
	FallbackAddr string
	// HTTPClient overrides the client built from CA (tests).
	HTTPClient *http.Client
	Namespace  string
	PodName    string
	// Stats returns the current Stats document (Agent.Stats); called from the reporter's
	// goroutine. nil: an agent with nothing to count (see AgentDisabled) that sends Events only.
	Stats func() v1alpha1.Stats
	// Interval is how often the stats are sent and the alerts evaluated (STATS_INTERVAL).
	Interval time.Duration
	// WindowClosed, when set, paces the reporter instead of its own Interval ticker: the agent
	// sends on it each time it starts a new stats window. A ticker of its own, however close
	// in period, drifts against the rotation and now and then samples the same window twice
	// and skips the next one, whose alert is then never raised.
	WindowClosed <-chan struct{}
	// TrafficStatsInterval: how often a TrafficStats Event is recorded (the first one as soon
	// as a window holds Thresholds.MinRequests requests); 0 turns it off.
	TrafficStatsInterval time.Duration
	// Alert thresholds (the pod's annotations override them, see Thresholds).
	Thresholds Thresholds
	// RequestTimeout bounds each report (<= 0: DefaultRequestTimeout).
	RequestTimeout time.Duration
	// MaxBackoff caps the retry delay (<= 0: DefaultMaxBackoff); InitialBackoff is the first (<= 0: 1s).
	InitialBackoff, MaxBackoff time.Duration
	Log                        logr.Logger
}

// Thresholds are the alert thresholds.
type Thresholds struct {
	// ErrorRate is the 5xx (and no-response) ratio of the last window above which HighErrorRate
	// fires, as a fraction (0.05 = 5%).
	ErrorRate float64
	// LatencyP99Ms is the window p99 above which HighLatency fires.
	LatencyP99Ms float64
	// MinRequests: a window with fewer requests raises nothing (its ratio and p99 are noise).
	MinRequests uint64
}

// DefaultThresholds are the built-in alert thresholds.
func DefaultThresholds() Thresholds {
	return Thresholds{ErrorRate: DefaultErrorRateThreshold, LatencyP99Ms: DefaultLatencyP99Ms, MinRequests: DefaultMinRequests}
}

// ParseErrorRate reads an error-rate threshold: "5%" (percent) or "0.05" (a fraction).
func ParseErrorRate(v string) (float64, error) {
	v = strings.TrimSpace(v)
	f, err := strconv.ParseFloat(strings.TrimSuffix(v, "%"), 64)
	if err == nil && strings.HasSuffix(v, "%") {
		f /= 100
	}
	if err != nil || math.IsNaN(f) || f < 0 || f > 1 {
		return 0, fmt.Errorf("%q: want a percentage (5%%) or a fraction between 0 and 1 (0.05)", v)
	}
	return f, nil
}

// ParseLatencyMs reads a latency threshold in milliseconds ("1000"; a Go duration "1s" works too).
func ParseLatencyMs(v string) (float64, error) {
	v = strings.TrimSpace(v)
	if f, err := strconv.ParseFloat(v, 64); err == nil && f > 0 && !math.IsInf(f, 0) {
		return f, nil
	}
	if d, err := time.ParseDuration(v); err == nil && d > 0 {
		return float64(d) / float64(time.Millisecond), nil
	}
	return 0, fmt.Errorf("%q: want milliseconds (1000) or a Go duration (1s)", v)
}

// withAnnotations returns t overridden by the pod's threshold annotations; invalid values are
// ignored (and reported in the returned errors).
func (t Thresholds) withAnnotations(ann map[string]string) (Thresholds, []error) {
	var errs []error
	if v, ok := ann[v1alpha1.AnnotationHighErrorRateThreshold]; ok {
		if f, err := ParseErrorRate(v); err == nil {
			t.ErrorRate = f
		} else {
			errs = append(errs, fmt.Errorf("%s: %w", v1alpha1.AnnotationHighErrorRateThreshold, err))
		}
	}
	if v, ok := ann[v1alpha1.AnnotationHighLatencyP99Ms]; ok {
		if f, err := ParseLatencyMs(v); err == nil {
			t.LatencyP99Ms = f
		} else {
			errs = append(errs, fmt.Errorf("%s: %w", v1alpha1.AnnotationHighLatencyP99Ms, err))
		}
	}
	return t, errs
}

// Reporter sends the agent's stats and Events to the manager.
type Reporter struct {
	o      Options
	log    logr.Logger
	client *http.Client
	kick   chan struct{} // an Event is waiting: send soon rather than at the next tick

	mu         sync.Mutex
	pending    []v1alpha1.ReportEvent // oldest first, at most v1alpha1.MaxReportEvents
	removed    uint64                 // Events gone from the front of pending (delivered or dropped) since the start
	dropped    int                    // Events dropped since the last log line about it
	thresholds Thresholds

	// Touched only by Run's goroutine.
	badThreshold string // the last invalid threshold annotation reported (log once per value)
	sent         []byte // the last stats sent, with the always-moving fields zeroed
	sentAt       time.Time
	gone         bool // the pod is gone (410): nothing more to send
	failing      bool
	failingSince time.Time
	failures     int
	lastErr      string
	errorAlert   bool
	latencyAlert bool
	lastTraffic  time.Time
	// sawTraffic: a TrafficStats Event for a window of at least MinRequests requests has been
	// recorded. The first such window gets one at once, not a whole TrafficStatsInterval
	// after the start, so `kubectl describe pod` shows one within a stats interval of traffic.
	sawTraffic bool
}

// New builds a Reporter. It sends nothing; Run does.
func New(o Options) (*Reporter, error) {
	if o.URL == "" || o.TokenFile == "" || o.Namespace == "" || o.PodName == "" {
		return nil, errors.New("kube reporter: the manager URL, the token file, the namespace and the pod name are required")
	}
	if o.Interval <= 0 {
		o.Interval = 30 * time.Second
	}
	if o.Thresholds == (Thresholds{}) {
		o.Thresholds = DefaultThresholds()
	}
	if o.RequestTimeout <= 0 {
		o.RequestTimeout = DefaultRequestTimeout
	}
	if o.MaxBackoff <= 0 {
		o.MaxBackoff = DefaultMaxBackoff
	}
	if o.InitialBackoff <= 0 {
		o.InitialBackoff = time.Second
	}
	client := o.HTTPClient
	if client == nil {
		var err error
		if client, err = NewHTTPClient(o.CA, o.FallbackAddr, o.RequestTimeout); err != nil {
			return nil, err
		}
	}
	return &Reporter{o: o, log: o.Log, client: client, thresholds: o.Thresholds, kick: make(chan struct{}, 1)}, nil
}

// NewHTTPClient is a client that trusts only the manager's CA (no system roots, no proxy from
// the environment: the manager is inside the cluster). fallback, when set, is dialled where the
// URL's host name does not resolve; TLS still verifies the URL's name.
func NewHTTPClient(caPEM []byte, fallback string, timeout time.Duration) (*http.Client, error) {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("kube reporter: no certificate in the manager CA (" + v1alpha1.EnvManagerCA + ")")
	}
	d := &net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second}
	dial := d.DialContext
	if fallback != "" {
		dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := d.DialContext(ctx, network, addr)
			var dnsErr *net.DNSError
			if err != nil && errors.As(err, &dnsErr) {
				return d.DialContext(ctx, network, fallback)
			}
			return c, err
		}
	}
	return &http.Client{
		Timeout: timeout,
		Transport: &http.Transport{
			Proxy:               nil,
			DialContext:         dial,
			TLSClientConfig:     &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12},
			TLSHandshakeTimeout: 5 * time.Second,
			MaxIdleConnsPerHost: 1,
			IdleConnTimeout:     5 * time.Minute,
		},
	}, nil
}

// event queues an Event for the next report. It never blocks (the discovery callback calls it
// with its lock held); past the bound the oldest Events go.
func (r *Reporter) event(eventType, reason, format string, args ...any) {
	// JSON turns each invalid byte into a 3-byte U+FFFD: the message could exceed the manager's
	// bound and be refused, with the other Events of its report.
	msg := strings.ToValidUTF8(fmt.Sprintf(format, args...), "\uFFFD")
	if len(msg) > v1alpha1.MaxEventMessage {
		msg = truncateUTF8(msg, v1alpha1.MaxEventMessage-3) + "..."
	}
	r.mu.Lock()
	if len(r.pending) == v1alpha1.MaxReportEvents {
		r.pending = r.pending[1:]
		r.removed++
		r.dropped++
	}
	r.pending = append(r.pending, v1alpha1.ReportEvent{Type: eventType, Reason: reason, Message: msg})
	r.mu.Unlock()
	select {
	case r.kick <- struct{}{}:
	default:
	}
}

func truncateUTF8(s string, n int) string {
	for n > 0 && n < len(s) && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:min(n, len(s))]
}

// Run reports until ctx is done.
func (r *Reporter) Run(ctx context.Context) {
	windows := r.o.WindowClosed
	if windows == nil {
		c := make(chan struct{})
		tick := time.NewTicker(r.o.Interval)
		defer tick.Stop()
		go func() {
			for {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
					select {
					case c <- struct{}{}:
					case <-ctx.Done():
						return
					}
				}
			}
		}()
		windows = c
	}
	r.lastTraffic = time.Now()
	backoff := r.newBackoff()
	var retry <-chan time.Time
	// The first report goes out at once: it learns the pod's threshold annotations and
	// carries the Events of the start.
	first := make(chan time.Time, 1)
	first <- time.Now()
	for !r.gone {
		kick := r.kick
		if retry != nil || len(first) > 0 {
			kick = nil // a retry or the first report is pending: it will carry the Events
		}
		select {
		case <-ctx.Done():
			return
		case <-first:
		case <-windows:
			if r.o.Stats != nil {
				r.evaluate(r.o.Stats(), time.Now())
			}
			if retry != nil {
				continue // the retry sends the latest state
			}
		case <-retry:
		case <-kick:
			// Batch the Events of one moment (discovery finds several gateways at once).
			if !sleep(ctx, time.Second) {
				return
			}
		}
		retry = nil
		if r.send(ctx) {
			backoff = r.newBackoff()
		} else if !r.gone {
			retry = time.After(backoff.Step())
		}
	}
}

func (r *Reporter) newBackoff() *wait.Backoff {
	return &wait.Backoff{Duration: r.o.InitialBackoff, Factor: 2, Jitter: 0.5, Steps: math.MaxInt32, Cap: r.o.MaxBackoff}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// Tick evaluates the alerts on the current stats and sends a report; false when it failed and
// should be retried.
func (r *Reporter) Tick(ctx context.Context) bool {
	if r.o.Stats != nil {
		r.evaluate(r.o.Stats(), time.Now())
	}
	return r.send(ctx)
}

// send POSTs one report: the stats when they changed (and every other interval regardless, so
// the manager can tell a live pod from a silent one by the stats' age), and the pending Events.
// It returns false when it failed and should be retried.
func (r *Reporter) send(ctx context.Context) bool {
	rep := v1alpha1.Report{APIVersion: v1alpha1.StatsAPIVersion, Kind: v1alpha1.ReportKind,
		Pod: v1alpha1.PodRef{Namespace: r.o.Namespace, Name: r.o.PodName}}
	// Non-nil: r.sent also says a report went, after which an events-only agent with nothing
	// to say sends nothing.
	key := []byte{}
	if r.o.Stats != nil {
		s := r.o.Stats()
		key = statsKey(s)
		if r.sent == nil || !bytes.Equal(key, r.sent) || time.Since(r.sentAt) >= 2*r.o.Interval-r.o.Interval/10 {
			rep.Stats = &s
		}
	}
	r.mu.Lock()
	rep.Events = append([]v1alpha1.ReportEvent(nil), r.pending...)
	from := r.removed
	dropped := r.dropped
	r.dropped = 0
	r.mu.Unlock()
	if dropped > 0 {
		r.log.Info("Events dropped while the manager was unreachable (the newest are kept)",
			"dropped", dropped, "kept", v1alpha1.MaxReportEvents)
	}
	if rep.Stats == nil && len(rep.Events) == 0 && r.sent != nil {
		return true
	}
	status, body, err := r.post(ctx, rep)
	switch {
	case err != nil:
		if ctx.Err() != nil {
			return true
		}
		r.failed(err.Error(), "network")
		return false
	case status == http.StatusOK:
		r.ok()
		r.ack(from, len(rep.Events))
		if rep.Stats != nil || r.sent == nil {
			r.sent, r.sentAt = key, time.Now()
		}
		var resp v1alpha1.ReportResponse
		if json.Unmarshal(body, &resp) == nil {
			r.adoptAnnotations(resp.Annotations)
		}
		return true
	case status == http.StatusGone:
		r.gone = true
		r.log.Info("the manager says this pod no longer exists (410): no more reports", "pod", r.o.Namespace+"/"+r.o.PodName)
		return true
	case status == http.StatusBadRequest || status == http.StatusRequestEntityTooLarge:
		// Not something a retry fixes: log it and drop the Events it carried, so one bad
		// Event cannot block every later report.
		r.ack(from, len(rep.Events))
		r.failed(fmt.Sprintf("%d %s", status, firstLine(body)), strconv.Itoa(status))
		return false
	default:
		r.failed(fmt.Sprintf("%d %s", status, firstLine(body)), strconv.Itoa(status))
		return false
	}
}

// ack drops from the queue the n Events sent from position from (counted in removed) on:
// those still there, since the queue may have overflowed meanwhile and dropped the oldest of
// them already. Events queued meanwhile stay.
func (r *Reporter) ack(from uint64, n int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if end := from + uint64(n); end > r.removed {
		k := min(int(end-r.removed), len(r.pending))
		r.pending = r.pending[k:]
		r.removed += uint64(k)
	}
}

func (r *Reporter) post(ctx context.Context, rep v1alpha1.Report) (int, []byte, error) {
	token, err := os.ReadFile(r.o.TokenFile)
	if err != nil {
		return 0, nil, fmt.Errorf("reading the report token: %w", err)
	}
	payload, err := json.Marshal(rep)
	if err != nil {
		return 0, nil, err
	}
	cctx, cancel := context.WithTimeout(ctx, r.o.RequestTimeout)
	defer cancel()
	req, err := http.NewRequestWithContext(cctx, http.MethodPost, r.o.URL, bytes.NewReader(payload))
	if err != nil {
		return 0, nil, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("Authorization", "Bearer "+strings.TrimSpace(string(token)))
	req.Header.Set("User-Agent", "kong-watcher-agent")
	resp, err := r.client.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return resp.StatusCode, body, nil
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	if len(s) > 300 {
		s = s[:300] + "..."
	}
	return s
}

// statsKey is what decides whether the stats changed: s without the always-moving fields.
func statsKey(s v1alpha1.Stats) []byte {
	s.Updated = time.Time{}
	s.Window.PeriodSeconds = 0
	b, _ := json.Marshal(s)
	return b
}

// adoptAnnotations applies the pod's threshold annotations the manager returned.
func (r *Reporter) adoptAnnotations(ann map[string]string) {
	t, errs := r.o.Thresholds.withAnnotations(ann)
	if len(errs) > 0 {
		if msg := errors.Join(errs...).Error(); msg != r.badThreshold {
			r.log.Info("ignoring an invalid alert threshold annotation", "error", msg)
			r.badThreshold = msg
		}
	} else {
		r.badThreshold = ""
	}
	r.mu.Lock()
	changed := t != r.thresholds
	r.thresholds = t
	r.mu.Unlock()
	if changed {
		r.log.Info("alert thresholds", "errorRate", t.ErrorRate, "latencyP99Ms", t.LatencyP99Ms, "minRequests", t.MinRequests)
	}
}

// Thresholds returns the thresholds in force.
func (r *Reporter) Thresholds() Thresholds {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.thresholds
}

// evaluate raises and clears the alerts on the last window, and records TrafficStats when due.
func (r *Reporter) evaluate(s v1alpha1.Stats, now time.Time) {
	w := s.Window
	th := r.Thresholds()
	enough := w.Requests >= th.MinRequests && w.Requests > 0
	ratio := 0.0
	if w.Requests > 0 {
		ratio = float64(w.Errors) / float64(w.Requests)
	}
	highErr := enough && ratio > th.ErrorRate
	switch {
	case highErr && !r.errorAlert:
		r.errorAlert = true
		r.event(corev1.EventTypeWarning, v1alpha1.ReasonHighErrorRate,
			"error rate %s over the last %s (%d of %d requests failed: 5xx or no response), above the %s threshold",
			pct(ratio), period(w.PeriodSeconds), w.Errors, w.Requests, pct(th.ErrorRate))
	case !highErr && r.errorAlert:
		r.errorAlert = false
		r.event(corev1.EventTypeNormal, v1alpha1.ReasonHighErrorRateResolved,
			"error rate back to %s over the last %s (%d of %d requests), threshold %s",
			pct(ratio), period(w.PeriodSeconds), w.Errors, w.Requests, pct(th.ErrorRate))
	}
	highLat := enough && w.LatencyMs.P99 > th.LatencyP99Ms
	switch {
	case highLat && !r.latencyAlert:
		r.latencyAlert = true
		r.event(corev1.EventTypeWarning, v1alpha1.ReasonHighLatency,
			"p99 latency %s over the last %s (%d requests, p50 %s, max %s), above the %s threshold",
			ms(w.LatencyMs.P99), period(w.PeriodSeconds), w.Requests, ms(w.LatencyMs.P50), ms(w.LatencyMs.Max), ms(th.LatencyP99Ms))
	case !highLat && r.latencyAlert:
		r.latencyAlert = false
		r.event(corev1.EventTypeNormal, v1alpha1.ReasonHighLatencyResolved,
			"p99 latency back to %s over the last %s (%d requests), threshold %s",
			ms(w.LatencyMs.P99), period(w.PeriodSeconds), w.Requests, ms(th.LatencyP99Ms))
	}
	// The first TrafficStats comes with the first window busy enough to alert on (so not
	// with the kubelet's first probe), then one every TrafficStatsInterval.
	busy := w.Requests > 0 && w.Requests >= th.MinRequests
	if r.o.TrafficStatsInterval > 0 && (busy && !r.sawTraffic || now.Sub(r.lastTraffic) >= r.o.TrafficStatsInterval) {
		r.lastTraffic = now
		r.sawTraffic = r.sawTraffic || busy
		t := s.Total
		r.event(corev1.EventTypeNormal, v1alpha1.ReasonTrafficStats,
			"last %s: %d requests (%.1f/s), %d errors (%s), p50 %s p99 %s; since start: %d requests, %d errors",
			period(w.PeriodSeconds), w.Requests, w.RequestsPerSecond, w.Errors, pct(ratio), ms(w.LatencyMs.P50), ms(w.LatencyMs.P99),
			t.Requests, t.Errors)
	}
}

func pct(f float64) string { return strconv.FormatFloat(100*f, 'f', 1, 64) + "%" }
func ms(v float64) string {
	if v >= 1000 {
		return strconv.FormatFloat(v/1000, 'f', 2, 64) + "s"
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + "ms"
}
func period(sec float64) string {
	return (time.Duration(math.Round(sec)) * time.Second).String()
}

// failed logs the first failure of an episode, and a changed kind of error, not every retry.
func (r *Reporter) failed(msg, kind string) {
	r.failures++
	if !r.failing {
		r.failing, r.failingSince, r.lastErr = true, time.Now(), kind
		r.log.Error(errors.New(msg), "cannot report to the kong-watcher manager; the agent keeps counting and "+
			"retries with backoff (logged again when it is back)", "url", r.o.URL)
		return
	}
	if kind != r.lastErr {
		r.lastErr = kind
		r.log.Info("still cannot report to the kong-watcher manager, now for another reason", "error", msg)
	}
}

func (r *Reporter) ok() {
	if r.failing {
		r.log.Info("kong-watcher manager reachable again; reporting resumed",
			"failedFor", time.Since(r.failingSince).Round(time.Second).String(), "failedAttempts", r.failures)
	}
	r.failing, r.failures, r.lastErr = false, 0, ""
}
