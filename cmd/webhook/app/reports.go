package app

import (
	"bytes"
	"fmt"
	"math"
	"os"
	"strconv"
	"sync"
	"time"

	"github.com/go-logr/logr"
	"github.com/prometheus/client_golang/prometheus"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/events"
	"sigs.k8s.io/controller-runtime/pkg/metrics"

	"github.com/kong-watcher/kong-watcher/agent/kube"
	"github.com/kong-watcher/kong-watcher/webhook/ingest"
	"github.com/kong-watcher/kong-watcher/webhook/rollup"
)

// RollupEventSource is the reporting controller of the Events on workloads.
const RollupEventSource = "kong-watcher-manager"

var reportsTotal = prometheus.NewCounterVec(prometheus.CounterOpts{
	Name: "kong_watcher_manager_reports_total",
	Help: "Agent reports received, by result (accepted, busy, unauthorized, forbidden, bad_request, pod_gone, error).",
}, []string{"result"})

var registerMetrics sync.Once

// newReportHandler is the endpoint agents report to, with a client of its own: its writes
// must not queue behind, or ahead of, the admission's dry runs.
func newReportHandler(cfg *rest.Config, o *Options, rec events.EventRecorder, log logr.Logger) (*ingest.Handler, error) {
	registerMetrics.Do(func() { _ = metrics.Registry.Register(reportsTotal) })
	ccfg := rest.CopyConfig(cfg)
	ccfg.QPS, ccfg.Burst = 100, 200
	ccfg.UserAgent = ingest.FieldManager
	cs, err := kubernetes.NewForConfig(ccfg)
	if err != nil {
		return nil, fmt.Errorf("creating the report client: %w", err)
	}
	ao := ingest.DefaultAuthOptions(o.ReportAudience)
	ao.SourceReviewsPerSecond = o.ReportReviewsPerAddress
	ao.SourceReviewBurst = int(math.Ceil(5 * o.ReportReviewsPerAddress))
	return ingest.NewHandler(ingest.Options{
		Auth:        ingest.NewAuthenticator(cs.AuthenticationV1().TokenReviews(), ao),
		Client:      cs,
		Recorder:    rec,
		MaxInFlight: o.ReportMaxInFlight,
		Log:         log,
		Observe:     func(result string) { reportsTotal.WithLabelValues(result).Inc() },
	}), nil
}

// newRollup combines the pods' stats into their workloads' (on the elected replica only), with
// the alert thresholds the webhook gives the agents as the defaults.
func newRollup(cfg *rest.Config, o *Options, rec events.EventRecorder, log logr.Logger) (*rollup.Rollup, error) {
	ro := rollup.Options{Interval: o.RollupInterval, TrafficStatsInterval: o.RollupTrafficStatsInterval, Log: log}
	if o.RollupTrafficStatsInterval == 0 {
		ro.TrafficStatsInterval = -1 // the flag's 0 is "never"; the option's 0 is "default"
	}
	// Validated with the agent's parsers by Complete; empty keeps the agent's defaults.
	if v := o.Agent.HighErrorRateThreshold; v != "" {
		ro.ErrorRateThreshold, _ = kube.ParseErrorRate(v)
	}
	if v := o.Agent.HighLatencyP99Ms; v != "" {
		ro.LatencyP99Ms, _ = kube.ParseLatencyMs(v)
	}
	if v := o.Agent.AlertMinRequests; v != "" {
		ro.MinRequests, _ = strconv.ParseUint(v, 10, 64)
	}
	return rollup.New(cfg, rec, ro)
}

// fileCache reads a small file again only when its size or modification time changed: the CA
// is read on every injection, and rotation replaces the file.
type fileCache struct {
	path string
	mu   sync.Mutex
	size int64
	mod  time.Time
	data []byte
}

func newFileCache(path string) *fileCache { return &fileCache{path: path} }

func (f *fileCache) read() []byte {
	st, err := os.Stat(f.path)
	if err != nil {
		return nil
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.data != nil && st.Size() == f.size && st.ModTime().Equal(f.mod) {
		return f.data
	}
	b, err := os.ReadFile(f.path)
	if err != nil || !bytes.Contains(b, []byte("-----BEGIN CERTIFICATE-----")) {
		return nil
	}
	f.size, f.mod, f.data = st.Size(), st.ModTime(), b
	return b
}
