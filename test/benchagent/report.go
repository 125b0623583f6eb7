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
	agentPct, agentUs                  spread  // the agent process at cpuRate: % of a core, us/request
	hitsPerReq, bpfNsPerReq            spread  // at cpuRate
	high                               bool
	highPct, highUs, highBpfNs         spread // at highRate
	highLag                            time.Duration
}

func (b *bench) cpuSummary() cpuSummary {
	c := b.cfg
	var wo, wi, swo, swi, rates, ap, au, hits, bns, hp, hu, hb []float64
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
		if r.side == sideNone {
			wo = append(wo, r.workersPct)
			swo = append(swo, r.schedPct)
		} else {
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
	if s.rate > 0 {
		s.usPerReq = s.extra / 100 / s.rate * 1e6
		s.schedUsPerReq = s.schedXtra / 100 / s.rate * 1e6
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

	b.writeDoc(&doc, sums, cs, hwm, rssOK, countPct, cpuVerdict, satBpfNs, satAgentUs, satHits)
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

func (b *bench) writeDoc(doc *strings.Builder, sums []scenSummary, cs cpuSummary, hwm uint64, rssOK bool, countPct float64, cpuVerdict string, satBpfNs, satAgentUs, satHits float64) {
	c := b.cfg
	d := b.drop
	now := time.Now().UTC()
	w := func(format string, args ...any) { fmt.Fprintf(doc, format, args...) }
	w("## Agent\n\n")
	w("What the agent costs the gateway it watches, side by side with the physical limit of its design. Written by\n")
	w("`%s` (`hack/bench-agent.sh`, source `test/benchagent`; `make bench` prints the same without\n", c.command)
	w("touching this page); the last run: %s, agent `%s`, %v in all.\n\n", now.Format("2006-01-02 15:04 UTC"), b.agentVersion, time.Since(b.started).Round(time.Second))
	w("Machine: %s, a VM shared with other builds and tests (load average %s at the end of the run,\n", machineNote(), benchkit.LoadAvg())
	w("1-minute value up to %.1f during it; the harness runs in its own scheduler autogroup at niceness %d). Absolute\n", b.maxLoad, benchkit.Niceness())
	w("throughput moves by +-15%% here from minute to minute, so every figure is a ratio of sides measured\n")
	w("in the same round, back to back, and each round rotates the order of its sides.\n\n")
	w("**The sides.** *none*: no probe. *floor*: an **empty** BPF program on the uprobe the agent needs,\n")
	w("`bpftrace -e 'uprobe:<the nginx binary the gateway runs>:ngx_http_free_request {}'` (Debian's bpftrace,\n")
	w("waited for until the kernel lists its uprobe, stopped by its PID after the side): what any design that\n")
	w("traps once per request pays on this machine, the yardstick. *agent*: `kong-watcher-agent`, started (and\n")
	w("waited for on `/readyz`) for the side, with %s. Every side gets %v of\n", agentEnvNote(c.luaPhases, c.dataPath), c.warmup)
	w("unmeasured load before it is measured.\n\n")
	w("**Target** (the team's): the agent's ratio at least the floor's minus 0.02 on the Kong-like route (the agent\n")
	w("costing at most ~1.3x the trap), minus 0.03 on TLS and HTTP/2; on real Kong, inside the noise. A miss is\n")
	w("reported, not a failure: the bench fails only when the agent's count differs from the access log or it\n")
	w("drops events.\n\n")
	if !(c.agentBin != "") {
		w("**A/A run: no agent was started; the agent ratios are the noise floor.**\n\n")
	}
	if b.floorNote != "" {
		w("No floor side in this run: %s.\n\n", b.floorNote)
	}
	w("The fixture runs private copies of nginx and its Lua and NDK modules, and Kong of its nginx: a uprobe\n")
	w("is set on a file, and other tests on this machine attach theirs to `/usr/sbin/nginx`, Debian's Lua module\n")
	w("and the Kong build; on the same file they would fire in our workers on every side, \"none\" included. A\n")
	w("round during which another owner's uprobe was on a file the workers map (libc, OpenSSL, Kong's Lua\n")
	w("libraries) is left out of the ratios while clean rounds remain")
	if b.foreignSeen() || b.unbalancedSeen() {
		var ex []string
		for _, s := range sums {
			if s.excluded > 0 {
				ex = append(ex, fmt.Sprintf("%s %d", s.name, s.excluded))
			}
		}
		if len(ex) > 0 {
			w(" (rounds left out in this run, for this or the reason below: %s)", strings.Join(ex, ", "))
		} else {
			w(" (this run had some, in every round of a route: kept)")
		}
	}
	w(".\n\n")
	w("Fixture: `test/fixture` (Debian nginx 1.22 + lua-nginx-module, 2 workers, JSON access log on) on loopback,\n")
	pinNote := "not pinned"
	if c.pin != "" {
		pinNote = "pinned to CPU " + c.pin
	}
	w("%d round(s) of %v per side per route; wrk/h2load %s, nginx, its Go upstream, the agent and bpftrace not pinned (all share the 2 vCPUs, as in a pod).\n", c.rounds, c.dur, pinNote)
	if b.kong.done {
		w("Real Kong: Kong %s (`hack/kong.sh`'s build of 3.8.1, DB-less, 2 workers, started by `test/fixture`'s\n", b.kong.version)
		w("harness), %d round(s) of %v per side after a %v warm-up (LuaJIT: throughput per 5 s slice of it %s req/s).\n", c.kongRounds, c.kongDur, c.kongWarmup, joinF(b.kong.warmup, 0))
	} else if b.kong.skipped != "" {
		w("Real Kong: **skipped**: %s.\n", b.kong.skipped)
	}
	w("\n| route | load | none (req/s) | floor ratio | agent ratio | agent cost / trap | target | agent above the floor, us/request | agent CPU | counted / logged |\n")
	w("|---|---|---:|---:|---:|---:|---|---:|---:|---:|\n")
	for _, s := range sums {
		tgt := "-"
		if s.slack > 0 && s.hasFloor {
			tgt = fmt.Sprintf(">= %.3f (floor - %.2f) %s", s.floorR.med-s.slack, s.slack, passMiss(s.ok))
		}
		cnt := "n/a"
		if c.agentBin != "" && s.logged > 0 {
			cnt = fmt.Sprintf("%d / %d", s.counted, s.logged)
		}
		w("| %s | %s | %s | %s | **%s** | %s | %s | %s | %s%% | %s |\n", s.name, s.what, f(s.rps[sideNone].med, 0), s.floorR, s.agentR,
			xOrNA(s.costOverTrap), tgt, s.aboveUs.fmt(1), f(s.agentCPU, 1), cnt)
	}
	w("\nRatios are the median over the rounds of each round's own side/none throughput, with the lowest and\n")
	w("highest in brackets. \"agent cost / trap\" is (1 - agent ratio) / (1 - floor ratio). \"us/request\" turns\n")
	w("a side's lower throughput into what a request costs more: %d vCPUs x (1/side - 1/none), as every vCPU is\n", runtime.NumCPU())
	w("busy at saturation (roughly: on this shared machine other work takes a varying part of them; NA cost / trap:\n")
	w("the floor ratio is not below 1). \"agent CPU\" is the agent process's own, %% of one core, during its rounds.\n")
	w("The HTTP/2 load runs h2load in batches of %d requests per connection: nginx ends an HTTP/2 connection\n", h2loadPerConn)
	w("after `keepalive_requests` (1000) with a GOAWAY, after which h2load opens no new one.\n\n")

	w("| figure | value |\n|---|---|\n")
	w("| BPF run time per request at saturation (kong_like under wrk, the kernel's run-time accounting on) | **%s ns** (%s program runs per request, %.0f req/s) |\n", f(satBpfNs, 0), f(satHits, 2), b.sat.load.RPS)
	w("| BPF run time per request, paced %d / %d req/s | %s / %s ns |\n", c.cpuRate, c.highRate, cs.bpfNsPerReq.fmt(0), cs.highBpfNs.fmt(0))
	w("| the agent process's CPU at paced %d req/s (%s) | **%s%% of a core, %s us/request** |\n", c.cpuRate, c.kongRoute, cs.agentPct.fmt(2), cs.agentUs.fmt(2))
	w("| the agent process's CPU at paced %d req/s (%s) | **%s%% of a core, %s us/request** |\n", c.highRate, c.highRoute, cs.highPct.fmt(2), cs.highUs.fmt(2))
	w("| the agent process's CPU at saturation (kong_like) / with no traffic | %s us/request / %s%% of a core |\n", f(satAgentUs, 2), f(idle(b.idleAgentPct), 2))
	if ab := b.aboveFloor(sums, satBpfNs, satAgentUs); ab != "" {
		w("| the agent above the floor, kong_like | %s |\n", ab)
	}
	if cs.ok {
		w("| workers + agent minus workers alone, paced %d req/s (top-down) | %.2f%% of a core (%.1f us/request; schedstat: %.2f%%); the workers alone span %.2f%% to %.2f%% over the none runs |\n",
			c.cpuRate, cs.extra, cs.usPerReq, cs.schedXtra, cs.woMin, cs.woMax)
	}
	if c.agentBin != "" {
		w("| agent memory, VmHWM (peak of all %d agent processes) | %.1f MiB (target <= %.0f MiB: %s) |\n", b.agentStarts, benchkit.MiB(hwm), targetRSSMiB, passMiss(rssOK))
		if d.done {
			w("| paced %d req/s for %v: requests counted / access log lines; events dropped | **%d / %d** (%s%%); **%d** dropped |\n",
				c.dropRate, c.dropDur, d.counted, d.logLines, f(countPct, 2), d.droppedTotal)
		}
		if len(b.broken) == 0 {
			w("| counting in every agent round and run | exact, no event dropped |\n")
		}
	}
	if b.kongLua.done {
		kl := b.kongLua.summary()
		w("\nLua phase timing on real Kong (`-kong-lua-rate`): the bench route paced at %d req/s, the agent with\n", b.kongLua.rate)
		w("`KONG_WATCHER_LUA_PHASES=off` and `=on` alternating, %d round(s) of %v per side; medians:\n\n", c.cpuRounds, c.cpuDur)
		w("| figure | off | on | on - off |\n|---|---:|---:|---:|\n")
		w("| Kong's workers' CPU per request (schedstat) | %s us | %s us | **%s us** |\n", f(kl.offUs, 1), f(kl.onUs, 1), f(kl.extraUs, 1))
		w("| the agent's BPF run time per request | %s ns | %s ns | %s ns |\n", f(kl.offBpf, 0), f(kl.onBpf, 0), f(kl.luaBpf, 0))
		w("| BPF program runs per request | %s | %s | %s |\n", f(kl.offRuns, 2), f(kl.onRuns, 2), f(kl.delta, 2))
		if rows := b.kongLua.phaseRows(); len(rows) > 0 {
			w("\nKong's own time per phase in those requests, as the agent reports it (`/stats` `luaPhasesMs`): %s.\n", strings.Join(rows, "; "))
		}
	}
	w("\nThe agent's CPU is its threads' on-CPU time (`/proc/<pid>/task/*/schedstat`, ns) over the requests\n")
	w("answered, by an open-loop paced generator in the harness (Go, keep-alive connections, %d round(s) of %v\n", c.cpuRounds, c.cpuDur)
	w("at %d req/s alternating with runs without the agent, %d of %v at %d req/s); it includes its fixed cost\n", c.cpuRate, c.highRounds, c.cpuDur, c.highRate)
	w("(the no-traffic figure). The BPF run time is what the kernel accounts to the agent's programs\n")
	w("(BPF_ENABLE_STATS, the switch behind `kernel.bpf_stats_enabled`, held only around those runs and\n")
	w("released even if the harness dies; it adds two clock reads per program run, so it is off in the\n")
	w("throughput rounds). The trap itself (int3, uprobe lookup) is in neither: the floor side measures it.\n\n")
	w("<details><summary>Every round</summary>\n\n")
	w("| gateway | route | round | side | req/s | requests | errors | nginx CPU | agent CPU | counted / logged | dropped |\n")
	w("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range b.rounds {
		cnt, dr, ac := "", "", ""
		if r.side == sideAgent && c.agentBin != "" {
			cnt = fmt.Sprintf("%d / %d", r.counted, r.logLines)
			dr = fmt.Sprint(r.dropped)
			ac = fmt.Sprintf("%.1f%%", r.agentCPU)
		}
		w("| %s | %s | %d | %s | %.0f | %d | %d | %.0f%% | %s | %s | %s |\n", r.target, r.scenario, r.round, r.side, r.load.RPS,
			r.load.Requests, r.load.Errors, r.nginxCPU, ac, cnt, dr)
	}
	for _, cr := range b.cpu {
		w("| fixture | paced %d %s | | %s | %.0f | %d | %d | %.2f%% | %.2f%% | %d logged | |\n", cr.rate, cr.route, cr.side, float64(cr.pr.OK)/cr.wall,
			cr.pr.OK, cr.pr.Failed, cr.workersPct, cr.agentPct, cr.logLines)
	}
	w("\n</details>\n")
	if len(b.notes) > 0 {
		w("\nNotes from the run:\n\n")
		for _, n := range b.notes {
			w("- %s\n", n)
		}
	}
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
