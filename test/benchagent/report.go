package main

import (
	"fmt"
	"math"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/kong-watcher/kong-watcher/test/benchkit"
)

// Targets (docs/benchmarks.md).
const (
	targetExtraCPUPct = 1.0  // % of one core at 2,000 req/s, workers + agent
	targetRSSMiB      = 64.0 // VmHWM
)

type reportOut struct{ table, doc, bench string }

// spread is the median, minimum and maximum of a figure over rounds.
type spread struct {
	med, min, max float64
	n             int
}

func spreadOf(xs []float64) spread {
	var clean []float64
	for _, x := range xs {
		if !math.IsNaN(x) && !math.IsInf(x, 0) {
			clean = append(clean, x)
		}
	}
	if len(clean) == 0 {
		return spread{med: math.NaN(), min: math.NaN(), max: math.NaN()}
	}
	s := spread{med: median(clean), min: clean[0], max: clean[0], n: len(clean)}
	for _, x := range clean {
		s.min, s.max = math.Min(s.min, x), math.Max(s.max, x)
	}
	return s
}

func (s spread) String() string { return s.fmt(3) }

func (s spread) fmt(prec int) string {
	if s.n == 0 {
		return "NA"
	}
	if s.n == 1 {
		return f(s.med, prec)
	}
	return fmt.Sprintf("%s (%s-%s)", f(s.med, prec), f(s.min, prec), f(s.max, prec))
}

type scenSummary struct {
	target, name, what string
	slack              float64
	hasFloor           bool
	rps                map[side]spread // req/s over the rounds
	floorR, agentR     spread          // each round's floor/none and agent/none
	// costOverTrap is (1 - agent ratio) / (1 - floor ratio) of the medians: what the agent
	// costs the gateway in units of what one empty uprobe costs it.
	costOverTrap float64
	// floorUs and agentUs are what a request costs more than without a probe, in us of the
	// machine (vCPUs x the wall time per request: every vCPU is busy at saturation), each
	// round's own difference; aboveUs is the agent's minus the floor's.
	floorUs, agentUs, aboveUs spread
	agentCPU                  float64 // the agent process, % of a core (median of its rounds)
	counted, logged, dropped  int64
	errors                    int
	foreign                   bool
	excluded                  int  // rounds left out: a foreign uprobe was on the gateway's files
	ok                        bool // the target is met (or there is none)
}

func (b *bench) summarise() []scenSummary {
	var out []scenSummary
	type key struct{ target, name string }
	var keys []key
	what := map[key]scenario{}
	for _, s := range b.scens {
		k := key{"fixture", s.name}
		keys = append(keys, k)
		what[k] = s
	}
	if b.kong.done {
		k := key{"kong", "kong"}
		keys = append(keys, k)
		what[k] = scenario{name: "kong", what: b.kong.what, slack: 0}
	}
	ncpu := float64(runtime.NumCPU())
	for _, k := range keys {
		s := what[k]
		sum := scenSummary{target: k.target, name: k.name, what: s.what, slack: s.slack, rps: map[side]spread{}}
		byRound := map[int]map[side]float64{}
		perSide := map[side][]float64{}
		var acpu []float64
		for _, r := range b.rounds {
			if r.target != k.target || r.scenario != k.name {
				continue
			}
			sum.errors += r.load.Errors
			if r.foreign > 0 {
				sum.foreign = true
			}
			if byRound[r.round] == nil {
				byRound[r.round] = map[side]float64{}
			}
			byRound[r.round][r.side] = r.load.RPS
			perSide[r.side] = append(perSide[r.side], r.load.RPS)
			if r.side == sideFloor {
				sum.hasFloor = true
			}
			if r.side == sideAgent {
				acpu = append(acpu, r.agentCPU)
				if r.counted >= 0 {
					sum.counted += r.counted
					sum.logged += int64(r.logLines)
					sum.dropped += r.dropped
				}
			}
		}
		for sd, xs := range perSide {
			sum.rps[sd] = spreadOf(xs)
		}
		// A round during which another owner's uprobe sat on a file of the gateway's (another
		// test's agent or bpftrace) is left out of the ratios when clean rounds remain.
		// So is a round with a side whose load stayed on one worker (see throughputRun).
		dirty := map[int]bool{}
		for _, r := range b.rounds {
			if r.target == k.target && r.scenario == k.name && (r.foreign > 0 || r.busiest > maxWorkerShare) {
				dirty[r.round] = true
			}
		}
		if len(dirty) < len(byRound) {
			for rd := range dirty {
				delete(byRound, rd)
			}
			sum.excluded = len(dirty)
		}
		var fr, ar, fu, au, ab []float64
		us := func(x, none float64) float64 { return ncpu * (1/x - 1/none) * 1e6 }
		for _, m := range byRound {
			none, okN := m[sideNone]
			if !okN || none <= 0 {
				continue
			}
			fl, okF := m[sideFloor]
			ag, okA := m[sideAgent]
			if okF && fl > 0 {
				fr = append(fr, fl/none)
				fu = append(fu, us(fl, none))
			}
			if okA && ag > 0 {
				ar = append(ar, ag/none)
				au = append(au, us(ag, none))
			}
			if okF && okA && fl > 0 && ag > 0 {
				ab = append(ab, us(ag, none)-us(fl, none))
			}
		}
		sum.floorR, sum.agentR = spreadOf(fr), spreadOf(ar)
		sum.floorUs, sum.agentUs, sum.aboveUs = spreadOf(fu), spreadOf(au), spreadOf(ab)
		sum.costOverTrap = math.NaN()
		if sum.hasFloor && sum.floorR.med < 1 {
			sum.costOverTrap = (1 - sum.agentR.med) / (1 - sum.floorR.med)
		}
		sum.agentCPU = median(acpu)
		sum.ok = true
		if sum.slack > 0 && sum.hasFloor {
			sum.ok = sum.agentR.med >= sum.floorR.med-sum.slack
		}
		out = append(out, sum)
	}
	return out
}

// cpuSummary is the paced runs.
type cpuSummary struct {
	ok                                 bool
	without, with, extra               float64 // the workers (+ the agent), % of one core, ticks
	schedWithout, schedWith, schedXtra float64 // the workers from schedstat
	rate                               float64 // achieved req/s
	usPerReq, schedUsPerReq            float64 // extra CPU per request, top-down
	woMin, woMax                       float64 // spread of the none side: the noise floor
	// The floor side (an empty program on the same uprobe): the workers' extra CPU it causes,
	// and the agent's extra above it (hasFloor: floor runs were made).
	hasFloor                       bool
	floorExtra, floorUsPerReq      float64
	aboveFloor, aboveFloorUsPerReq float64
	agentPct, agentUs              spread // the agent process at cpuRate: % of a core, us/request
	hitsPerReq, bpfNsPerReq        spread // at cpuRate
	high                           bool
	highPct, highUs, highBpfNs     spread // at highRate
	highLag                        time.Duration
}

func (b *bench) cpuSummary() cpuSummary {
	c := b.cfg
	var wo, wi, swo, swi, fl, rates, ap, au, hits, bns, hp, hu, hb []float64
	var s cpuSummary
	for _, r := range b.cpu {
		perReq := perRequestUs(r.agentPct, r.pr.OK, r.wall)
		if r.rate == c.highRate && r.rate != c.cpuRate {
			s.high = true
			hp = append(hp, r.agentPct)
			hu = append(hu, perReq)
			if r.bpfOK && r.pr.OK > 0 {
				hb = append(hb, float64(r.bpf.RunNS)/float64(r.pr.OK))
			}
			if r.pr.MaxLag > s.highLag {
				s.highLag = r.pr.MaxLag
			}
			continue
		}
		switch r.side {
		case sideNone:
			wo = append(wo, r.workersPct)
			swo = append(swo, r.schedPct)
		case sideFloor:
			fl = append(fl, r.workersPct) // bpftrace itself idles: its program runs in the workers
		default:
			wi = append(wi, r.workersPct+r.agentPct)
			swi = append(swi, r.schedPct+r.agentPct)
			ap = append(ap, r.agentPct)
			au = append(au, perReq)
			if r.bpfOK && r.pr.OK > 0 {
				hits = append(hits, float64(r.bpf.RunCnt)/float64(r.pr.OK))
				bns = append(bns, float64(r.bpf.RunNS)/float64(r.pr.OK))
			}
		}
		if r.wall > 0 {
			rates = append(rates, float64(r.pr.OK)/r.wall)
		}
	}
	s.highPct, s.highUs, s.highBpfNs = spreadOf(hp), spreadOf(hu), spreadOf(hb)
	s.agentPct, s.agentUs, s.hitsPerReq, s.bpfNsPerReq = spreadOf(ap), spreadOf(au), spreadOf(hits), spreadOf(bns)
	if len(wo) == 0 || len(wi) == 0 {
		return s
	}
	s.ok = true
	s.without, s.with = median(wo), median(wi)
	s.schedWithout, s.schedWith, s.rate = median(swo), median(swi), median(rates)
	s.extra = s.with - s.without
	s.schedXtra = s.schedWith - s.schedWithout
	w := spreadOf(wo)
	s.woMin, s.woMax = w.min, w.max
	// A share of a core at the achieved rate, per request, in us.
	usPerReq := func(pctCore float64) float64 { return pctCore / 100 / s.rate * 1e6 }
	if s.rate > 0 {
		s.usPerReq, s.schedUsPerReq = usPerReq(s.extra), usPerReq(s.schedXtra)
	}
	if len(fl) > 0 {
		s.hasFloor = true
		s.floorExtra = median(fl) - s.without
		s.aboveFloor = s.extra - s.floorExtra
		if s.rate > 0 {
			s.floorUsPerReq, s.aboveFloorUsPerReq = usPerReq(s.floorExtra), usPerReq(s.aboveFloor)
		}
	}
	return s
}

func f(v float64, prec int) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "NA"
	}
	return fmt.Sprintf("%.*f", prec, v)
}

func passMiss(ok bool) string {
	if ok {
		return "ok"
	}
	return "MISSED"
}

func (b *bench) satFigures() (bpfNs, agentUs, hits float64) {
	st := b.sat
	bpfNs, agentUs, hits = math.NaN(), math.NaN(), math.NaN()
	if !st.done || st.logLines == 0 {
		return
	}
	agentUs = perRequestUs(st.agentPct, st.logLines, st.wall)
	if st.bpfOK {
		bpfNs = float64(st.bpf.RunNS) / float64(st.logLines)
		hits = float64(st.bpf.RunCnt) / float64(st.logLines)
	}
	return
}

func (b *bench) report() reportOut {
	c := b.cfg
	sums := b.summarise()
	cs := b.cpuSummary()
	agentOn := c.agentBin != ""
	d := b.drop
	satBpfNs, satAgentUs, satHits := b.satFigures()
	var t, doc, bl strings.Builder

	// ---- the console table ----
	fmt.Fprintf(&t, "\n== kong-watcher agent benchmark (%d round(s) x %v per side, warm-up %v; Kong: %d round(s) x %v after a %v warm-up; wrk/h2load pinned to CPU %q) ==\n",
		c.rounds, c.dur, c.warmup, c.kongRounds, c.kongDur, c.kongWarmup, c.pin)
	fmt.Fprintf(&t, "ratios: median over the rounds of each round's side/none throughput (min-max); floor = an empty BPF program on ngx_http_free_request (bpftrace)\n")
	fmt.Fprintf(&t, "%-10s %8s %8s %8s %-20s %-20s %9s %-26s %8s %14s\n", "scenario", "none r/s", "floor", "agent", "floor ratio", "agent ratio", "cost/trap", "target", "agent cpu", "counted/logged")
	for _, s := range sums {
		if !s.ok {
			b.missed++
		}
		cnt := "NA"
		if agentOn && s.logged > 0 {
			cnt = fmt.Sprintf("%d/%d", s.counted, s.logged)
		}
		tgt := "-"
		if s.slack > 0 && s.hasFloor {
			tgt = fmt.Sprintf(">= floor-%.2f = %.3f %s", s.slack, s.floorR.med-s.slack, passMiss(s.ok))
		}
		fmt.Fprintf(&t, "%-10s %8s %8s %8s %-20s %-20s %9s %-26s %7s%% %14s%s\n", s.name, f(s.rps[sideNone].med, 0), f(s.rps[sideFloor].med, 0), f(s.rps[sideAgent].med, 0),
			s.floorR, s.agentR, xOrNA(s.costOverTrap), tgt, f(s.agentCPU, 1), cnt, foreignMark(s.foreign))
		if s.hasFloor {
			fmt.Fprintf(&t, "%-10s   per request, us of the %d vCPUs: floor %s, agent %s, agent above the floor %s\n", "", runtime.NumCPU(), s.floorUs.fmt(1), s.agentUs.fmt(1), s.aboveUs.fmt(1))
		}
		if s.excluded > 0 {
			fmt.Fprintf(&t, "%-10s   %d round(s) left out of the ratios: another owner's uprobe on a file the workers map, or a side stuck on one worker\n", "", s.excluded)
		}
		if s.errors > 0 {
			fmt.Fprintf(&t, "%-10s   (%d socket errors / non-2xx responses / failed streams over all rounds)\n", "", s.errors)
		}
	}
	if b.floorNote != "" {
		fmt.Fprintf(&t, "no floor side: %s\n", b.floorNote)
	}
	ps := summarisePairs(b.pairs, pairedSlack)
	if ps.ok {
		if !ps.met {
			b.missed++
		}
		fmt.Fprintf(&t, "paired gateways (kong_like, %d round(s) of %v, both gateways measured at once):\n", ps.rounds, c.pairedDur)
		fmt.Fprintf(&t, "  agent/floor, workers' side (A/B ratios) %s; the agent process's share %s (%.2f us/request); together %s, mean %s +- %s (standard error)\n",
			ps.workers.fmt(3), ps.share.fmt(4), ps.meanAgentUs, ps.agentFloor.fmt(3), f(ps.mean, 3), f(ps.se, 3))
		fmt.Fprintf(&t, "  floor/none %s; so floor ratio - agent ratio = %s +- %s [target <= %.2f: %s]\n",
			ps.floorNone.fmt(3), f(ps.gap, 3), f(ps.gapSE, 3), ps.slack, passMiss(ps.met))
		if ps.errors > 0 {
			fmt.Fprintf(&t, "  (%d socket errors / non-2xx responses over the paired runs)\n", ps.errors)
		}
	}
	if b.kong.skipped != "" {
		fmt.Fprintf(&t, "kong: SKIPPED: %s\n", b.kong.skipped)
	} else if len(b.kong.warmup) > 0 {
		fmt.Fprintf(&t, "kong %s warm-up, req/s per 5 s slice: %s\n", b.kong.version, joinF(b.kong.warmup, 0))
	}
	if b.kongLua.done {
		kl := b.kongLua.summary()
		fmt.Fprintf(&t, "kong Lua phase timing at %d req/s: workers %.1f us/request with it off, %.1f on (+%.1f); BPF %.0f -> %.0f ns/request (+%.0f, %.1f more probe hits)\n",
			b.kongLua.rate, kl.offUs, kl.onUs, kl.extraUs, kl.offBpf, kl.onBpf, kl.luaBpf, kl.delta)
		for _, row := range b.kongLua.phaseRows() {
			fmt.Fprintf(&t, "  phase %s\n", row)
		}
	}
	cpuOK := cs.ok && cs.extra <= targetExtraCPUPct
	cpuNoisy := cs.ok && len(b.cpu) > 2 && cs.woMax-cs.woMin > 2*targetExtraCPUPct
	cpuVerdict := passMiss(cpuOK)
	if cpuNoisy {
		cpuVerdict += fmt.Sprintf(" (inconclusive: noise floor spans %.1f%%)", cs.woMax-cs.woMin)
	}
	if cs.ok {
		if !cpuOK && !cpuNoisy {
			b.missed++
		}
		fmt.Fprintf(&t, "paced %d req/s (%s): workers %.2f%% of a core without; workers+agent %.2f%% with => extra %.2f%%, %.1f us/request [target <= %.0f%%: %s]\n",
			c.cpuRate, c.kongRoute, cs.without, cs.with, cs.extra, cs.usPerReq, targetExtraCPUPct, cpuVerdict)
		fmt.Fprintf(&t, "  noise: the workers' CPU over the runs without the agent spans %.2f%% to %.2f%%; with schedstat: extra %.2f%%, %.1f us/request\n",
			cs.woMin, cs.woMax, cs.schedXtra, cs.schedUsPerReq)
		if cs.hasFloor {
			fmt.Fprintf(&t, "  the floor (an empty program on the same uprobe) at that rate: extra %.2f%%, %.1f us/request; the agent above it: %.2f%%, %.1f us/request\n",
				cs.floorExtra, cs.floorUsPerReq, cs.aboveFloor, cs.aboveFloorUsPerReq)
		}
	}
	if agentOn && len(b.cpu) > 0 {
		fmt.Fprintf(&t, "agent process CPU: %s%% of a core at %d req/s (%s us/request); %s%% at %d req/s on %s (%s us/request); %s%% with no traffic\n",
			cs.agentPct.fmt(2), c.cpuRate, cs.agentUs.fmt(2), cs.highPct.fmt(2), c.highRate, c.highRoute, cs.highUs.fmt(2), f(idle(b.idleAgentPct), 2))
		fmt.Fprintf(&t, "agent BPF run time per request: %s ns at saturation (%s, %.0f req/s, %s probe runs per request; agent process %s us/request there); %s ns at %d req/s, %s ns at %d req/s\n",
			f(satBpfNs, 0), "kong_like", b.sat.load.RPS, f(satHits, 2), f(satAgentUs, 2), cs.bpfNsPerReq.fmt(0), c.cpuRate, cs.highBpfNs.fmt(0), c.highRate)
		if ab := b.aboveFloor(sums, satBpfNs, satAgentUs); ab != "" {
			fmt.Fprintf(&t, "above the floor (kong_like, saturation): %s\n", ab)
		}
	}
	hwm := b.maxHWM
	if d.hwm > hwm {
		hwm = d.hwm
	}
	rssOK := agentOn && benchkit.MiB(hwm) <= targetRSSMiB
	countPct := math.NaN()
	if d.done && d.logLines > 0 && d.counted >= 0 {
		countPct = 100 * float64(d.counted) / float64(d.logLines)
	}
	if agentOn {
		if !rssOK {
			b.missed++
		}
		fmt.Fprintf(&t, "agent memory: VmHWM %.1f MiB (peak over all %d agent starts) [target <= %.0f MiB: %s]\n",
			benchkit.MiB(hwm), b.agentStarts, targetRSSMiB, passMiss(rssOK))
		if d.done {
			fmt.Fprintf(&t, "accuracy at %d req/s for %v: sent %d, answered %d, access log %d lines, agent counted %d (%s%%), dropped %d during the run, %d over the agent's life\n",
				c.dropRate, c.dropDur, d.pr.Sent, d.pr.OK, d.logLines, d.counted, f(countPct, 2), d.dropped, d.droppedTotal)
		}
		if len(b.broken) == 0 {
			fmt.Fprintf(&t, "counting: exact in every agent round and run, no event dropped\n")
		} else {
			for _, m := range b.broken {
				fmt.Fprintf(&t, "COUNTING FAILED: %s\n", m)
			}
		}
	}
	if b.maxLoad > 3 {
		b.notes = append(b.notes, fmt.Sprintf("the machine was busy with other work (1-minute load average up to %.1f on %d vCPUs, this run at niceness %d): expect more noise than usual", b.maxLoad, runtime.NumCPU(), benchkit.Niceness()))
	}
	for _, n := range b.notes {
		fmt.Fprintf(&t, "note: %s\n", n)
	}
	fmt.Fprintf(&t, "load average at the end: %s (highest 1-minute value seen: %.1f)\n", benchkit.LoadAvg(), b.maxLoad)
	fmt.Fprintf(&t, "total time %v\n\n", time.Since(b.started).Round(time.Second))

	// ---- BENCH lines (the last lines of the output) ----
	na := func(ok bool, v string) string {
		if !ok {
			return "NA"
		}
		return v
	}
	byName := map[string]scenSummary{}
	for _, s := range sums {
		byName[s.name] = s
	}
	for _, n := range []string{"kong_like", "return200", "tls", "http2", "kong"} {
		s, ok := byName[n]
		fmt.Fprintf(&bl, "BENCH %s_floor_ratio %s\n", n, na(ok && s.hasFloor, f(s.floorR.med, 3)))
		fmt.Fprintf(&bl, "BENCH %s_floor_ratio_min %s\n", n, na(ok && s.hasFloor, f(s.floorR.min, 3)))
		fmt.Fprintf(&bl, "BENCH %s_floor_ratio_max %s\n", n, na(ok && s.hasFloor, f(s.floorR.max, 3)))
		fmt.Fprintf(&bl, "BENCH %s_agent_ratio %s\n", n, na(ok, f(s.agentR.med, 3)))
		fmt.Fprintf(&bl, "BENCH %s_agent_ratio_min %s\n", n, na(ok, f(s.agentR.min, 3)))
		fmt.Fprintf(&bl, "BENCH %s_agent_ratio_max %s\n", n, na(ok, f(s.agentR.max, 3)))
		fmt.Fprintf(&bl, "BENCH %s_agent_cost_over_trap %s\n", n, na(ok && s.hasFloor, f(s.costOverTrap, 2)))
		fmt.Fprintf(&bl, "BENCH %s_agent_us_above_floor %s\n", n, na(ok && s.hasFloor, f(s.aboveUs.med, 2)))
	}
	fmt.Fprintf(&bl, "BENCH kong_like_paired_agent_vs_floor %s\n", na(ps.ok, f(ps.agentFloor.med, 3)))
	fmt.Fprintf(&bl, "BENCH kong_like_paired_agent_vs_floor_se %s\n", na(ps.ok, f(ps.se, 3)))
	fmt.Fprintf(&bl, "BENCH kong_like_paired_workers_agent_vs_floor %s\n", na(ps.ok, f(ps.workers.med, 3)))
	fmt.Fprintf(&bl, "BENCH kong_like_paired_agent_process_share %s\n", na(ps.ok, f(ps.share.med, 4)))
	fmt.Fprintf(&bl, "BENCH kong_like_paired_floor_vs_none %s\n", na(ps.ok, f(ps.floorNone.med, 3)))
	fmt.Fprintf(&bl, "BENCH kong_like_paired_gap %s\n", na(ps.ok, f(ps.gap, 3)))
	fmt.Fprintf(&bl, "BENCH bpf_ns_per_request %s\n", na(agentOn, f(satBpfNs, 0)))
	fmt.Fprintf(&bl, "BENCH bpf_ns_per_request_%s %s\n", rateName(c.cpuRate), f(cs.bpfNsPerReq.med, 0))
	fmt.Fprintf(&bl, "BENCH bpf_ns_per_request_%s %s\n", rateName(c.highRate), f(cs.highBpfNs.med, 0))
	fmt.Fprintf(&bl, "BENCH probe_hits_per_request %s\n", na(agentOn, f(satHits, 2)))
	fmt.Fprintf(&bl, "BENCH agent_cpu_us_per_request_%s %s\n", rateName(c.cpuRate), f(cs.agentUs.med, 2))
	fmt.Fprintf(&bl, "BENCH agent_cpu_us_per_request_%s %s\n", rateName(c.highRate), f(cs.highUs.med, 2))
	fmt.Fprintf(&bl, "BENCH agent_cpu_us_per_request_saturation %s\n", na(agentOn, f(satAgentUs, 2)))
	fmt.Fprintf(&bl, "BENCH agent_cpu_percent_%s %s\n", rateName(c.cpuRate), f(cs.agentPct.med, 2))
	fmt.Fprintf(&bl, "BENCH agent_cpu_percent_%s %s\n", rateName(c.highRate), f(cs.highPct.med, 2))
	fmt.Fprintf(&bl, "BENCH agent_cpu_percent_idle %s\n", na(b.idleAgentPct >= 0, f(b.idleAgentPct, 2)))
	fmt.Fprintf(&bl, "BENCH extra_cpu_pct_at_%drps %s\n", c.cpuRate, na(cs.ok, f(cs.extra, 2)))
	fmt.Fprintf(&bl, "BENCH floor_extra_cpu_pct_at_%drps %s\n", c.cpuRate, na(cs.ok && cs.hasFloor, f(cs.floorExtra, 2)))
	fmt.Fprintf(&bl, "BENCH extra_cpu_pct_above_floor_at_%drps %s\n", c.cpuRate, na(cs.ok && cs.hasFloor, f(cs.aboveFloor, 2)))
	fmt.Fprintf(&bl, "BENCH agent_rss_mib %s\n", na(agentOn, f(benchkit.MiB(hwm), 1)))
	fmt.Fprintf(&bl, "BENCH dropped_events_at_%drps %s\n", c.dropRate, na(agentOn && d.done, fmt.Sprint(d.droppedTotal)))
	fmt.Fprintf(&bl, "BENCH agent_counted_pct_at_%drps %s\n", c.dropRate, na(agentOn && d.done, f(countPct, 2)))
	kl := b.kongLua.summary()
	fmt.Fprintf(&bl, "BENCH kong_lua_off_worker_us_per_request %s\n", na(b.kongLua.done, f(kl.offUs, 2)))
	fmt.Fprintf(&bl, "BENCH kong_lua_on_worker_us_per_request %s\n", na(b.kongLua.done, f(kl.onUs, 2)))
	fmt.Fprintf(&bl, "BENCH kong_lua_extra_worker_us_per_request %s\n", na(b.kongLua.done, f(kl.extraUs, 2)))
	fmt.Fprintf(&bl, "BENCH kong_lua_bpf_ns_per_request %s\n", na(b.kongLua.done, f(kl.luaBpf, 0)))
	fmt.Fprintf(&bl, "BENCH kong_lua_probe_hits_per_request %s\n", na(b.kongLua.done, f(kl.delta, 2)))
	fmt.Fprintf(&bl, "BENCH counting_failures %d\n", len(b.broken))
	fmt.Fprintf(&bl, "BENCH targets_missed %d\n", b.missed)

	b.writeDoc(&doc, sums, cs, ps, hwm, rssOK, countPct, cpuVerdict, satBpfNs, satAgentUs, satHits)
	return reportOut{table: t.String(), doc: doc.String(), bench: bl.String()}
}

// aboveFloor splits what the agent costs the Kong-like route above the floor at saturation.
func (b *bench) aboveFloor(sums []scenSummary, bpfNs, agentUs float64) string {
	for _, s := range sums {
		if s.name != "kong_like" || !s.hasFloor || math.IsNaN(s.aboveUs.med) {
			continue
		}
		bpfUs := bpfNs / 1000
		rest := s.aboveUs.med - bpfUs - agentUs
		return fmt.Sprintf("%s us/request (median of the rounds' own differences), of which the agent's BPF programs %s us and the agent process %s us (both measured at saturation); the rest, %s us, is unattributed (the ring buffer's wake-ups of the agent, cache and TLB misses the programs cause in nginx, noise)",
			f(s.aboveUs.med, 2), f(bpfUs, 2), f(agentUs, 2), f(rest, 2))
	}
	return ""
}

func xOrNA(v float64) string {
	if math.IsNaN(v) || math.IsInf(v, 0) {
		return "NA"
	}
	return f(v, 2) + "x"
}

func idle(p float64) float64 {
	if p < 0 {
		return math.NaN()
	}
	return p
}

func rateName(r int) string {
	if r%1000 == 0 {
		return fmt.Sprintf("%dk", r/1000)
	}
	return fmt.Sprint(r)
}

func joinF(xs []float64, prec int) string {
	var p []string
	for _, x := range xs {
		p = append(p, f(x, prec))
	}
	return strings.Join(p, ", ")
}

func foreignMark(b bool) string {
	if b {
		return "  [other owners' uprobes on the gateway's files]"
	}
	return ""
}

func agentEnvNote(lua, dataPath string) string {
	var parts []string
	if lua == "" {
		parts = append(parts, "its default Lua phase timing")
	} else {
		parts = append(parts, "`KONG_WATCHER_LUA_PHASES="+lua+"`")
	}
	if dataPath == "" {
		parts = append(parts, "its default data path")
	} else {
		parts = append(parts, "`KONG_WATCHER_DATA_PATH="+dataPath+"`")
	}
	return strings.Join(parts, " and ")
}

func agentVersion(bin string) string {
	if bin == "" {
		return "none (A/A run)"
	}
	out, err := exec.Command(bin, "version").Output()
	if err != nil {
		return filepath.Base(bin)
	}
	return strings.TrimSpace(string(out))
}

func (b *bench) unbalancedSeen() bool {
	for _, r := range b.rounds {
		if r.busiest > maxWorkerShare {
			return true
		}
	}
	return false
}

func (b *bench) foreignSeen() bool {
	for _, r := range b.rounds {
		if r.foreign > 0 {
			return true
		}
	}
	return false
}
