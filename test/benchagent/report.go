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
	targetExtraCPUPct = 1.0  // % of one core at 2,000 req/s
	targetRSSMiB      = 64.0 // VmHWM
	targetDrops       = 0
)

type reportOut struct{ table, doc, bench string }

type scenSummary struct {
	s                    scenario
	without, with, ratio float64
	paired               float64 // median of the rounds' own with/without ratios
	agentCPU             float64
	counted, logged      int64
	dropped              int64
	errors               int
	foreign              bool
	ok                   bool
}

func (b *bench) summarise(scens []scenario) []scenSummary {
	var out []scenSummary
	for _, s := range scens {
		var wo, wi, acpu []float64
		sum := scenSummary{s: s}
		for _, r := range b.rounds {
			if r.scenario != s.name {
				continue
			}
			sum.errors += r.load.Errors
			if r.foreign > 0 {
				sum.foreign = true
			}
			if r.side == without {
				wo = append(wo, r.load.RPS)
				continue
			}
			wi = append(wi, r.load.RPS)
			acpu = append(acpu, r.agentCPU)
			if r.counted >= 0 {
				sum.counted += r.counted
				sum.logged += int64(r.logLines)
				sum.dropped += r.dropped
			}
		}
		sum.without, sum.with = median(wo), median(wi)
		var pairs []float64
		for i := 0; i < len(wo) && i < len(wi); i++ {
			pairs = append(pairs, wi[i]/wo[i])
		}
		sum.paired = median(pairs)
		sum.ratio = sum.with / sum.without
		sum.agentCPU = median(acpu)
		sum.ok = sum.ratio >= s.target
		out = append(out, sum)
	}
	return out
}

type cpuSummary struct {
	ok                                 bool
	without, with, agent, extra        float64 // % of one core, from utime+stime
	schedWithout, schedWith, schedXtra float64 // the workers from schedstat, the agent from ticks
	rate                               float64 // achieved req/s (with side)
	usPerReq, schedUsPerReq            float64
	// bottom-up: what the probes cost in the workers, from the kernel's BPF accounting
	woMin, woMax               float64 // spread of the without side: the noise floor
	bpfOK                      bool
	hitsPerReq, bpfUsPerReq    float64
	bottomUp, bottomUpUsPerReq float64 // agent CPU + BPF run time + hits x trapCostUs, % of a core
}

// trapCostUs is the cost of taking one uprobe on an emulated instruction, outside the BPF
// program: 0.5-1.3 us was measured on this VM; the upper end is used.
const trapCostUs = 1.3

func (b *bench) cpuSummary() cpuSummary {
	var wo, wi, ag, swo, swi, rates, hits, bpfus []float64
	for _, c := range b.cpu {
		if c.bpfOK && c.pr.OK > 0 {
			hits = append(hits, float64(c.bpf.RunCnt)/float64(c.pr.OK))
			bpfus = append(bpfus, float64(c.bpf.RunNS)/1e3/float64(c.pr.OK))
		}
		if c.side == without {
			wo = append(wo, c.workersPct)
			swo = append(swo, c.schedPct)
		} else {
			wi = append(wi, c.workersPct+c.agentPct)
			swi = append(swi, c.schedPct+c.agentPct)
			ag = append(ag, c.agentPct)
		}
		if c.wall > 0 {
			rates = append(rates, float64(c.pr.OK)/c.wall)
		}
	}
	if len(wo) == 0 || len(wi) == 0 {
		return cpuSummary{}
	}
	s := cpuSummary{ok: true, without: median(wo), with: median(wi), agent: median(ag),
		schedWithout: median(swo), schedWith: median(swi), rate: median(rates)}
	s.extra = s.with - s.without
	s.woMin, s.woMax = wo[0], wo[0]
	for _, v := range wo {
		s.woMin, s.woMax = math.Min(s.woMin, v), math.Max(s.woMax, v)
	}
	s.schedXtra = s.schedWith - s.schedWithout
	if s.rate > 0 {
		s.usPerReq = s.extra / 100 / s.rate * 1e6
		s.schedUsPerReq = s.schedXtra / 100 / s.rate * 1e6
	}
	if len(hits) > 0 && s.rate > 0 {
		s.bpfOK = true
		s.hitsPerReq, s.bpfUsPerReq = median(hits), median(bpfus)
		s.bottomUpUsPerReq = s.agent/100/s.rate*1e6 + s.bpfUsPerReq + s.hitsPerReq*trapCostUs
		s.bottomUp = s.bottomUpUsPerReq * s.rate / 1e6 * 100
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

func (b *bench) report(scens []scenario) reportOut {
	c := b.cfg
	sums := b.summarise(scens)
	cs := b.cpuSummary()
	agentOn := b.agent.enabled()
	d := b.drop
	var t, doc, bl strings.Builder

	// ---- the console table ----
	fmt.Fprintf(&t, "\n== kong-watcher agent benchmark (%d round(s) x %v per side, warm-up %v, wrk/h2load pinned to CPU %q) ==\n",
		c.rounds, c.dur, c.warmup, c.pin)
	fmt.Fprintf(&t, "%-10s %12s %12s %7s %7s %-6s %7s %9s %14s %6s\n", "scenario", "without r/s", "with r/s", "ratio", "target", "", "paired", "agent cpu", "counted/logged", "drops")
	for _, s := range sums {
		if !s.ok {
			b.missed++
		}
		cnt := "NA"
		if agentOn && s.logged > 0 {
			cnt = fmt.Sprintf("%.2f%%", 100*float64(s.counted)/float64(s.logged))
		}
		drops := "NA"
		if agentOn {
			drops = fmt.Sprint(s.dropped)
		}
		fmt.Fprintf(&t, "%-10s %12s %12s %7s %7.2f %-6s %7s %8s%% %14s %6s%s\n", s.s.name, f(s.without, 0), f(s.with, 0), f(s.ratio, 3),
			s.s.target, passMiss(s.ok), f(s.paired, 3), f(s.agentCPU, 1), cnt, drops, foreignMark(s.foreign))
		if s.errors > 0 {
			fmt.Fprintf(&t, "%-10s   (%d socket errors / non-2xx responses / failed streams over all rounds)\n", "", s.errors)
		}
	}
	cpuOK := cs.ok && cs.extra <= targetExtraCPUPct
	// When the runs without the agent alone spread over more than twice the target, the
	// difference of medians cannot say whether the target is met.
	cpuNoisy := cs.ok && len(b.cpu) > 2 && cs.woMax-cs.woMin > 2*targetExtraCPUPct
	cpuVerdict := passMiss(cpuOK)
	if cpuNoisy {
		cpuVerdict += fmt.Sprintf(" (inconclusive: noise floor spans %.1f%%)", cs.woMax-cs.woMin)
	}
	if cs.ok {
		if !cpuOK {
			b.missed++
		}
		fmt.Fprintf(&t, "CPU at %d req/s (paced, %s): workers %.2f%% without; workers+agent %.2f%% with (agent itself %.2f%%) => extra %.2f%% of a core, %.1f us/request [target <= %.0f%%: %s]\n",
			c.cpuRate, c.kongRoute, cs.without, cs.with, cs.agent, cs.extra, cs.usPerReq, targetExtraCPUPct, cpuVerdict)
		if len(b.cpu) > 2 {
			fmt.Fprintf(&t, "  noise: the workers' CPU over the %d runs without the agent spans %.2f%% to %.2f%% of a core\n", len(b.cpu)/2, cs.woMin, cs.woMax)
		}
		fmt.Fprintf(&t, "  same with the workers' schedstat on-CPU time: %.2f%% -> %.2f%% => extra %.2f%%, %.1f us/request\n",
			cs.schedWithout, cs.schedWith, cs.schedXtra, cs.schedUsPerReq)
		if cs.bpfOK {
			fmt.Fprintf(&t, "  bottom-up: %.2f probe hits and %.2f us of BPF run time per request; agent %.2f%% + BPF + %.1f us per hit for the trap => %.2f%% of a core, %.1f us/request\n",
				cs.hitsPerReq, cs.bpfUsPerReq, cs.agent, trapCostUs, cs.bottomUp, cs.bottomUpUsPerReq)
		}
	}
	hwm := b.agent.maxHWM
	if d.hwm > hwm {
		hwm = d.hwm
	}
	rssOK := agentOn && benchkit.MiB(hwm) <= targetRSSMiB
	dropOK := agentOn && d.done && d.droppedTotal == targetDrops
	countPct := math.NaN()
	if d.done && d.logLines > 0 && d.counted >= 0 {
		countPct = 100 * float64(d.counted) / float64(d.logLines)
	}
	if agentOn {
		if !rssOK {
			b.missed++
		}
		if !dropOK {
			b.missed++
		}
		fmt.Fprintf(&t, "agent memory: VmHWM %.1f MiB (peak over all %d agent starts), VmRSS %.1f MiB after the %d req/s run [target <= %.0f MiB: %s]\n",
			benchkit.MiB(hwm), b.agent.starts, benchkit.MiB(d.rss), c.dropRate, targetRSSMiB, passMiss(rssOK))
		fmt.Fprintf(&t, "accuracy at %d req/s for %v: sent %d, answered %d, access log %d lines, agent counted %d (%s%%), dropped %d during the run, %d over the agent's life [target 0: %s]\n",
			c.dropRate, c.dropDur, d.pr.Sent, d.pr.OK, d.logLines, d.counted, f(countPct, 2), d.dropped, d.droppedTotal, passMiss(dropOK))
	}
	if b.maxLoad > 3 {
		b.notes = append(b.notes, fmt.Sprintf("the machine was busy with other work (1-minute load average up to %.1f on %d vCPUs, this run at niceness %d): expect more than the usual +-15%% noise", b.maxLoad, runtime.NumCPU(), benchkit.Niceness()))
	}
	for _, n := range b.notes {
		fmt.Fprintf(&t, "note: %s\n", n)
	}
	fmt.Fprintf(&t, "total time %v\n\n", time.Since(b.started).Round(time.Second))

	// ---- BENCH lines (the last lines of the output) ----
	ratio := map[string]string{"kong_like": "NA", "return200": "NA", "tls": "NA", "http2": "NA"}
	for _, s := range sums {
		ratio[s.s.name] = f(s.ratio, 3)
	}
	na := func(ok bool, v string) string {
		if !ok {
			return "NA"
		}
		return v
	}
	fmt.Fprintf(&bl, "BENCH kong_like_ratio %s\n", ratio["kong_like"])
	fmt.Fprintf(&bl, "BENCH return200_ratio %s\n", ratio["return200"])
	fmt.Fprintf(&bl, "BENCH tls_ratio %s\n", ratio["tls"])
	fmt.Fprintf(&bl, "BENCH http2_ratio %s\n", ratio["http2"])
	fmt.Fprintf(&bl, "BENCH extra_cpu_pct_at_%drps %s\n", c.cpuRate, na(cs.ok, f(cs.extra, 2)))
	fmt.Fprintf(&bl, "BENCH agent_rss_mib %s\n", na(agentOn, f(benchkit.MiB(hwm), 1)))
	fmt.Fprintf(&bl, "BENCH dropped_events_at_%drps %s\n", c.dropRate, na(agentOn && d.done, fmt.Sprint(d.droppedTotal)))
	fmt.Fprintf(&bl, "BENCH extra_cpu_us_per_request %s\n", na(cs.ok, f(cs.usPerReq, 2)))
	fmt.Fprintf(&bl, "BENCH extra_cpu_schedstat_pct_at_%drps %s\n", c.cpuRate, na(cs.ok, f(cs.schedXtra, 2)))
	fmt.Fprintf(&bl, "BENCH agent_cpu_pct_at_%drps %s\n", c.cpuRate, na(cs.ok && agentOn, f(cs.agent, 2)))
	fmt.Fprintf(&bl, "BENCH agent_counted_pct_at_%drps %s\n", c.dropRate, na(agentOn, f(countPct, 2)))
	fmt.Fprintf(&bl, "BENCH probe_hits_per_request %s\n", na(cs.bpfOK, f(cs.hitsPerReq, 2)))
	fmt.Fprintf(&bl, "BENCH bpf_us_per_request %s\n", na(cs.bpfOK, f(cs.bpfUsPerReq, 3)))
	fmt.Fprintf(&bl, "BENCH bottom_up_extra_cpu_pct_at_%drps %s\n", c.cpuRate, na(cs.bpfOK, f(cs.bottomUp, 2)))
	for _, sm := range sums {
		fmt.Fprintf(&bl, "BENCH %s_paired_ratio %s\n", sm.s.name, f(sm.paired, 3))
	}
	fmt.Fprintf(&bl, "BENCH targets_missed %d\n", b.missed)

	// ---- the docs section ----
	now := time.Now().UTC()
	fmt.Fprintf(&doc, "## Agent\n\n")
	fmt.Fprintf(&doc, "What the agent costs the gateway it watches. Written by `%s` (`hack/bench-agent.sh`,\n", c.command)
	fmt.Fprintf(&doc, "source `test/benchagent`); the last run: %s, agent `%s`.\n\n", now.Format("2006-01-02 15:04 UTC"), b.agentVersion)
	fmt.Fprintf(&doc, "Machine: %s, a VM shared with other builds and tests (1-minute load\n", machineNote())
	fmt.Fprintf(&doc, "average up to %.1f during this run; the harness runs in its own scheduler autogroup at niceness\n", b.maxLoad)
	fmt.Fprintf(&doc, "%d so the measured processes get the CPU). Throughput varies by +-15%% from run to run here, so\n", benchkit.Niceness())
	fmt.Fprintf(&doc, "each scenario alternates rounds without and with the agent (order flipped every round),\n")
	fmt.Fprintf(&doc, "compares the medians and quotes ratios, not absolute req/s. Smoke test in under a minute:\n")
	fmt.Fprintf(&doc, "`BENCH_QUICK=1 make bench` (does not update this page); noise floor: `KW_AGENT=none make bench`.\n\n")
	if b.foreignSeen() {
		fmt.Fprintf(&doc, "During this run other processes had uprobes attached on the machine (other tests): a uprobe\n")
		fmt.Fprintf(&doc, "in nginx or libc slows every process mapping that file, on both sides of a round.\n\n")
	}
	fmt.Fprintf(&doc, "Setup: the gateway fixture (`test/fixture`: Debian nginx 1.22 + lua-nginx-module, 2 workers,\n")
	fmt.Fprintf(&doc, "JSON access log on) on loopback. %d round(s) per scenario, %v measured per side after a %v warm-up.\n",
		c.rounds, c.dur, c.warmup)
	pinNote := "not pinned"
	if c.pin != "" {
		pinNote = "pinned to CPU " + c.pin + " with taskset"
	}
	fmt.Fprintf(&doc, "wrk/h2load are %s; nginx, the agent and the fixture's Go upstream are not pinned (all\n", pinNote)
	fmt.Fprintf(&doc, "share the 2 vCPUs, as in a pod). The agent is stopped between rounds and restarted (and waited\n")
	fmt.Fprintf(&doc, "for on `/readyz`) for every \"with\" side, with %s.\n\n", agentEnvNote(c.luaPhases, c.dataPath))
	if !agentOn {
		fmt.Fprintf(&doc, "**A/A run: no agent was started; the ratios are the noise floor.**\n\n")
	}
	fmt.Fprintf(&doc, "| scenario | load | without (req/s) | with (req/s) | ratio | target | paired | agent CPU | counted |\n")
	fmt.Fprintf(&doc, "|---|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, s := range sums {
		cnt := "n/a"
		if agentOn && s.logged > 0 {
			cnt = fmt.Sprintf("%.2f%%", 100*float64(s.counted)/float64(s.logged))
		}
		fmt.Fprintf(&doc, "| %s | %s | %s | %s | **%s** | >= %.2f %s | %s | %s%% | %s |\n", s.s.name, s.s.what, f(s.without, 0), f(s.with, 0),
			f(s.ratio, 3), s.s.target, passMiss(s.ok), f(s.paired, 3), f(s.agentCPU, 1), cnt)
	}
	fmt.Fprintf(&doc, "\n\"ratio\" is the median with over the median without; \"paired\" is the median of each round's\n")
	fmt.Fprintf(&doc, "own with/without ratio (the two sides of a round run back to back, so it resists slow drift\n")
	fmt.Fprintf(&doc, "of the machine's other load better). ")
	fmt.Fprintf(&doc, "\"agent CPU\" is the agent process's own CPU during the \"with\" runs, in %% of one core (the probes'\n")
	fmt.Fprintf(&doc, "cost is in the workers' kernel time, and shows as lower throughput); \"counted\" is the agent's\n")
	fmt.Fprintf(&doc, "request count over the access log's line count for the same runs.")
	for _, sm := range sums {
		if sm.s.name == "http2" && sm.errors > 0 {
			fmt.Fprintf(&doc, " The http2 rounds' \"errors\" are\n")
			fmt.Fprintf(&doc, "streams h2load reports as errored, on both sides, while every response it got was 2xx and the\n")
			fmt.Fprintf(&doc, "access log and the agent agree; nginx ends each HTTP/2 connection after `keepalive_requests`\n")
			fmt.Fprintf(&doc, "(1000) with a GOAWAY, which is the likely cause.")
		}
	}
	fmt.Fprintf(&doc, "\n\n")
	fmt.Fprintf(&doc, "| figure | value | target |\n|---|---:|---|\n")
	if cs.ok {
		fmt.Fprintf(&doc, "| extra CPU at %d req/s (paced, Kong-like route): workers + agent minus workers alone | **%.2f%% of a core** (%.1f us/request; workers %.2f%% -> %.2f%%, agent %.2f%%) | <= %.0f%% %s |\n",
			c.cpuRate, cs.extra, cs.usPerReq, cs.without, cs.with-cs.agent, cs.agent, targetExtraCPUPct, cpuVerdict)
		if len(b.cpu) > 2 {
			fmt.Fprintf(&doc, "| noise floor: the workers' CPU over the %d runs without the agent | %.2f%% to %.2f%% of a core | |\n", len(b.cpu)/2, cs.woMin, cs.woMax)
		}
		fmt.Fprintf(&doc, "| the same, workers measured by schedstat (ns) instead of utime+stime ticks | %.2f%% of a core (%.1f us/request) | |\n",
			cs.schedXtra, cs.schedUsPerReq)
		if cs.bpfOK {
			fmt.Fprintf(&doc, "| bottom-up at %d req/s: agent CPU + the BPF programs' run time (kernel accounting) + %.1f us per probe hit for the trap (measured on this VM) | %.2f%% of a core (%.2f hits, %.2f us BPF, %.1f us total per request) | <= %.0f%% %s |\n",
				c.cpuRate, trapCostUs, cs.bottomUp, cs.hitsPerReq, cs.bpfUsPerReq, cs.bottomUpUsPerReq, targetExtraCPUPct, passMiss(cs.bottomUp <= targetExtraCPUPct))
		}
	}
	if agentOn {
		fmt.Fprintf(&doc, "| agent memory, VmHWM (peak of all %d agent processes) | **%.1f MiB** (VmRSS %.1f MiB after the %d req/s run) | <= %.0f MiB %s |\n",
			b.agent.starts, benchkit.MiB(hwm), benchkit.MiB(d.rss), c.dropRate, targetRSSMiB, passMiss(rssOK))
		fmt.Fprintf(&doc, "| dropped events, paced %d req/s for %v (agent lifetime) | **%d** | 0 %s |\n", c.dropRate, c.dropDur, d.droppedTotal, passMiss(dropOK))
		fmt.Fprintf(&doc, "| requests counted by the agent in that run / access log lines | %d / %d (%s%%); %d sent, %d answered | 100%% |\n",
			d.counted, d.logLines, f(countPct, 2), d.pr.Sent, d.pr.OK)
	}
	fmt.Fprintf(&doc, "\nHow the CPU figure is taken: an open-loop paced generator (in the harness, Go, %d keep-alive\n", b.pacedConns(c.cpuRate))
	fmt.Fprintf(&doc, "connections) sends exactly %d req/s to the Kong-like route, %d round(s) of %v without and %v with\n", c.cpuRate, c.cpuRounds, c.cpuDur, c.cpuDur)
	fmt.Fprintf(&doc, "the agent (order alternating); the CPU of the two workers (utime+stime from `/proc/<pid>/stat`,\n")
	fmt.Fprintf(&doc, "which includes the uprobe handlers run in their context) plus the agent's own is compared,\n")
	fmt.Fprintf(&doc, "median against median. On this shared VM the workers' CPU at a fixed rate itself moves by\n")
	fmt.Fprintf(&doc, "several %% of a core between runs as other work comes and goes (the noise-floor line; an A/A\n")
	fmt.Fprintf(&doc, "run, `KW_AGENT=none make bench`, shows the same), so this top-down difference cannot resolve a\n")
	fmt.Fprintf(&doc, "1%% target here (it says \"inconclusive\" then); on a quiet machine it can, and\n")
	fmt.Fprintf(&doc, "`BENCH_ARGS=-cpu-rounds=8` narrows it. The agent's own CPU is measured alone and is precise.\n")
	fmt.Fprintf(&doc, "The bottom-up line adds what can be attributed exactly: the agent's CPU, the run time the\n")
	fmt.Fprintf(&doc, "kernel accounts to the agent's BPF programs (BPF_ENABLE_STATS, during the \"with\" runs only;\n")
	fmt.Fprintf(&doc, "it includes time a program was preempted, so it is an upper bound on a busy machine) and an\n")
	fmt.Fprintf(&doc, "assumed %.1f us per probe hit for the uprobe trap itself.", trapCostUs)
	if cs.ok && cs.bpfOK && cs.extra-cs.bottomUp > cs.woMax-cs.woMin {
		fmt.Fprintf(&doc, " In this run the top-down figure exceeds the bottom-up one by %.2f%% of a core,\n", cs.extra-cs.bottomUp)
		fmt.Fprintf(&doc, "more than the noise floor's spread: the workers pay for something the BPF accounting does not\n")
		fmt.Fprintf(&doc, "see (a probe on a single-stepped instruction costs ~15 us per hit here; ring-buffer\n")
		fmt.Fprintf(&doc, "wake-ups; uprobe attach/detach).")
	}
	fmt.Fprintf(&doc, "\n\n")
	fmt.Fprintf(&doc, "<details><summary>Every round</summary>\n\n")
	fmt.Fprintf(&doc, "| scenario | round | side | req/s | requests | errors | nginx CPU | agent CPU | counted / logged | dropped |\n")
	fmt.Fprintf(&doc, "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|\n")
	for _, r := range b.rounds {
		cnt, dr, ac := "", "", ""
		if r.side == with && agentOn {
			cnt = fmt.Sprintf("%d / %d", r.counted, r.logLines)
			dr = fmt.Sprint(r.dropped)
			ac = fmt.Sprintf("%.1f%%", r.agentCPU)
		}
		fmt.Fprintf(&doc, "| %s | %d | %s | %.0f | %d | %d | %.0f%% | %s | %s | %s |\n", r.scenario, r.round, r.side, r.load.RPS,
			r.load.Requests, r.load.Errors, r.nginxCPU, ac, cnt, dr)
	}
	for _, cr := range b.cpu {
		fmt.Fprintf(&doc, "| cpu@%d | | %s | %.0f | %d | %d | %.2f%% | %.2f%% | | |\n", c.cpuRate, cr.side, float64(cr.pr.OK)/cr.wall,
			cr.pr.OK, cr.pr.Failed, cr.workersPct, cr.agentPct)
	}
	fmt.Fprintf(&doc, "\n</details>\n")
	if len(b.notes) > 0 {
		fmt.Fprintf(&doc, "\nNotes from the run:\n\n")
		for _, n := range b.notes {
			fmt.Fprintf(&doc, "- %s\n", n)
		}
	}
	return reportOut{table: t.String(), doc: doc.String(), bench: bl.String()}
}

func foreignMark(b bool) string {
	if b {
		return "  [other uprobes were attached on this machine]"
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

func (b *bench) foreignSeen() bool {
	for _, r := range b.rounds {
		if r.foreign > 0 {
			return true
		}
	}
	return false
}
