package report

import (
	"strconv"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/kong-watcher/kong-watcher/agent/aggregate"
	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/agent/pathnorm"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// MetricsOptions bound the label cardinality of kong_watcher_requests_total; zero values
// take the defaults.
type MetricsOptions struct {
	// MaxHosts and MaxPaths: the first distinct hosts / normalised paths get their own label
	// value, later ones are labelled "other" (default 100 each, as the aggregator's rows).
	// Unlike the aggregator's windows this is first-come for the process lifetime: a counter
	// series must not disappear and reappear.
	MaxHosts, MaxPaths int
	// MaxSeries bounds the distinct {method,host,path,code} series (default 2000); beyond
	// it new combinations are counted under host="other", path="other" (at most
	// 8 methods x 501 codes more).
	MaxSeries int
}

const defaultMaxSeries = 2000

// Latency buckets in seconds: nginx measures whole milliseconds; Kong's own time is usually
// a few ms, upstreams up to the 60 s default timeout.
var latencyBuckets = []float64{.001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// codeLabels[s] is the code label of status s; "000" for no valid response.
var codeLabels = func() (l [600]string) {
	l[0] = "000"
	for s := 100; s < 600; s++ {
		l[s] = strconv.Itoa(s)
	}
	return l
}()

// Metrics is a model.Sink that keeps the Prometheus metrics (prefix kong_watcher_) current on
// every request, plus setters for the agent's own health metrics. Safe for concurrent use.
type Metrics struct {
	requests         *prometheus.CounterVec
	duration         *prometheus.HistogramVec
	upstream         prometheus.Histogram
	kong             prometheus.Histogram
	luaPhase         *prometheus.HistogramVec
	bytes            prometheus.Counter
	probesAttached   prometheus.Gauge
	eventsDropped    prometheus.Counter
	processesTracked prometheus.Gauge
	decodeErrors     prometheus.Counter
	info             *prometheus.GaugeVec

	// Cached children, so Observe does no label hashing or allocation in the steady state.
	durationByMethod [len(aggregate.Methods)]prometheus.Observer
	luaByPhase       [model.NumLuaPhases]prometheus.Observer

	mu     sync.Mutex
	opts   MetricsOptions
	hosts  map[string]string // label values seen -> the same string (interned)
	paths  map[string]string
	series map[string]prometheus.Counter // method \x00 host \x00 path \x00 code
	buf    []byte
}

var _ model.Sink = (*Metrics)(nil)

// NewMetrics creates the metrics; Register them on a registry (see NewRegistry).
func NewMetrics(o MetricsOptions) *Metrics {
	if o.MaxHosts <= 0 {
		o.MaxHosts = aggregate.DefaultMaxRows
	}
	if o.MaxPaths <= 0 {
		o.MaxPaths = aggregate.DefaultMaxRows
	}
	if o.MaxSeries <= 0 {
		o.MaxSeries = defaultMaxSeries
	}
	hist := func(name, help string) prometheus.HistogramOpts {
		return prometheus.HistogramOpts{
			Namespace: "kong_watcher", Name: name, Help: help, Buckets: latencyBuckets,
			// Native histograms too, for servers that negotiate them: finer, same cost.
			NativeHistogramBucketFactor:     1.1,
			NativeHistogramMaxBucketNumber:  160,
			NativeHistogramMinResetDuration: time.Hour,
		}
	}
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kong_watcher", Name: "requests_total",
			Help: `HTTP requests Kong served, by method, host, normalised path and status code ("000": no valid response). Hosts and paths beyond the agent's bounds are labelled "other".`},
			[]string{"method", "host", "path", "code"}),
		duration: prometheus.NewHistogramVec(hist("request_duration_seconds",
			"Total request time as nginx measures it ($request_time), by method."), []string{"method"}),
		upstream: prometheus.NewHistogram(hist("upstream_duration_seconds",
			"Upstream response time for proxied requests ($upstream_response_time, summed over tries).")),
		kong: prometheus.NewHistogram(hist("kong_duration_seconds",
			"Time Kong itself spent: total minus upstream for proxied requests, total otherwise.")),
		luaPhase: prometheus.NewHistogramVec(hist("lua_phase_duration_seconds",
			"Time spent in Kong's Lua handlers, by nginx phase (rewrite, access, content, log)."), []string{"phase"}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kong_watcher", Name: "response_bytes_total",
			Help: "Bytes sent to clients ($bytes_sent)."}),
		probesAttached: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kong_watcher", Name: "probes_attached",
			Help: "eBPF probes currently attached."}),
		eventsDropped: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kong_watcher", Name: "events_dropped_total",
			Help: "Events lost before decoding (ring buffer full)."}),
		processesTracked: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kong_watcher", Name: "processes_tracked",
			Help: "Kong/nginx worker processes currently probed."}),
		decodeErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kong_watcher", Name: "decode_errors_total",
			Help: "Events the agent could not decode into a request."}),
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "kong_watcher", Name: "info",
			Help: "Always 1: the agent's version and data path (nginx-request, wire or empty)."}, []string{"version", "data_path"}),
		opts:   o,
		hosts:  make(map[string]string, o.MaxHosts),
		paths:  make(map[string]string, o.MaxPaths),
		series: make(map[string]prometheus.Counter),
		buf:    make([]byte, 0, 512),
	}
	for i, name := range aggregate.Methods {
		m.durationByMethod[i] = m.duration.WithLabelValues(name)
	}
	for i, name := range model.LuaPhaseNames {
		m.luaByPhase[i] = m.luaPhase.WithLabelValues(name)
	}
	return m
}

// Register registers every metric on reg.
func (m *Metrics) Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.upstream, m.kong, m.luaPhase, m.bytes,
		m.probesAttached, m.eventsDropped, m.processesTracked, m.decodeErrors, m.info} {
		if err := reg.Register(c); err != nil {
			return err
		}
	}
	return nil
}

// Observe updates the request metrics for r.
func (m *Metrics) Observe(r *model.Request) {
	method := aggregate.MethodIndex(r.Method)
	code := 0
	if aggregate.ValidStatus(r.Status) {
		code = r.Status
	}

	m.mu.Lock()
	buf := aggregate.AppendHost(m.buf[:0], r.Host)
	host := intern(m.hosts, buf, m.opts.MaxHosts)
	buf = pathnorm.Append(buf[:0], r.URI)
	path := intern(m.paths, buf, m.opts.MaxPaths)
	counter := m.counter(method, host, path, code)
	m.buf = buf
	m.mu.Unlock()

	counter.Inc()
	m.durationByMethod[method].Observe(r.Latency.Seconds())
	if r.HasUpstream {
		m.upstream.Observe(r.Upstream.Seconds())
	}
	m.kong.Observe(r.KongLatency().Seconds())
	if r.HasLua {
		for i, d := range r.LuaPhases {
			m.luaByPhase[i].Observe(d.Seconds())
		}
	}
	if r.BytesSent > 0 {
		m.bytes.Add(float64(r.BytesSent))
	}
}

// intern returns the label value for key: itself while the set has room, else "other".
func intern(set map[string]string, key []byte, max int) string {
	if s, ok := set[string(key)]; ok {
		return s
	}
	if len(set) >= max {
		return v1alpha1.OtherRow
	}
	s := string(key)
	set[s] = s
	return s
}

// counter returns the cached requests_total child; m.mu must be held.
func (m *Metrics) counter(method int, host, path string, code int) prometheus.Counter {
	key := m.seriesKey(method, host, path, code)
	if c, ok := m.series[string(key)]; ok {
		return c
	}
	if len(m.series) >= m.opts.MaxSeries {
		host, path = v1alpha1.OtherRow, v1alpha1.OtherRow
		key = m.seriesKey(method, host, path, code)
		if c, ok := m.series[string(key)]; ok {
			return c
		}
	}
	c := m.requests.WithLabelValues(aggregate.Methods[method], host, path, codeLabels[code])
	m.series[string(key)] = c
	return c
}

func (m *Metrics) seriesKey(method int, host, path string, code int) []byte {
	k := append(m.buf[:0], aggregate.Methods[method]...)
	k = append(k, 0)
	k = append(k, host...)
	k = append(k, 0)
	k = append(k, path...)
	k = append(k, 0)
	k = append(k, codeLabels[code]...)
	m.buf = k
	return k
}

// SetProbesAttached sets kong_watcher_probes_attached.
func (m *Metrics) SetProbesAttached(n int) { m.probesAttached.Set(float64(n)) }

// AddEventsDropped adds to kong_watcher_events_dropped_total.
func (m *Metrics) AddEventsDropped(n uint64) { m.eventsDropped.Add(float64(n)) }

// SetProcessesTracked sets kong_watcher_processes_tracked.
func (m *Metrics) SetProcessesTracked(n int) { m.processesTracked.Set(float64(n)) }

// AddDecodeErrors adds to kong_watcher_decode_errors_total.
func (m *Metrics) AddDecodeErrors(n uint64) { m.decodeErrors.Add(float64(n)) }

// SetInfo sets kong_watcher_info{version,data_path} to 1, replacing any earlier values (the
// data path is learnt after start-up).
func (m *Metrics) SetInfo(version, dataPath string) {
	m.info.Reset()
	m.info.WithLabelValues(version, dataPath).Set(1)
}
