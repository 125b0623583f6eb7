// The markdown section make bench-docs writes into docs/benchmarks.md.

package main

import (
	"fmt"
	"runtime"
	"strings"
	"time"

	"github.com/kong-watcher/kong-watcher/test/benchkit"
)

func (b *bench) writeDoc(doc *strings.Builder, sums []scenSummary, cs cpuSummary, ps pairedSummary, hwm uint64, rssOK bool, countPct float64, cpuVerdict string, satBpfNs, satAgentUs, satHits float64) {
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
	if ps.ok {
		w("**Paired gateways** (the Kong-like target, measured without the machine's bursts): two copies of the\n")
		w("fixture, one worker each and each with its own copies of nginx and its modules, serve `wrk -t1 -c%d` on\n", max(1, c.wrkConns/2))
		w("%s at the same time; one has the agent, the other the floor's empty program, then the two swap (and\n", c.kongRoute)
		w("the same for the floor against none). A burst of other work slows both gateways at once, so each run's\n")
		w("A/B ratio is free of it, and a swapped pair cancels any difference between the gateways. The agent\n")
		w("process takes its CPU from both gateways alike, so its share of the machine's CPU per request of its\n")
		w("gateway is measured (its threads' schedstat) and subtracted. The load generators are not pinned here. %d round(s) of %v per run:\n\n", ps.rounds, c.pairedDur)
		w("| figure | median (lowest-highest) |\n|---|---|\n")
		w("| agent / floor, the workers' side (A/B ratios) | %s |\n", ps.workers)
		w("| the agent process's share, subtracted | %s (%.2f us per request) |\n", ps.share.fmt(4), ps.meanAgentUs)
		w("| agent / floor | **%s** (mean %s, standard error %s) |\n", ps.agentFloor, f(ps.mean, 3), f(ps.se, 3))
		w("| floor / none | %s |\n", ps.floorNone)
		w("| floor ratio - agent ratio (floor / none x (1 - agent / floor)) | **%s** +- %s: target <= %.2f %s |\n\n", f(ps.gap, 3), f(ps.gapSE, 3), ps.slack, passMiss(ps.met))
	}

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
		if cs.hasFloor {
			w("| the same for the floor's empty program, and the agent above it, paced %d req/s | floor %.2f%% of a core (%.1f us/request); the agent above the floor %.2f%% (%.1f us/request) |\n",
				c.cpuRate, cs.floorExtra, cs.floorUsPerReq, cs.aboveFloor, cs.aboveFloorUsPerReq)
		}
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
	w("at %d req/s in turn with runs without the agent and runs with the floor's empty program, %d of %v at\n", c.cpuRate, c.highRounds, c.cpuDur)
	w("%d req/s); it includes its fixed cost\n", c.highRate)
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
