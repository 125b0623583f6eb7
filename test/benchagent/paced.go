// The runs at a fixed request rate: CPU per request, BPF run time, saturation, drops.

package main

import (
	"context"
	"fmt"
	"math"
	"net/http"
	"os"
	"time"

	"github.com/kong-watcher/kong-watcher/test/benchkit"
)

func (b *bench) pacedConns(rate int) int {
	n := b.cfg.pacedConns
	if min := (rate + 499) / 500; n < min {
		n = min
	}
	return n
}

// bpfAccounting turns the kernel's BPF run-time accounting on and reads the agent's programs'
// counters; stop reads them again, turns it off and returns the difference.
type bpfAccounting struct {
	b      *bench
	pid    int
	off    func()
	before bpfProgStats
	ok     bool
}

func (b *bench) startBPFAccounting(pid int) *bpfAccounting {
	a := &bpfAccounting{b: b, pid: pid, off: func() {}}
	var err error
	if a.off, err = enableBPFStats(); err == nil {
		a.before, err = agentBPFStats(pid)
		a.ok = err == nil && a.before.Progs > 0
	}
	if !a.ok && !b.bpfWarned {
		b.bpfWarned = true
		b.note("no BPF run-time accounting of the agent's programs (%v, %d programs found): no BPF figure", err, a.before.Progs)
	}
	return a
}

func (a *bpfAccounting) stop() (bpfProgStats, bool) {
	defer a.off()
	if !a.ok {
		return bpfProgStats{}, false
	}
	after, err := agentBPFStats(a.pid)
	if err != nil || after.Progs == 0 {
		return bpfProgStats{}, false
	}
	return bpfProgStats{Progs: after.Progs, RunCnt: after.RunCnt - a.before.RunCnt, RunNS: after.RunNS - a.before.RunNS}, true
}

// pacedRun runs one side of a paced CPU run on t at rate req/s to route.
func (b *bench) pacedRun(ctx context.Context, t *target, rate int, route string, sd side, dur time.Duration) (pacedCPU, error) {
	url := "http://" + t.g.HTTPAddr + route
	withAgent := sd == sideAgent && t.agent.enabled()
	if !(withAgent && t.agent.running()) {
		stop, err := t.startSide(ctx, sd)
		if err != nil {
			return pacedCPU{}, err
		}
		defer stop()
	}
	var a *agentRunner
	if withAgent {
		a = t.agent
	}
	cr, err := b.measurePaced(ctx, t, a, url, nil, rate, dur, sd.String())
	cr.route, cr.side = route, sd
	return cr, err
}

// measurePaced warms t up and measures one paced run of rate req/s to url (with header) for
// dur: the workers' CPU, and when a is given (running) the agent's CPU and its BPF programs'
// run time. label names the run in the notes.
func (b *bench) measurePaced(ctx context.Context, t *target, a *agentRunner, url string, header http.Header, rate int, dur time.Duration, label string) (pacedCPU, error) {
	conns := b.pacedConns(rate)
	pacedH(ctx, url, header, rate, b.cfg.warmup, conns)
	os.Truncate(t.g.AccessLogPath(), 0) //nolint:errcheck
	// BPF run-time accounting only around the agent side's measured run: it adds two clock
	// reads per program run.
	var acct *bpfAccounting
	agentPID := 0
	if a != nil {
		agentPID = a.pid()
		acct = b.startBPFAccounting(agentPID)
	}
	workers, _ := t.g.WorkerPIDs()
	w0, a0, at0 := sampleCPU(workers), sampleCPU(pidList(agentPID)), sampleTasks(agentPID)
	pr := pacedH(ctx, url, header, rate, dur, conns)
	w1, a1, at1 := sampleCPU(workers), sampleCPU(pidList(agentPID)), sampleTasks(agentPID)
	cr := pacedCPU{rate: rate, pr: pr}
	if acct != nil {
		cr.bpf, cr.bpfOK = acct.stop()
	}
	if ctx.Err() != nil {
		return cr, ctx.Err()
	}
	b.load1()
	wd, ad := diffCPU(w0, w1), diffCPU(a0, a1)
	cr.workersPct, cr.schedPct, cr.wall = pct(wd.TickSec, wd.WallSec), pct(wd.SchedSec, wd.WallSec), wd.WallSec
	cr.agentTickPct = pct(ad.TickSec, ad.WallSec)
	cr.agentPct = pct(diffTasks(at0, at1), ad.WallSec)
	cr.logLines, _ = countLines(t.g.AccessLogPath())
	if pr.Failed > 0 {
		b.note("paced %d req/s %s run: %d of %d requests failed: %v", rate, label, pr.Failed, pr.Sent, pr.Errs)
	}
	if pr.MaxLag > 100*time.Millisecond {
		b.note("paced %d req/s %s run: the generator fell behind by up to %v", rate, label, pr.MaxLag.Round(time.Millisecond))
	}
	return cr, nil
}

func (b *bench) logPaced(label string, cr pacedCPU) {
	bpfNote := ""
	if cr.bpfOK && cr.pr.OK > 0 {
		bpfNote = fmt.Sprintf("; %d BPF programs: %.2f runs and %.0f ns of BPF per request", cr.bpf.Progs,
			float64(cr.bpf.RunCnt)/float64(cr.pr.OK), float64(cr.bpf.RunNS)/float64(cr.pr.OK))
	}
	b.logf("  %s %-5s sent %d ok %d failed %d (max lag %v): workers %.2f%% (schedstat %.2f%%), agent %.2f%% of a core (ticks %.1f%%), %.1f us/request%s",
		label, cr.side, cr.pr.Sent, cr.pr.OK, cr.pr.Failed, cr.pr.MaxLag.Round(time.Millisecond), cr.workersPct, cr.schedPct, cr.agentPct, cr.agentTickPct,
		perRequestUs(cr.agentPct, cr.pr.OK, cr.wall), bpfNote)
}

// perRequestUs is a CPU share (% of a core over wall seconds) per request served, in us.
func perRequestUs(pctCore float64, requests int, wall float64) float64 {
	if requests <= 0 {
		return math.NaN()
	}
	return pctCore / 100 * wall / float64(requests) * 1e6
}

// cpuRuns measures the CPU of the workers (and of the agent) at a fixed paced rate, every
// side: what the floor's empty program costs the workers at that rate too, since a trap on a
// cold path costs more than at saturation.
func (b *bench) cpuRuns(ctx context.Context, t *target) error {
	c := b.cfg
	b.logf("CPU at a fixed %d req/s: paced open-loop GET %s over %d keep-alive connections, %v per side", c.cpuRate, c.kongRoute, b.pacedConns(c.cpuRate), c.cpuDur)
	for r := 0; r < c.cpuRounds; r++ {
		for _, sd := range order(b.sides(t), r) {
			cr, err := b.pacedRun(ctx, t, c.cpuRate, c.kongRoute, sd, c.cpuDur)
			if err != nil {
				return err
			}
			b.cpu = append(b.cpu, cr)
			b.logPaced(fmt.Sprintf("cpu@%d round %d", c.cpuRate, r+1), cr)
		}
	}
	return nil
}

// highRuns measures the agent's own CPU at a high paced rate (the agent's side only), after
// its CPU with no traffic at all.
func (b *bench) highRuns(ctx context.Context, t *target) error {
	c := b.cfg
	if c.highRate <= 0 || !t.agent.enabled() {
		return nil
	}
	if err := t.agent.start(ctx, t.poke); err != nil {
		return err
	}
	defer t.agent.stop()
	time.Sleep(time.Second)
	a0, s0 := sampleCPU(pidList(t.agent.pid())), sampleTasks(t.agent.pid())
	time.Sleep(3 * time.Second)
	a1, s1 := sampleCPU(pidList(t.agent.pid())), sampleTasks(t.agent.pid())
	b.idleAgentPct = pct(diffTasks(s0, s1), diffCPU(a0, a1).WallSec)
	b.logf("agent with no traffic: %.2f%% of a core", b.idleAgentPct)
	b.logf("the agent's CPU at a fixed %d req/s: paced open-loop GET %s over %d keep-alive connections, %d run(s) of %v", c.highRate, c.highRoute, b.pacedConns(c.highRate), c.highRounds, c.cpuDur)
	for r := 0; r < c.highRounds; r++ {
		cr, err := b.pacedRun(ctx, t, c.highRate, c.highRoute, sideAgent, c.cpuDur)
		if err != nil {
			return err
		}
		b.cpu = append(b.cpu, cr)
		b.logPaced(fmt.Sprintf("cpu@%d run %d", c.highRate, r+1), cr)
	}
	return nil
}

// satRun runs the agent under wrk on s (saturation) with the kernel's BPF run-time accounting
// on: the BPF run time per request when the workers are never idle.
func (b *bench) satRun(ctx context.Context, t *target, s scenario) error {
	c := b.cfg
	if c.satDur <= 0 || !t.agent.enabled() {
		return nil
	}
	b.logf("BPF run time at saturation: %s, %v, agent running, BPF run-time accounting on", s.what, c.satDur)
	if err := t.agent.start(ctx, t.poke); err != nil {
		return err
	}
	defer t.agent.stop()
	if _, err := s.run(ctx, c.warmup); err != nil {
		return err
	}
	os.Truncate(t.g.AccessLogPath(), 0) //nolint:errcheck
	acct := b.startBPFAccounting(t.agent.pid())
	a0, s0 := sampleCPU(pidList(t.agent.pid())), sampleTasks(t.agent.pid())
	res, err := s.run(ctx, c.satDur)
	a1, s1 := sampleCPU(pidList(t.agent.pid())), sampleTasks(t.agent.pid())
	st := &b.sat
	st.bpf, st.bpfOK = acct.stop()
	if err != nil {
		return err
	}
	st.done, st.load = true, res
	st.wall = diffCPU(a0, a1).WallSec
	st.agentPct = pct(diffTasks(s0, s1), st.wall)
	st.logLines, _ = countLines(t.g.AccessLogPath())
	perReq := math.NaN()
	if st.bpfOK && st.logLines > 0 {
		perReq = float64(st.bpf.RunNS) / float64(st.logLines)
	}
	b.logf("  %.0f req/s, %d requests logged; %d BPF programs: %d runs, %.0f ns of BPF per request; agent %.1f%% of a core, %.2f us/request",
		res.RPS, st.logLines, st.bpf.Progs, st.bpf.RunCnt, perReq, st.agentPct, perRequestUs(st.agentPct, st.logLines, st.wall))
	return nil
}

// dropRun runs the agent under a paced 5,000 req/s load and checks it counted every
// request and dropped no event; it also reads the agent's memory.
func (b *bench) dropRun(ctx context.Context, t *target) error {
	c := b.cfg
	if !t.agent.enabled() {
		return nil
	}
	url := "http://" + t.g.HTTPAddr + c.kongRoute
	conns := b.pacedConns(c.dropRate)
	b.logf("accuracy at %d req/s: paced GET %s over %d connections for %v, agent running", c.dropRate, c.kongRoute, conns, c.dropDur)
	if err := t.agent.start(ctx, t.poke); err != nil {
		return err
	}
	defer t.agent.stop()
	paced(ctx, url, c.dropRate, c.warmup, conns)
	before := b.snap(t.agent, 3*time.Second)
	os.Truncate(t.g.AccessLogPath(), 0) //nolint:errcheck
	a0, s0 := sampleCPU(pidList(t.agent.pid())), sampleTasks(t.agent.pid())
	pr := paced(ctx, url, c.dropRate, c.dropDur, conns)
	a1, s1 := sampleCPU(pidList(t.agent.pid())), sampleTasks(t.agent.pid())
	if ctx.Err() != nil {
		return ctx.Err()
	}
	after := b.snap(t.agent, 5*time.Second)
	d := &b.drop
	d.done = true
	d.pr = pr
	d.logLines, _ = countLines(t.g.AccessLogPath())
	d.counted, d.dropped = -1, -1
	if before.ok && after.ok {
		d.counted = int64(after.requests) - int64(before.requests)
		d.dropped = int64(after.dropped) - int64(before.dropped)
		d.droppedTotal = after.dropped
	}
	d.agentPct = pct(diffTasks(s0, s1), diffCPU(a0, a1).WallSec)
	var err error
	if d.rss, d.hwm, err = benchkit.ProcMem(t.agent.pid()); err != nil {
		b.note("agent memory: %v", err)
	}
	b.logf("  sent %d ok %d failed %d (max lag %v); access log %d lines; agent counted %d, dropped %d (lifetime %d); agent cpu %.1f%%; VmRSS %.1f MiB VmHWM %.1f MiB",
		pr.Sent, pr.OK, pr.Failed, pr.MaxLag.Round(time.Millisecond), d.logLines, d.counted, d.dropped, d.droppedTotal, d.agentPct, benchkit.MiB(d.rss), benchkit.MiB(d.hwm))
	switch {
	case d.counted < 0:
		b.fail("%d req/s run: the agent's /stats could not be read around the run", c.dropRate)
	case d.counted != int64(d.logLines):
		b.fail("%d req/s run: the agent counted %d requests, the access log has %d", c.dropRate, d.counted, d.logLines)
	}
	if d.droppedTotal != 0 {
		b.fail("%d req/s run: the agent dropped %d events (%d over its life)", c.dropRate, d.dropped, d.droppedTotal)
	}
	if pr.Failed > 0 {
		b.note("%d req/s run: %d of %d requests failed: %v", c.dropRate, pr.Failed, pr.Sent, pr.Errs)
	}
	if pr.MaxLag > 100*time.Millisecond {
		b.note("%d req/s run: the paced generator fell behind by up to %v", c.dropRate, pr.MaxLag.Round(time.Millisecond))
	}
	return nil
}
