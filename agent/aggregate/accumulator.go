package aggregate

import (
	"strconv"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// tally holds one period's counts and latency distributions of a set of requests in fixed-size
// arrays: everything a summary holds but its host, path and Lua rows. The proxy's
// accumulator has one; every other listener has a tally of its own.
type tally struct {
	requests     uint64
	responses    uint64
	errors       uint64
	clientErrors uint64
	methods      [len(Methods)]uint64
	codes        [600]uint64 // by status; index 0 counts requests with no valid response
	bytes        uint64
	last         time.Time
	latency      histogram
	upstream     histogram
	kong         histogram
}

func newTally() tally {
	return tally{
		latency:  newHistogram(summarySubBits, true),
		upstream: newHistogram(summarySubBits, true),
		kong:     newHistogram(summarySubBits, true),
	}
}

// observe counts r and reports whether it is an error (5xx or no valid response).
func (t *tally) observe(r *model.Request, end time.Time) bool {
	t.requests++
	t.methods[MethodIndex(r.Method)]++
	code, isErr := 0, true
	if ValidStatus(r.Status) {
		t.responses++
		code = r.Status
		isErr = r.Status >= 500
		if r.Status >= 400 && r.Status < 500 {
			t.clientErrors++
		}
	}
	t.codes[code]++
	if isErr {
		t.errors++
	}
	t.bytes += r.BytesSent
	if end.After(t.last) {
		t.last = end
	}
	t.latency.record(r.Latency)
	if r.HasUpstream {
		t.upstream.record(r.Upstream)
	}
	t.kong.record(r.KongLatency())
	return isErr
}

func (t *tally) merge(o *tally) {
	t.requests += o.requests
	t.responses += o.responses
	t.errors += o.errors
	t.clientErrors += o.clientErrors
	for i, n := range o.methods {
		t.methods[i] += n
	}
	for i, n := range o.codes {
		t.codes[i] += n
	}
	t.bytes += o.bytes
	if o.last.After(t.last) {
		t.last = o.last
	}
	t.latency.merge(&o.latency)
	t.upstream.merge(&o.upstream)
	t.kong.merge(&o.kong)
}

// reset empties t, keeping its histograms' memory.
func (t *tally) reset() {
	latency, upstream, kong := t.latency, t.upstream, t.kong
	*t = tally{latency: latency, upstream: upstream, kong: kong}
	t.latency.reset()
	t.upstream.reset()
	t.kong.reset()
}

// summary renders t as a Summary of a period of the given length, without rows.
func (t *tally) summary(period float64) v1alpha1.Summary {
	s := v1alpha1.Summary{PeriodSeconds: period, ListenerSummary: v1alpha1.ListenerSummary{
		Requests:          t.requests,
		Responses:         t.responses,
		Errors:            t.errors,
		ClientErrors:      t.clientErrors,
		LatencyMs:         t.latency.latency(),
		UpstreamLatencyMs: t.upstream.latency(),
		KongLatencyMs:     t.kong.latency(),
		Methods:           map[string]uint64{},
		StatusCodes:       map[string]uint64{},
		StatusClasses:     map[string]uint64{},
		BytesSent:         t.bytes,
	}}
	if period > 0 {
		s.RequestsPerSecond = float64(t.requests) / period
	}
	if t.requests > 0 {
		s.Histograms = &v1alpha1.Histograms{Bits: v1alpha1.MaxHistogramBits,
			Latency:  t.latency.export(v1alpha1.MaxHistogramBits),
			Upstream: t.upstream.export(v1alpha1.MaxHistogramBits),
			Kong:     t.kong.export(v1alpha1.MaxHistogramBits)}
	}
	for i, n := range t.methods {
		if n > 0 {
			s.Methods[Methods[i]] = n
		}
	}
	for code, n := range t.codes {
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
	if !t.last.IsZero() {
		last := t.last
		s.LastRequestTime = &last
	}
	return s
}

// accumulator holds one period's numbers of the proxy's requests: a tally plus the Lua
// phase times and the bounded host and path tables, so that observing a request never
// allocates once its host and path slots have rows.
type accumulator struct {
	start time.Time
	tally
	dropped uint64
	lua     [model.NumLuaPhases]histogram
	hosts   table
	paths   table
}

func newAccumulator(start time.Time, maxHosts, maxPaths int) *accumulator {
	a := &accumulator{
		start: start,
		tally: newTally(),
		hosts: newTable(maxHosts),
		paths: newTable(maxPaths),
	}
	for i := range a.lua {
		a.lua[i] = newHistogram(summarySubBits, true)
		a.lua[i].unitUs = luaUnitUs
	}
	return a
}

// observe counts r; hostSlot and pathSlot are the Ranker slots of its host and path (-1:
// other).
func (a *accumulator) observe(r *model.Request, end time.Time, hostSlot, pathSlot int) {
	isErr := a.tally.observe(r, end)
	if r.HasLua {
		// Only the phases whose handler ran: a phase's numbers are those of the requests it
		// served (balancer: the proxied ones; header and body filters: those answered),
		// not diluted by zeros from requests that never reached it.
		for i := range a.lua {
			if r.LuaPhases[i] > 0 {
				a.lua[i].record(r.LuaPhases[i])
			}
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
	a.tally.merge(&o.tally)
	a.dropped += o.dropped
	for i := range a.lua {
		a.lua[i].merge(&o.lua[i])
	}
	a.hosts.mergeFrom(&o.hosts)
	a.paths.mergeFrom(&o.paths)
}

func (a *accumulator) reset(start time.Time) {
	a.start = start
	a.tally.reset()
	a.dropped = 0
	for i := range a.lua {
		a.lua[i].reset()
	}
	a.hosts.reset()
	a.paths.reset()
}

// summary renders the accumulator as the Stats JSON summary of the period [start, end);
// hosts and paths name the rows' slots.
func (a *accumulator) summary(end time.Time, hosts, paths *Ranker) v1alpha1.Summary {
	s := a.tally.summary(end.Sub(a.start).Seconds())
	s.Hosts = a.hosts.list(hosts)
	s.Paths = a.paths.list(paths)
	s.DroppedEvents = a.dropped
	for i := range a.lua {
		if a.lua[i].n > 0 {
			if s.LuaPhasesMs == nil {
				s.LuaPhasesMs = map[string]v1alpha1.Latency{}
			}
			s.LuaPhasesMs[model.LuaPhaseNames[i]] = a.lua[i].latency()
		}
	}
	return s
}
