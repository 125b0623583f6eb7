// Paired gateways: the Kong-like route's agent and floor measured on two gateways at the same
// time, so that the shared machine's bursts, which slow both at once, cancel out.
//
// The sequential rounds compare sides measured seconds apart; on this VM a side's throughput
// moves by 10-20% from one run to the next, so a median over a few rounds decides a 0.02
// target by chance. Here two identical gateways (one worker each, each with its own copies of
// nginx and its modules, since a uprobe is set on a file) serve the same load at once, one
// with the agent, the other with the floor's empty program; then the two swap. Each run's A/B
// throughput ratio is free of the machine's bursts, and the geometric mean of a swapped pair
// is free of any difference between the two gateways.
//
// What the A/B ratio does not see is the agent process's own CPU: it is taken from both
// gateways alike. It is measured (the process's threads' on-CPU time) and subtracted as its
// share of the machine's CPU per request of its gateway.

package main

import (
	"context"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// pairedSlack is the Kong-like target: the agent's ratio at least the floor's minus this.
const pairedSlack = 0.02

// pairCfg is the side each of the two gateways runs in a paired run.
type pairCfg struct{ a, b side }

func (p pairCfg) String() string { return p.a.String() + "|" + p.b.String() }

// pairCfgs are one paired round: agent against floor and floor against none, each both ways.
var pairCfgs = []pairCfg{{sideAgent, sideFloor}, {sideFloor, sideAgent}, {sideNone, sideFloor}, {sideFloor, sideNone}}

// pairResult is one paired run: both gateways under the same load at the same time.
type pairResult struct {
	round    int
	cfg      pairCfg
	a, b     loadResult
	agentCPU float64 // CPU seconds of the agent process during the measured run (0: none)
	wall     float64 // seconds
	ncpu     int
}

// pairRatios returns, per round that has both runs, side x's throughput over side y's: the
// square root of (A/B with x on A and y on B) over (A/B with y on A and x on B).
func pairRatios(rs []pairResult, x, y side) []float64 {
	_, v := pairRatiosBy(rs, x, y)
	return v
}

// pairRatiosBy is pairRatios with the rounds the ratios come from.
func pairRatiosBy(rs []pairResult, x, y side) ([]int, []float64) {
	type both struct{ xy, yx float64 }
	by := map[int]*both{}
	for _, r := range rs {
		if r.a.RPS <= 0 || r.b.RPS <= 0 {
			continue
		}
		t := by[r.round]
		if t == nil {
			t = &both{}
			by[r.round] = t
		}
		switch r.cfg {
		case pairCfg{x, y}:
			t.xy = r.a.RPS / r.b.RPS
		case pairCfg{y, x}:
			t.yx = r.a.RPS / r.b.RPS
		}
	}
	var rounds []int
	for k := range by {
		rounds = append(rounds, k)
	}
	slices.Sort(rounds)
	var ks []int
	var out []float64
	for _, k := range rounds {
		if t := by[k]; t.xy > 0 && t.yx > 0 {
			ks = append(ks, k)
			out = append(out, math.Sqrt(t.xy/t.yx))
		}
	}
	return ks, out
}

// agentRequests is the requests the gateway with the agent served in r (0: no agent).
func (r pairResult) agentRequests() float64 {
	switch {
	case r.cfg.a == sideAgent:
		return float64(r.a.Requests)
	case r.cfg.b == sideAgent:
		return float64(r.b.Requests)
	}
	return 0
}

// agentShare is the agent process's CPU per request of its gateway as a fraction of the
// machine's CPU per request: the part of throughput it would take from its gateway alone.
func agentShare(r pairResult) (float64, bool) {
	mine := r.agentRequests()
	total := float64(r.a.Requests + r.b.Requests)
	if mine <= 0 || r.wall <= 0 || r.ncpu <= 0 {
		return 0, false
	}
	return (r.agentCPU / mine) / (float64(r.ncpu) * r.wall / total), true
}

// pairedSummary is the paired runs' estimate of the Kong-like target.
type pairedSummary struct {
	ok          bool
	rounds      int
	workers     spread  // agent/floor from the A/B ratios: the workers' side of the cost
	share       spread  // the agent process's share, subtracted
	agentFloor  spread  // workers - share, per round
	mean, se    float64 // of agentFloor
	floorNone   spread
	gap         float64 // floor ratio - agent ratio, estimated: floorNone x (1 - agentFloor)
	gapSE       float64
	slack       float64
	met         bool
	errors      int
	meanAgentUs float64 // the agent process, us per request of its gateway
}

func summarisePairs(rs []pairResult, slack float64) pairedSummary {
	s := pairedSummary{slack: slack}
	wr, wv := pairRatiosBy(rs, sideAgent, sideFloor)
	fn := pairRatios(rs, sideFloor, sideNone)
	// The share per round: the mean of the round's agent runs.
	shares := map[int][]float64{}
	var us []float64
	for _, r := range rs {
		s.errors += r.a.Errors + r.b.Errors
		if v, ok := agentShare(r); ok {
			shares[r.round] = append(shares[r.round], v)
			us = append(us, r.agentCPU/r.agentRequests()*1e6)
		}
	}
	var w, sh, af []float64
	for i, k := range wr {
		if len(shares[k]) == 0 {
			continue
		}
		share := mean(shares[k])
		w = append(w, wv[i])
		sh = append(sh, share)
		af = append(af, wv[i]-share)
	}
	if len(w) == 0 || len(fn) == 0 {
		return s
	}
	s.ok, s.rounds = true, len(w)
	s.workers, s.share, s.agentFloor, s.floorNone = spreadOf(w), spreadOf(sh), spreadOf(af), spreadOf(fn)
	s.mean, s.se = mean(af), stdErr(af)
	s.meanAgentUs = mean(us)
	s.gap = s.floorNone.med * (1 - s.agentFloor.med)
	s.gapSE = s.floorNone.med * s.se
	s.met = s.gap <= slack
	return s
}

func mean(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	var sum float64
	for _, x := range xs {
		sum += x
	}
	return sum / float64(len(xs))
}

// stdErr is the standard error of the mean (NaN with fewer than two values).
func stdErr(xs []float64) float64 {
	if len(xs) < 2 {
		return math.NaN()
	}
	m := mean(xs)
	var ss float64
	for _, x := range xs {
		ss += (x - m) * (x - m)
	}
	return math.Sqrt(ss/float64(len(xs)-1)) / math.Sqrt(float64(len(xs)))
}

// pairGateway is one of the two gateways, with the agent and the floor for it, and the URL
// of the route its load goes to.
type pairGateway struct {
	*target
	url string
}

// pairedRuns runs the paired rounds on the Kong-like route (nothing without the agent or the
// floor, or with -paired-rounds 0).
func (b *bench) pairedRuns(ctx context.Context) (err error) {
	c := b.cfg
	if c.pairedRounds <= 0 || c.agentBin == "" || b.fx == nil || !b.fx.floor.enabled() {
		return nil
	}
	var gws [2]*pairGateway
	for i, name := range []string{"pair-a", "pair-b"} {
		pg, serr := b.startPairGateway(ctx, name)
		if serr != nil {
			return serr
		}
		gws[i] = pg
		defer func() {
			pg.agent.stop()
			pg.floor.stop()
			b.collectAgent(pg.agent)
			if serr := pg.g.Stop(); serr != nil && err == nil {
				err = serr
			}
		}()
		if !pg.floor.enabled() {
			return nil
		}
	}
	conns := max(1, c.wrkConns/2)
	// The load generators are not pinned here: pinned to one CPU, they leave the other to
	// whichever worker the scheduler puts there, the faster gateway by a few percent and
	// not the same one from run to run; pinned each beside the other gateway's worker, they
	// starve the workers, and a cost in the workers no longer shows in throughput.
	unpinned := loadTool{}
	b.logf("paired gateways (kong_like): two gateways of one worker each, wrk -t1 -c%d on each at once (not pinned); %d round(s) of %v per run: %v",
		conns, c.pairedRounds, c.pairedDur, pairCfgs)
	load := func(d time.Duration) ([2]loadResult, error) {
		var res [2]loadResult
		var errs [2]error
		var wg sync.WaitGroup
		for i, pg := range gws {
			wg.Go(func() { res[i], errs[i] = unpinned.wrk(ctx, pg.url, 1, conns, d) })
		}
		wg.Wait()
		if errs[0] != nil {
			return res, errs[0]
		}
		return res, errs[1]
	}
	if _, err := load(max(c.warmup, 3*time.Second)); err != nil {
		return fmt.Errorf("paired priming: %w", err)
	}
	for r := 0; r < c.pairedRounds; r++ {
		for i := range pairCfgs {
			pc := pairCfgs[(i+r)%len(pairCfgs)]
			pr, err := b.pairRun(ctx, gws, pc, r+1, load)
			if err != nil {
				return fmt.Errorf("paired round %d %v: %w", r+1, pc, err)
			}
			b.pairs = append(b.pairs, pr)
			extra := ""
			if pr.agentCPU > 0 {
				extra = fmt.Sprintf("  agent %.2f ms cpu", pr.agentCPU*1e3)
			}
			b.logf("  paired round %d %-11v A %7.0f req/s  B %7.0f req/s  A/B %.3f  errors %d%s", r+1, pc, pr.a.RPS, pr.b.RPS,
				pr.a.RPS/pr.b.RPS, pr.a.Errors+pr.b.Errors, extra)
		}
	}
	return nil
}

// startPairGateway starts one of the two gateways, with its own copies of nginx and its
// modules under the work directory's name/.
func (b *bench) startPairGateway(ctx context.Context, name string) (*pairGateway, error) {
	dir := filepath.Join(b.workDir, name)
	nginxBin, err := privateCopy(dir, "nginx", "nginx", "/usr/sbin/nginx")
	if err != nil {
		return nil, err
	}
	luaMod, err := privateCopy(dir, filepath.Base(fixture.DefaultLuaModule), "", fixture.DefaultLuaModule)
	if err != nil {
		return nil, err
	}
	ndkMod, err := privateCopy(dir, filepath.Base(fixture.DefaultNDKModule), "", fixture.DefaultNDKModule)
	if err != nil {
		return nil, err
	}
	g, err := fixture.Start(ctx, fixture.Options{Workers: 1, Dir: filepath.Join(dir, "gateway"), Nginx: nginxBin,
		LuaModule: luaMod, NDKModule: ndkMod})
	if err != nil {
		return nil, err
	}
	url := "http://" + g.HTTPAddr + b.cfg.kongRoute
	return &pairGateway{target: &target{name: name, g: g, agent: b.newAgent(name, g.MasterPID()),
		floor: b.newFloor(name, g.MasterPID()), poke: poker(url, nil)}, url: url}, nil
}

// pairRun is one paired run: the sides started, both gateways warmed up and measured at once,
// the agent's count checked against its gateway's access log.
func (b *bench) pairRun(ctx context.Context, gws [2]*pairGateway, pc pairCfg, round int,
	load func(time.Duration) ([2]loadResult, error)) (pairResult, error) {
	pr := pairResult{round: round, cfg: pc, ncpu: runtime.NumCPU()}
	var ag *pairGateway
	for i, sd := range [2]side{pc.a, pc.b} {
		stop, err := gws[i].startSide(ctx, sd)
		if err != nil {
			return pr, err
		}
		defer stop()
		if sd == sideAgent {
			ag = gws[i]
		}
	}
	if _, err := load(b.cfg.warmup); err != nil {
		return pr, fmt.Errorf("warm-up: %w", err)
	}
	var before statsSnap
	if ag != nil {
		before = b.snap(ag.agent, 2*time.Second)
	}
	for _, pg := range gws {
		os.Truncate(pg.g.AccessLogPath(), 0) //nolint:errcheck
	}
	var t0 map[string]uint64
	if ag != nil {
		t0 = sampleTasks(ag.agent.pid())
	}
	start := time.Now()
	res, err := load(b.cfg.pairedDur)
	pr.wall = time.Since(start).Seconds()
	if ag != nil {
		pr.agentCPU = diffTasks(t0, sampleTasks(ag.agent.pid()))
	}
	if err != nil {
		return pr, err
	}
	pr.a, pr.b = res[0], res[1]
	if ag != nil {
		after := b.snap(ag.agent, 3*time.Second)
		b.checkDataPath(fmt.Sprintf("paired round %d", round), after)
		logged, _ := countLines(ag.g.AccessLogPath())
		requests, dropped := countedBetween(before, after)
		b.checkCount(fmt.Sprintf("paired round %d %v", round, pc), requests, dropped, logged)
	}
	return pr, nil
}
