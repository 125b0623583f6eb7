// Package kube is the agent's Kubernetes reporter: it writes the kong-watcher.io/* annotations
// on the agent's own pod, and records Events on it (KongDetected, ProbesAttached,
// ProbeAttachFailed, TrafficStats, and the HighErrorRate / HighLatency alerts with their
// *Resolved counterparts).
//
// It never touches the data path: it runs in its own goroutine and only calls the Stats
// function it is given. When the API server is slow or away it keeps retrying with
// exponential backoff and jitter, and logs one line when reporting starts failing and one
// when it is back.
package kube

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	typedcorev1 "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"

	"github.com/kong-watcher/kong-watcher/agent/report"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// Component is the Events' source component.
const Component = v1alpha1.AgentContainerName

// Defaults.
const (
	DefaultTrafficStatsInterval = 5 * time.Minute
	DefaultErrorRateThreshold   = 0.05
	DefaultLatencyP99Ms         = 1000
	DefaultMinRequests          = 20
	DefaultQPS                  = 1
	DefaultBurst                = 5
	DefaultRequestTimeout       = 10 * time.Second
	// DefaultMaxBackoff caps the retry delay while the API server is away.
	DefaultMaxBackoff = 2 * time.Minute
)

// Options configures a Reporter.
type Options struct {
	Client    kubernetes.Interface
	Namespace string
	PodName   string
	// Stats returns the current Stats document (Agent.Stats); called from the reporter's goroutine.
	Stats func() v1alpha1.Stats
	// Interval is how often the annotations are refreshed and the alerts evaluated (STATS_INTERVAL).
	Interval time.Duration
	// TrafficStatsInterval: how often a TrafficStats Event is recorded (the first one as soon
	// as a window holds Thresholds.MinRequests requests); 0 turns it off.
	TrafficStatsInterval time.Duration
	// Alert thresholds (the pod's annotations override them, see Thresholds).
	Thresholds Thresholds
	// MaxStatsJSON bounds the kong-watcher.io/stats annotation (<= 0: report.DefaultMaxStatsJSON).
	MaxStatsJSON int
	// Recorder records the Events; nil: a record.EventBroadcaster writing to Client (core/v1 Events).
	Recorder record.EventRecorder
	// RequestTimeout bounds each API call (<= 0: DefaultRequestTimeout).
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

// Reporter writes the agent's pod annotations and Events.
type Reporter struct {
	o    Options
	log  logr.Logger
	rec  record.EventRecorder
	stop func()

	mu  sync.Mutex
	ref *corev1.ObjectReference // the pod the Events are about
	// Events recorded before the pod's UID is known wait here (kubectl describe finds Events
	// by UID), at most maxPending; noUID: the pod could not be read, record without it.
	pending []pendingEvent
	noUID   bool

	thresholds Thresholds // guarded by mu

	// Touched only by Run's goroutine.
	badThreshold string   // the last invalid threshold annotation reported (log once per value)
	patched      snapshot // what the last successful patch wrote (nil before the first)
	written      map[string]string
	gone         bool // the pod is gone (404): no more patches
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

// snapshot is what decides whether a patch is needed: the annotations computed from the stats
// with the always-moving fields (updated, window period) zeroed.
type snapshot map[string]string

// New builds a Reporter. It makes no API call; Run does.
func New(o Options) (*Reporter, error) {
	if o.Client == nil || o.Namespace == "" || o.PodName == "" || o.Stats == nil {
		return nil, errors.New("kube reporter: Client, Namespace, PodName and Stats are required")
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
	r := &Reporter{o: o, log: o.Log, thresholds: o.Thresholds, stop: func() {}}
	r.ref = &corev1.ObjectReference{Kind: "Pod", APIVersion: "v1", Namespace: o.Namespace, Name: o.PodName}
	r.rec = o.Recorder
	if r.rec == nil {
		r.rec, r.stop = NewRecorder(o.Client, o.Log)
	}
	return r, nil
}

// NewRecorder is a client-go record.EventRecorder writing core/v1 Events through c. The
// correlator aggregates similar Events into one with a count and filters spam; the spam key
// includes the reason, so a burst of one kind (say ProbeAttachFailed) cannot starve another
// (an alert). stop flushes nothing, it ends the broadcaster.
func NewRecorder(c kubernetes.Interface, log logr.Logger) (record.EventRecorder, func()) {
	b := record.NewBroadcaster(record.WithCorrelatorOptions(record.CorrelatorOptions{
		SpamKeyFunc: func(e *corev1.Event) string {
			return strings.Join([]string{e.Source.Component, e.InvolvedObject.Namespace, e.InvolvedObject.Name,
				string(e.InvolvedObject.UID), e.Type, e.Reason}, "/")
		},
	}))
	b.StartRecordingToSink(&typedcorev1.EventSinkImpl{Interface: c.CoreV1().Events("")})
	host, _ := os.Hostname()
	return b.NewRecorder(scheme.Scheme, corev1.EventSource{Component: Component, Host: host}), b.Shutdown
}

// ClientFromEnv builds a clientset the standard way: KUBECONFIG when set, else the in-cluster
// configuration, with bounded client-side QPS/burst and a per-request timeout.
func ClientFromEnv() (kubernetes.Interface, error) {
	var cfg *rest.Config
	var err error
	if kc := os.Getenv("KUBECONFIG"); kc != "" {
		cfg, err = clientcmd.BuildConfigFromFlags("", kc)
	} else {
		cfg, err = rest.InClusterConfig()
	}
	if err != nil {
		return nil, fmt.Errorf("kubernetes client configuration: %w", err)
	}
	return NewClient(cfg)
}

// NewClient is a clientset for cfg with the reporter's limits (QPS 1, burst 5, 10 s timeout).
func NewClient(cfg *rest.Config) (kubernetes.Interface, error) {
	cfg = rest.CopyConfig(cfg)
	cfg.QPS, cfg.Burst, cfg.Timeout = DefaultQPS, DefaultBurst, DefaultRequestTimeout
	cfg.UserAgent = "kong-watcher-agent"
	return kubernetes.NewForConfig(cfg)
}

type pendingEvent struct{ eventType, reason, msg string }

const maxPending = 50

func (r *Reporter) event(eventType, reason, format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	r.mu.Lock()
	if r.ref.UID == "" && !r.noUID {
		if len(r.pending) < maxPending {
			r.pending = append(r.pending, pendingEvent{eventType, reason, msg})
		}
		r.mu.Unlock()
		return
	}
	ref := *r.ref
	r.mu.Unlock()
	r.rec.Event(&ref, eventType, reason, msg)
}

// setUID records the pod's UID (uid == "": the pod cannot be read; Events go without it) and
// sends the Events that waited for it.
func (r *Reporter) setUID(uid types.UID) {
	r.mu.Lock()
	if uid == "" {
		r.noUID = true
	} else {
		r.ref.UID = uid
	}
	pending := r.pending
	r.pending = nil
	ref := *r.ref
	r.mu.Unlock()
	for _, e := range pending {
		r.rec.Event(&ref, e.eventType, e.reason, e.msg)
	}
}

// Run reports until ctx is done. It returns nil then, or an error only for a bad setup.
func (r *Reporter) Run(ctx context.Context) error {
	defer r.stop()
	backoff := r.newBackoff()
	// The pod's UID (for the Events) and its threshold annotations: one GET, retried like the
	// patches; Events recorded meanwhile carry namespace/name only, which is enough to list them.
	for !r.getPod(ctx) && !r.gone {
		if !sleep(ctx, backoff.Step()) {
			return nil
		}
	}
	tick := time.NewTicker(r.o.Interval)
	defer tick.Stop()
	r.lastTraffic = time.Now()
	backoff = r.newBackoff()
	var retry <-chan time.Time
	r.Tick(ctx)
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
			if retry != nil {
				// A retry is pending: evaluate the alerts, leave the patch to the retry.
				r.evaluate(r.o.Stats(), time.Now())
				continue
			}
		case <-retry:
		}
		retry = nil
		if ok := r.Tick(ctx); ok {
			backoff = r.newBackoff()
		} else if !r.gone {
			retry = time.After(backoff.Step())
		}
	}
}

// RunEventsOnly is Run for an agent that has no stats to report (see AgentDisabled): it reads
// the pod once, retried, so that the Events recorded so far go out with its UID, and then
// waits for ctx. No annotation is written.
func (r *Reporter) RunEventsOnly(ctx context.Context) {
	defer r.stop()
	backoff := r.newBackoff()
	for !r.getPod(ctx) && !r.gone {
		if !sleep(ctx, backoff.Step()) {
			return
		}
	}
	<-ctx.Done()
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

// Tick does one round: the alerts and the TrafficStats Event, then the annotation patch if
// anything changed. It returns false when the patch failed and should be retried.
func (r *Reporter) Tick(ctx context.Context) bool {
	s := r.o.Stats()
	now := time.Now()
	r.evaluate(s, now)
	return r.patch(ctx, s)
}

// getPod reads the pod once: its UID and its threshold annotations.
func (r *Reporter) getPod(ctx context.Context) bool {
	cctx, cancel := context.WithTimeout(ctx, r.o.RequestTimeout)
	defer cancel()
	pod, err := r.o.Client.CoreV1().Pods(r.o.Namespace).Get(cctx, r.o.PodName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		r.gone = true
		r.log.Info("the agent's pod does not exist (404): no annotation updates", "pod", r.o.Namespace+"/"+r.o.PodName)
		r.setUID("")
		return false
	}
	if err != nil {
		r.failed(err, "reading the agent's pod")
		return false
	}
	r.ok()
	r.adoptPod(pod)
	return true
}

func (r *Reporter) adoptPod(pod *corev1.Pod) {
	r.setUID(pod.UID)
	t, errs := r.o.Thresholds.withAnnotations(pod.Annotations)
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

// desired returns the annotations to write, and the snapshot that decides whether they changed.
func (r *Reporter) desired(s v1alpha1.Stats) (map[string]string, snapshot) {
	ann := report.Annotations(s, r.o.MaxStatsJSON)
	s.Updated = time.Time{}
	s.Window.PeriodSeconds = 0
	key := report.Annotations(s, r.o.MaxStatsJSON)
	return ann, snapshot(key)
}

// PatchFor is the JSON merge patch that moves the pod's kong-watcher.io/* agent annotations
// from prev (what the last patch wrote) to next: changed keys set, vanished keys nulled, no
// other key, label or field mentioned. It returns nil when nothing changed.
func PatchFor(prev, next map[string]string) []byte {
	ann := map[string]any{}
	for k, v := range next {
		if old, ok := prev[k]; !ok || old != v {
			ann[k] = v
		}
	}
	for k := range prev {
		if _, ok := next[k]; !ok {
			ann[k] = nil
		}
	}
	if len(ann) == 0 {
		return nil
	}
	b, _ := json.Marshal(map[string]any{"metadata": map[string]any{"annotations": ann}})
	return b
}

// patch writes the annotations if they changed since the last successful patch.
func (r *Reporter) patch(ctx context.Context, s v1alpha1.Stats) bool {
	if r.gone {
		return true
	}
	ann, key := r.desired(s)
	if r.patched != nil && maps.Equal(r.patched, key) {
		return true
	}
	body := PatchFor(r.written, ann)
	if body == nil {
		r.patched = key
		return true
	}
	for attempt := 0; ; attempt++ {
		cctx, cancel := context.WithTimeout(ctx, r.o.RequestTimeout)
		pod, err := r.o.Client.CoreV1().Pods(r.o.Namespace).Patch(cctx, r.o.PodName, types.MergePatchType, body, metav1.PatchOptions{FieldManager: Component})
		cancel()
		switch {
		case err == nil:
			r.ok()
			r.patched, r.written = key, ann
			r.adoptPod(pod)
			return true
		case apierrors.IsNotFound(err):
			r.gone = true
			r.log.Info("the agent's pod is gone (404): no more annotation updates", "pod", r.o.Namespace+"/"+r.o.PodName)
			return true
		case apierrors.IsConflict(err) && attempt < 3:
			continue // a merge patch carries no resourceVersion; a conflict is transient
		}
		if ctx.Err() != nil {
			return true
		}
		r.failed(err, "patching the agent's pod annotations")
		return false
	}
}

// failed logs the first failure of an episode, and a changed kind of error, not every retry.
func (r *Reporter) failed(err error, what string) {
	r.failures++
	kind := errKind(err)
	if !r.failing {
		r.failing, r.failingSince, r.lastErr = true, time.Now(), kind
		r.log.Error(err, "cannot report to the API server; the agent keeps counting and retries with backoff (logged again when it is back)", "action", what)
		return
	}
	if kind != r.lastErr {
		r.lastErr = kind
		r.log.Info("still cannot report to the API server, now for another reason", "action", what, "error", err.Error())
	}
}

func (r *Reporter) ok() {
	if r.failing {
		r.log.Info("API server reachable again; reporting resumed", "failedFor", time.Since(r.failingSince).Round(time.Second).String(), "failedAttempts", r.failures)
	}
	r.failing, r.failures, r.lastErr = false, 0, ""
}

func errKind(err error) string {
	if s := apierrors.ReasonForError(err); s != metav1.StatusReasonUnknown {
		return string(s)
	}
	var ue interface{ Temporary() bool }
	if errors.As(err, &ue) {
		return "network"
	}
	return "other"
}
