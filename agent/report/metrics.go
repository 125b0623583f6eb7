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
	// MaxHosts and MaxPaths: how many hosts / normalised paths have a label value of their
	// own at a time (default 100 each, as the aggregator's rows); the others are labelled
	// "other". Places go by recent weight, as for the aggregator's rows (aggregate.Ranker),
	// not by order of arrival: junk seen first cannot keep real values in "other" for good.
	// A value that loses its place has its series deleted and counts under "other" from then
	// on; a value that gains a place gets its own series, starting from zero. So a series
	// counts its value's requests since the value last got its place. With no more distinct
	// values than the bound, every value keeps its place and series from its first request.
	MaxHosts, MaxPaths int
	// MaxSeries bounds the distinct {method,host,path,code,listener} series (default 2000);
	// beyond it new combinations are counted under host="other", path="other" (at most
	// 8 methods x 501 codes x the listener labels more).
	MaxSeries int
	// NativeHistograms: the latency histograms are also native histograms (exposed to a
	// scraper that negotiates them). Off by default: they cost a sparse-bucket lookup and
	// two more atomic additions per histogram per request, about a third of Observe.
	NativeHistograms bool
}

// Listener labels: the gateway's listeners are few and come from its configuration, so the
// first seen keep their label; at most maxPortLabels of them may be port numbers (listeners
// no name covers), and at most maxListenerLabels labels there are, the rest are "other".
const (
	maxListenerLabels = 12
	maxPortLabels     = 4
)

const defaultMaxSeries = 2000

// Latency buckets in seconds: nginx measures whole milliseconds; Kong's own time is usually
// a few ms, upstreams up to the 60 s default timeout.
var latencyBuckets = []float64{.001, .002, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}

// luaBuckets: a Lua phase of Kong's takes from a few µs (body filter, balancer) to a few ms
// (access with plugins that call out); request latency's buckets would put them all in one.
var luaBuckets = []float64{.000005, .00001, .000025, .00005, .0001, .00025, .0005, .001, .0025, .005, .01, .025, .1, 1}

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
	upstream         *prometheus.HistogramVec
	kong             *prometheus.HistogramVec
	luaPhase         *prometheus.HistogramVec
	bytes            *prometheus.CounterVec
	probesAttached   prometheus.Gauge
	eventsDropped    prometheus.Counter
	processesTracked prometheus.Gauge
	decodeErrors     prometheus.Counter
	wireBuffered     prometheus.Gauge
	wireGivenUp      prometheus.Counter
	info             *prometheus.GaugeVec

	mu     sync.Mutex
	opts   MetricsOptions
	rank   [2]*aggregate.Ranker // by dimension (hostDim, pathDim): who has a label value
	series seriesSet
	buf    []byte
	// The listener labels, in the order they were first seen, with their cached children.
	listeners     []*listenerChildren
	listenerIndex map[string]uint8
	portLabels    int
}

// listenerChildren are one listener label's children of the per-request histograms and
// counters, cached so that Observe does no label hashing or allocation in the steady state.
type listenerChildren struct {
	name     string
	duration [len(aggregate.Methods)]prometheus.Observer
	upstream prometheus.Observer
	kong     prometheus.Observer
	lua      [model.NumLuaPhases]prometheus.Observer
	bytes    prometheus.Counter
}

// The label dimensions that have Rankers.
const (
	hostDim = 0
	pathDim = 1
)

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
	hist := func(name, help string, buckets ...float64) prometheus.HistogramOpts {
		if buckets == nil {
			buckets = latencyBuckets
		}
		opts := prometheus.HistogramOpts{Namespace: "kong_watcher", Name: name, Help: help, Buckets: buckets}
		if o.NativeHistograms {
			opts.NativeHistogramBucketFactor = 1.1
			opts.NativeHistogramMaxBucketNumber = 160
			opts.NativeHistogramMinResetDuration = time.Hour
		}
		return opts
	}
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kong_watcher", Name: "requests_total",
			Help: `HTTP requests Kong served, by method, host, normalised path, status code ("000": no valid response) and listener ("proxy" for Kong's traffic; "admin", "status", "unix", a port number...). Only the busiest hosts and paths (by recent traffic, up to the agent's bounds) have a value of their own, the others are labelled "other"; a value that loses its place loses its series.`},
			[]string{"method", "host", "path", "code", "listener"}),
		duration: prometheus.NewHistogramVec(hist("request_duration_seconds",
			"Total request time as nginx measures it ($request_time), by method and listener."), []string{"method", "listener"}),
		upstream: prometheus.NewHistogramVec(hist("upstream_duration_seconds",
			"Upstream response time for proxied requests ($upstream_response_time, summed over tries), by listener."), []string{"listener"}),
		kong: prometheus.NewHistogramVec(hist("kong_duration_seconds",
			"Time Kong itself spent: total minus upstream for proxied requests, total otherwise; by listener."), []string{"listener"}),
		luaPhase: prometheus.NewHistogramVec(hist("lua_phase_duration_seconds",
			"Time spent in Kong's Lua handlers, by nginx phase (rewrite, access, content, header_filter, body_filter, log, balancer) and listener; each phase in the requests where its handler ran.",
			luaBuckets...), []string{"phase", "listener"}),
		bytes: prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "kong_watcher", Name: "response_bytes_total",
			Help: "Bytes sent to clients ($bytes_sent), by listener."}, []string{"listener"}),
		probesAttached: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kong_watcher", Name: "probes_attached",
			Help: "eBPF probes currently attached."}),
		eventsDropped: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kong_watcher", Name: "events_dropped_total",
			Help: "Events lost before decoding (ring buffer full)."}),
		processesTracked: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kong_watcher", Name: "processes_tracked",
			Help: "Kong/nginx worker processes currently probed."}),
		decodeErrors: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kong_watcher", Name: "decode_errors_total",
			Help: "Events the agent could not decode into a request."}),
		wireBuffered: prometheus.NewGauge(prometheus.GaugeOpts{Namespace: "kong_watcher", Name: "wire_buffered_bytes",
			Help: "Bytes the wire data path holds for connections in progress (bounded by its budget)."}),
		wireGivenUp: prometheus.NewCounter(prometheus.CounterOpts{Namespace: "kong_watcher", Name: "wire_connections_given_up_total",
			Help: "Connections the wire data path stopped following to stay within its memory budget or whose head never completed."}),
		info: prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "kong_watcher", Name: "info",
			Help: "Always 1: the agent's version and data path (nginx-request, wire or empty)."}, []string{"version", "data_path"}),
		opts:   o,
		rank:   [2]*aggregate.Ranker{aggregate.NewRanker(o.MaxHosts), aggregate.NewRanker(o.MaxPaths)},
		series: newSeriesSet(o.MaxHosts, o.MaxPaths),
		buf:    make([]byte, 0, 512),

		listenerIndex: map[string]uint8{},
	}
	m.listener(model.ListenerProxy) // the proxy's series exist from the start
	return m
}

// listener returns the index of listener name's label (see maxListenerLabels), creating its
// children on first sight; m.mu must be held (or m not shared yet).
func (m *Metrics) listener(name string) uint8 {
	if name == "" {
		name = model.ListenerProxy
	}
	if i, ok := m.listenerIndex[name]; ok {
		return i
	}
	label := name
	isPort := name[0] >= '0' && name[0] <= '9'
	if len(m.listeners) >= maxListenerLabels-1 || isPort && m.portLabels >= maxPortLabels {
		label = v1alpha1.OtherRow
	}
	i, ok := m.listenerIndex[label]
	if !ok {
		i = uint8(len(m.listeners))
		c := &listenerChildren{name: label,
			upstream: m.upstream.WithLabelValues(label), kong: m.kong.WithLabelValues(label), bytes: m.bytes.WithLabelValues(label)}
		for j, method := range aggregate.Methods {
			c.duration[j] = m.duration.WithLabelValues(method, label)
		}
		for j, phase := range model.LuaPhaseNames {
			c.lua[j] = m.luaPhase.WithLabelValues(phase, label)
		}
		m.listeners = append(m.listeners, c)
		m.listenerIndex[label] = i
		if isPort && label == name {
			m.portLabels++
		}
	}
	m.listenerIndex[name] = i
	return i
}

// Register registers every metric on reg.
func (m *Metrics) Register(reg prometheus.Registerer) error {
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.upstream, m.kong, m.luaPhase, m.bytes,
		m.probesAttached, m.eventsDropped, m.processesTracked, m.decodeErrors, m.wireBuffered, m.wireGivenUp, m.info} {
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
	listener := m.listener(r.Listener)
	children := m.listeners[listener]
	buf := pathnorm.MarkCut(aggregate.AppendHost(m.buf[:0], r.Host), r.HostTruncated)
	host := m.place(hostDim, buf)
	buf = r.AppendRoute(buf[:0])
	path := m.place(pathDim, buf)
	counter := m.counter(method, host, path, code, listener)
	m.buf = buf
	m.mu.Unlock()

	counter.Inc()
	children.duration[method].Observe(r.Latency.Seconds())
	if r.HasUpstream {
		children.upstream.Observe(r.Upstream.Seconds())
	}
	children.kong.Observe(r.KongLatency().Seconds())
	if r.HasLua {
		for i, d := range r.LuaPhases {
			if d > 0 { // the phases whose handler ran, as in the stats
				children.lua[i].Observe(d.Seconds())
			}
		}
	}
	if r.BytesSent > 0 {
		children.bytes.Add(float64(r.BytesSent))
	}
}

// place returns key's slot in dimension dim (-1: "other"). If key has just taken the slot
// from another value, that value's series are deleted first: its requests count under
// "other" from now on. m.mu must be held.
func (m *Metrics) place(dim int, key []byte) int32 {
	slot, old, moved := m.rank[dim].Observe(key)
	if moved {
		m.series.drop(dim, int32(slot), func(k seriesKey) {
			host, path := m.label(hostDim, k.host), m.label(pathDim, k.path)
			if dim == hostDim {
				host = old
			} else {
				path = old
			}
			m.requests.DeleteLabelValues(aggregate.Methods[k.method], host, path, codeLabels[k.code], m.listeners[k.listener].name)
		})
	}
	return int32(slot)
}

// label returns the label value of slot in dimension dim; m.mu must be held.
func (m *Metrics) label(dim int, slot int32) string {
	if slot < 0 {
		return v1alpha1.OtherRow
	}
	return m.rank[dim].Key(int(slot))
}

// counter returns the cached requests_total child; m.mu must be held.
func (m *Metrics) counter(method int, host, path int32, code int, listener uint8) prometheus.Counter {
	k := seriesKey{host: host, path: path, code: uint16(code), method: uint8(method), listener: listener}
	if i, ok := m.series.index[k]; ok {
		return m.series.entries[i].c
	}
	if len(m.series.index) >= m.opts.MaxSeries {
		k.host, k.path = -1, -1
		if i, ok := m.series.index[k]; ok {
			return m.series.entries[i].c
		}
	}
	c := m.requests.WithLabelValues(aggregate.Methods[k.method], m.label(hostDim, k.host), m.label(pathDim, k.path), codeLabels[code],
		m.listeners[listener].name)
	m.series.add(k, c)
	return c
}

// seriesKey names a requests_total child by the Ranker slots of its host and path (-1:
// "other") and its listener label's index, so that finding it needs no string.
type seriesKey struct {
	host, path int32
	code       uint16
	method     uint8
	listener   uint8
}

func (k seriesKey) slot(dim int) int32 {
	if dim == hostDim {
		return k.host
	}
	return k.path
}

// seriesSet holds the requests_total children, indexed by key and linked in one list per
// host slot and one per path slot, so that a value losing its slot deletes its series in
// time proportional to their number: each deletion is paid for by the request that created
// the series. Its size is bounded by MaxSeries plus the "other"/"other" overflow series.
type seriesSet struct {
	index   map[seriesKey]int32
	entries []seriesEntry
	free    []int32    // unused entries
	heads   [2][]int32 // by dimension and slot: the first entry of its list, -1 if none
}

type seriesEntry struct {
	c          prometheus.Counter
	key        seriesKey
	prev, next [2]int32 // by dimension: neighbours in the slot's list, -1 if none
}

func newSeriesSet(hosts, paths int) seriesSet {
	s := seriesSet{index: make(map[seriesKey]int32)}
	for dim, n := range [2]int{hosts, paths} {
		s.heads[dim] = make([]int32, n)
		for i := range s.heads[dim] {
			s.heads[dim][i] = -1
		}
	}
	return s
}

func (s *seriesSet) add(k seriesKey, c prometheus.Counter) {
	var i int32
	if n := len(s.free); n > 0 {
		i, s.free = s.free[n-1], s.free[:n-1]
	} else {
		i = int32(len(s.entries))
		s.entries = append(s.entries, seriesEntry{})
	}
	e := &s.entries[i]
	*e = seriesEntry{c: c, key: k, prev: [2]int32{-1, -1}, next: [2]int32{-1, -1}}
	for dim := range 2 {
		if slot := k.slot(dim); slot >= 0 {
			head := &s.heads[dim][slot]
			e.next[dim] = *head
			if *head >= 0 {
				s.entries[*head].prev[dim] = i
			}
			*head = i
		}
	}
	s.index[k] = i
}

// drop removes every series of slot in dimension dim, calling del with each one's key.
func (s *seriesSet) drop(dim int, slot int32, del func(seriesKey)) {
	for i := s.heads[dim][slot]; i >= 0; {
		e := &s.entries[i]
		next := e.next[dim]
		if other := 1 - dim; e.key.slot(other) >= 0 {
			s.unlink(i, other)
		}
		del(e.key)
		delete(s.index, e.key)
		*e = seriesEntry{}
		s.free = append(s.free, i)
		i = next
	}
	s.heads[dim][slot] = -1
}

// unlink takes entry i out of its list in dimension dim.
func (s *seriesSet) unlink(i int32, dim int) {
	e := &s.entries[i]
	if p := e.prev[dim]; p >= 0 {
		s.entries[p].next[dim] = e.next[dim]
	} else {
		s.heads[dim][e.key.slot(dim)] = e.next[dim]
	}
	if n := e.next[dim]; n >= 0 {
		s.entries[n].prev[dim] = e.prev[dim]
	}
}

// SetProbesAttached sets kong_watcher_probes_attached.
func (m *Metrics) SetProbesAttached(n int) { m.probesAttached.Set(float64(n)) }

// AddEventsDropped adds to kong_watcher_events_dropped_total.
func (m *Metrics) AddEventsDropped(n uint64) { m.eventsDropped.Add(float64(n)) }

// SetProcessesTracked sets kong_watcher_processes_tracked.
func (m *Metrics) SetProcessesTracked(n int) { m.processesTracked.Set(float64(n)) }

// AddDecodeErrors adds to kong_watcher_decode_errors_total.
func (m *Metrics) AddDecodeErrors(n uint64) { m.decodeErrors.Add(float64(n)) }

// SetWireBuffered sets kong_watcher_wire_buffered_bytes.
func (m *Metrics) SetWireBuffered(n int64) { m.wireBuffered.Set(float64(n)) }

// AddWireGivenUp adds to kong_watcher_wire_connections_given_up_total.
func (m *Metrics) AddWireGivenUp(n uint64) { m.wireGivenUp.Add(float64(n)) }

// SetInfo sets kong_watcher_info{version,data_path} to 1, replacing any earlier values (the
// data path is learnt after start-up).
func (m *Metrics) SetInfo(version, dataPath string) {
	m.info.Reset()
	m.info.WithLabelValues(version, dataPath).Set(1)
}
