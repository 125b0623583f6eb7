// The throughput rounds: each side of a round on one route, measured alike and compared.

package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"
)

// roundSet runs rounds of scenario s on t, every side per round.
func (b *bench) roundSet(ctx context.Context, t *target, s scenario, rounds int) error {
	for r := 0; r < rounds; r++ {
		for _, sd := range order(b.sides(t), r) {
			rr, err := b.throughputRun(ctx, t, s, r, sd)
			if err != nil {
				return fmt.Errorf("%s %s round %d %s: %w", t.name, s.name, r+1, sd, err)
			}
			b.rounds = append(b.rounds, rr)
			b.logf("  %-9s round %d %-5s %9.0f req/s  %8d req  errors %d%s", s.name, r+1, sd, rr.load.RPS, rr.load.Requests, rr.load.Errors, b.roundExtra(t, rr))
			if rr.load.Errors > 0 {
				b.logf("    errors: %s", errorLines(rr.load.Raw))
			}
			if rr.side == sideAgent && t.agent.enabled() {
				b.checkCount(fmt.Sprintf("%s %s round %d", t.name, s.name, r+1), rr.counted, rr.dropped, rr.logLines)
			}
		}
	}
	return nil
}

func (b *bench) roundExtra(t *target, rr roundResult) string {
	s := fmt.Sprintf("  nginx %.0f%% cpu (busiest worker %.0f%%)", rr.nginxCPU, 100*rr.busiest)
	if rr.side == sideAgent && t.agent.enabled() {
		s += fmt.Sprintf("  agent %.1f%% cpu, counted %d of %d logged, dropped %d", rr.agentCPU, rr.counted, rr.logLines, rr.dropped)
	}
	if rr.foreign > 0 {
		s += fmt.Sprintf("  [%d foreign uprobes on %s: round left out]", rr.foreign, strings.Join(rr.foreignPaths, ", "))
	}
	if rr.busiest > maxWorkerShare {
		s += "  [unbalanced after every attempt: round left out]"
	}
	return s + fmt.Sprintf("  load %.1f", rr.load1)
}

// throughputRun runs one side of one round: (start the agent or bpftrace,) warm up, measure,
// (stop).
func (b *bench) throughputRun(ctx context.Context, t *target, s scenario, round int, sd side) (roundResult, error) {
	rr := roundResult{target: t.name, scenario: s.name, round: round + 1, side: sd, counted: -1, dropped: -1}
	withAgent := sd == sideAgent && t.agent.enabled()
	stop, err := t.startSide(ctx, sd)
	if err != nil {
		return rr, err
	}
	defer stop()
	if _, err := s.run(ctx, b.cfg.warmup); err != nil {
		return rr, fmt.Errorf("warm-up: %w", err)
	}
	// The workers share the listening sockets and the load generator's connections go to
	// whichever worker accepts first: now and then one worker gets nearly all of them and
	// the side measures one busy worker instead of two (real Kong's throughput then drops by
	// a third: Kong accepts with multi_accept on, and wrk opens its connections at once).
	// Such a run is measured again, up to maxAttempts times in all; a round that still has an
	// unbalanced side is left out of the ratios (while balanced rounds remain).
	for attempt := 1; ; attempt++ {
		var before statsSnap
		if withAgent {
			before = b.snap(t.agent, 2*time.Second)
		}
		// Keep the access log small (it grows by ~100 MB per minute at full speed) and count
		// the measured run's lines.
		os.Truncate(t.g.AccessLogPath(), 0) //nolint:errcheck
		workers, _ := t.g.WorkerPIDs()
		var paths []string
		rr.foreign, paths = foreignUprobes(workers, t.agent.pid(), t.floor.pid())
		w0, a0 := sampleCPU(workers), sampleCPU(pidList(t.agent.pid()))
		res, err := s.run(ctx, t.dur)
		w1, a1 := sampleCPU(workers), sampleCPU(pidList(t.agent.pid()))
		if err != nil {
			return rr, err
		}
		n, paths2 := foreignUprobes(workers, t.agent.pid(), t.floor.pid())
		rr.foreign = max(rr.foreign, n)
		rr.foreignPaths = uniq(append(paths, paths2...))
		rr.load = res
		rr.load1 = b.load1()
		wd, ad := diffCPU(w0, w1), diffCPU(a0, a1)
		rr.nginxCPU = pct(wd.TickSec, wd.WallSec)
		rr.agentCPU = pct(ad.TickSec, ad.WallSec)
		rr.busiest = busiestShare(w0, w1)
		rr.attempts = attempt
		if withAgent {
			after := b.snap(t.agent, 3*time.Second)
			b.checkDataPath(fmt.Sprintf("%s round %d", s.name, round+1), after)
			rr.counted, rr.dropped = countedBetween(before, after)
		}
		if len(workers) < 2 || rr.busiest <= maxWorkerShare || attempt == maxAttempts {
			break
		}
		b.logf("    %s round %d %s: one worker did %.0f%% of the workers' work (%.0f req/s): measured again", s.name, round+1, sd, 100*rr.busiest, res.RPS)
	}
	rr.logLines, _ = countLines(t.g.AccessLogPath())
	return rr, nil
}

// countedBetween is the requests the agent counted and the events it dropped between two
// snaps (-1, -1 when either could not be read).
func countedBetween(before, after statsSnap) (requests, dropped int64) {
	if !before.ok || !after.ok {
		return -1, -1
	}
	return int64(after.requests) - int64(before.requests), int64(after.dropped) - int64(before.dropped)
}

// checkCount fails the run when the agent's count of a measured run (countedBetween's)
// differs from the logged lines of the access log, or it dropped events.
func (b *bench) checkCount(what string, requests, dropped int64, logged int) {
	switch {
	case requests < 0:
		b.fail("%s: the agent's /stats could not be read around the run", what)
	case requests != int64(logged) || dropped != 0:
		b.fail("%s: the agent counted %d requests and dropped %d events; the access log has %d", what, requests, dropped, logged)
	}
}

type statsSnap struct {
	ok                bool
	requests, dropped uint64
	dataPath          string
}

func (b *bench) snap(a *agentRunner, settle time.Duration) statsSnap {
	st, err := a.settledStats(settle)
	if err != nil {
		b.logf("  agent /stats: %v", err)
		return statsSnap{}
	}
	return statsSnap{ok: true, requests: st.Total.Requests, dropped: st.Total.DroppedEvents, dataPath: st.DataPath}
}

// checkDataPath fails the run when the agent, left to choose, did not read nginx's request
// object: its cost and exactness would be the fallback's, measured under the wrong name.
func (b *bench) checkDataPath(what string, s statsSnap) {
	if s.ok && b.cfg.dataPath == "" && s.dataPath != "nginx-request" {
		b.fail("%s: the agent reads through the %q data path, not nginx's request object (see its log)", what, s.dataPath)
	}
}

func pidList(pid int) []int {
	if pid == 0 {
		return nil
	}
	return []int{pid}
}

func pct(cpuSec, wallSec float64) float64 {
	if wallSec <= 0 {
		return 0
	}
	return cpuSec / wallSec * 100
}
