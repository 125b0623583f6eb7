package main

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"strings"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// What Lua phase timing costs on real Kong: the bench route at a fixed paced rate, the agent
// with KONG_WATCHER_LUA_PHASES=off and =on alternating round by round, Kong's workers' CPU
// per request (schedstat) and the agent's BPF run time per request on each side. Kong runs
// Lua in six phases of every proxied request (rewrite, access, header_filter, body_filter,
// log, balancer), so "on" adds about a dozen probe hits per request; the difference is the
// price of one request's phase times, which is why the agent's default samples them.
type kongLuaResult struct {
	done, skipped bool
	why           string
	rate          int
	rounds        []kongLuaRound
	phases        map[string]v1alpha1.Latency // the last "on" agent's per-phase times
}

type kongLuaRound struct {
	mode         string  // "off" or "on"
	ok           int     // requests answered 2xx/3xx/4xx
	workerUs     float64 // Kong's workers' CPU per request, us (schedstat)
	bpfNs        float64 // the agent's BPF run time per request, ns (NaN: not measured)
	bpfRuns      float64 // BPF program runs per request
	logLines     int
	agentPercent float64
}

// kongLuaRuns measures the Lua phase probes' cost on t (real Kong), rate req/s to url.
func (b *bench) kongLuaRuns(ctx context.Context, t *target, url string, header http.Header) error {
	c := b.cfg
	res := &b.kongLua
	res.rate = c.kongLuaRate
	if c.kongLuaRate <= 0 || c.agentBin == "" || c.agentBin == "none" {
		res.skipped, res.why = true, "turned off (-kong-lua-rate=0 or no agent)"
		return nil
	}
	b.logf("Lua phase timing on real Kong: paced %d req/s GET %s with the consumer's key, %d round(s) of %v per side, the agent with KONG_WATCHER_LUA_PHASES=off and =on alternating",
		c.kongLuaRate, strings.TrimPrefix(url, "http://"+t.g.HTTPAddr), c.cpuRounds, c.cpuDur)
	for r := 0; r < c.cpuRounds; r++ {
		modes := []string{"off", "on"}
		if r%2 == 1 {
			modes = []string{"on", "off"}
		}
		for _, mode := range modes {
			a := b.newAgent("kong-lua-"+mode, t.agent.master)
			a.luaPhases = mode
			if err := a.start(ctx, t.poke); err != nil {
				return err
			}
			cr, err := b.measurePaced(ctx, t, a, url, header, c.kongLuaRate, c.cpuDur, "Kong Lua "+mode)
			b.checkDataPath("kong-lua "+mode, b.snap(a, time.Second))
			if mode == "on" {
				if st, err := a.settledStats(10 * time.Second); err == nil {
					res.phases = st.Total.LuaPhasesMs
				}
			}
			a.stop()
			b.collectAgent(a)
			if err != nil {
				return err
			}
			kr := kongLuaRound{mode: mode, ok: cr.pr.OK, bpfNs: math.NaN(), bpfRuns: math.NaN(), logLines: cr.logLines,
				workerUs: perRequestUs(cr.schedPct, cr.pr.OK, cr.wall), agentPercent: cr.agentPct}
			if cr.bpfOK && cr.pr.OK > 0 {
				kr.bpfNs, kr.bpfRuns = float64(cr.bpf.RunNS)/float64(cr.pr.OK), float64(cr.bpf.RunCnt)/float64(cr.pr.OK)
			}
			res.rounds = append(res.rounds, kr)
			b.logf("  kong-lua round %d %-3s ok %d (log %d): workers %.1f us/request, BPF %.0f ns and %.1f runs/request, agent %.2f%% of a core",
				r+1, mode, kr.ok, kr.logLines, kr.workerUs, kr.bpfNs, kr.bpfRuns, kr.agentPercent)
		}
	}
	res.done = true
	return nil
}

// kongLuaSummary is the medians of each side and their differences.
type kongLuaSummary struct {
	offUs, onUs, extraUs   float64
	offBpf, onBpf, luaBpf  float64
	offRuns, onRuns, delta float64
}

func (r *kongLuaResult) summary() kongLuaSummary {
	var s kongLuaSummary
	pick := func(mode string, f func(kongLuaRound) float64) float64 {
		var xs []float64
		for _, k := range r.rounds {
			if k.mode == mode && !math.IsNaN(f(k)) {
				xs = append(xs, f(k))
			}
		}
		return median(xs)
	}
	s.offUs, s.onUs = pick("off", func(k kongLuaRound) float64 { return k.workerUs }), pick("on", func(k kongLuaRound) float64 { return k.workerUs })
	s.offBpf, s.onBpf = pick("off", func(k kongLuaRound) float64 { return k.bpfNs }), pick("on", func(k kongLuaRound) float64 { return k.bpfNs })
	s.offRuns, s.onRuns = pick("off", func(k kongLuaRound) float64 { return k.bpfRuns }), pick("on", func(k kongLuaRound) float64 { return k.bpfRuns })
	s.extraUs, s.luaBpf, s.delta = s.onUs-s.offUs, s.onBpf-s.offBpf, s.onRuns-s.offRuns
	return s
}

// phaseRows renders the per-phase times, in the model's order of the phases.
func (r *kongLuaResult) phaseRows() []string {
	var out []string
	for _, n := range model.LuaPhaseNames {
		if l, ok := r.phases[n]; ok {
			out = append(out, fmt.Sprintf("%s: %d requests, p50 %.3f ms, p99 %.3f ms", n, l.Count, l.P50, l.P99))
		}
	}
	return out
}
