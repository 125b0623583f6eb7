package aggregate

import (
	"strconv"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// accumulator holds one period's numbers in fixed-size arrays and bounded tables, so that
// observing a request never allocates once its host and path slots have rows.
type accumulator struct {
	start        time.Time
	requests     uint64
	responses    uint64
	errors       uint64
	clientErrors uint64
	methods      [len(Methods)]uint64
	codes        [600]uint64 // by status; index 0 counts requests with no valid response
	bytes        uint64
	dropped      uint64
	last         time.Time
	latency      histogram
	upstream     histogram
	kong         histogram
	lua          [model.NumLuaPhases]histogram
	hosts        table
	paths        table
}

func newAccumulator(start time.Time, maxHosts, maxPaths int) *accumulator {
	a := &accumulator{
		start:    start,
		latency:  newHistogram(summarySubBits, true),
		upstream: newHistogram(summarySubBits, true),
		kong:     newHistogram(summarySubBits, true),
		hosts:    newTable(maxHosts),
		paths:    newTable(maxPaths),
	}
	for i := range a.lua {
		a.lua[i] = newHistogram(summarySubBits, true)
	}
	return a
}

// observe counts r; hostSlot and pathSlot are the Ranker slots of its host and path (-1:
// other).
func (a *accumulator) observe(r *model.Request, end time.Time, hostSlot, pathSlot int) {
	a.requests++
	a.methods[MethodIndex(r.Method)]++
	code, isErr := 0, true
	if ValidStatus(r.Status) {
		a.responses++
		code = r.Status
		isErr = r.Status >= 500
		if r.Status >= 400 && r.Status < 500 {
			a.clientErrors++
		}
	}
	a.codes[code]++
	if isErr {
		a.errors++
	}
	a.bytes += r.BytesSent
	if end.After(a.last) {
		a.last = end
	}
	a.latency.record(r.Latency)
	if r.HasUpstream {
		a.upstream.record(r.Upstream)
	}
	a.kong.record(r.KongLatency())
	if r.HasLua {
		for i := range a.lua {
			a.lua[i].record(r.LuaPhases[i])
		}
	}
	for _, row := range [2]*row{a.hosts.get(hostSlot), a.paths.get(pathSlot)} {
		row.requests++
		if isErr {
			row.errors++
		}
		row.latency.record(r.Latency)
	}
}

func (a *accumulator) merge(o *accumulator) {
	a.requests += o.requests
	a.responses += o.responses
	a.errors += o.errors
	a.clientErrors += o.clientErrors
	for i, n := range o.methods {
		a.methods[i] += n
	}
	for i, n := range o.codes {
		a.codes[i] += n
	}
	a.bytes += o.bytes
	a.dropped += o.dropped
	if o.last.After(a.last) {
		a.last = o.last
	}
	a.latency.merge(&o.latency)
	a.upstream.merge(&o.upstream)
	a.kong.merge(&o.kong)
	for i := range a.lua {
		a.lua[i].merge(&o.lua[i])
	}
	a.hosts.mergeFrom(&o.hosts)
	a.paths.mergeFrom(&o.paths)
}

func (a *accumulator) reset(start time.Time) {
	hosts, paths := a.hosts, a.paths
	latency, upstream, kong, lua := a.latency, a.upstream, a.kong, a.lua
	*a = accumulator{start: start, latency: latency, upstream: upstream, kong: kong, lua: lua, hosts: hosts, paths: paths}
	a.latency.reset()
	a.upstream.reset()
	a.kong.reset()
	for i := range a.lua {
		a.lua[i].reset()
	}
	a.hosts.reset()
	a.paths.reset()
}

// summary renders the accumulator as the Stats JSON summary of the period [start, end);
// hosts and paths name the rows' slots.
func (a *accumulator) summary(end time.Time, hosts, paths *Ranker) v1alpha1.Summary {
	period := end.Sub(a.start).Seconds()
	s := v1alpha1.Summary{
		PeriodSeconds:     period,
		Requests:          a.requests,
		Responses:         a.responses,
		Errors:            a.errors,
		ClientErrors:      a.clientErrors,
		LatencyMs:         a.latency.latency(),
		UpstreamLatencyMs: a.upstream.latency(),
		KongLatencyMs:     a.kong.latency(),
		Methods:           map[string]uint64{},
		StatusCodes:       map[string]uint64{},
		StatusClasses:     map[string]uint64{},
		Hosts:             a.hosts.list(hosts),
		Paths:             a.paths.list(paths),
		BytesSent:         a.bytes,
		DroppedEvents:     a.dropped,
	}
	if period > 0 {
		s.RequestsPerSecond = float64(a.requests) / period
	}
	if a.requests > 0 {
		s.Histograms = &v1alpha1.Histograms{Bits: v1alpha1.MaxHistogramBits,
			Latency:  a.latency.export(v1alpha1.MaxHistogramBits),
			Upstream: a.upstream.export(v1alpha1.MaxHistogramBits),
			Kong:     a.kong.export(v1alpha1.MaxHistogramBits)}
	}
	for i, n := range a.methods {
		if n > 0 {
			s.Methods[Methods[i]] = n
		}
	}
	for code, n := range a.codes {
		if n == 0 {
			continue
		}
		if code == 0 {
			s.StatusCodes["000"] = n
			s.StatusClasses["none"] += n
			continue
		}
		s.StatusCodes[strconv.Itoa(code)] = n
		s.StatusClasses[strconv.Itoa(code/100)+"xx"] += n
	}
	for i := range a.lua {
		if a.lua[i].n > 0 {
			if s.LuaPhasesMs == nil {
				s.LuaPhasesMs = map[string]v1alpha1.Latency{}
			}
			s.LuaPhasesMs[model.LuaPhaseNames[i]] = a.lua[i].latency()
		}
	}
	if !a.last.IsZero() {
		last := a.last
		s.LastRequestTime = &last
	}
	return s
}
