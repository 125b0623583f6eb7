// Command benchagent measures what the kong-watcher agent costs the Kong-like gateway
// fixture (test/fixture): throughput with and without the agent in alternating rounds for
// four scenarios (Kong-like Lua + proxy route over HTTP/1.1, `return 200`, HTTP/1.1 over
// TLS, HTTP/2), the extra CPU per request at a fixed paced rate, the agent's memory, and
// whether it counts every request without dropping events at 5,000 req/s. It prints a
// table, rewrites the "## Agent" section of docs/benchmarks.md, and ends its output with
// one `BENCH <name> <value>` line per figure. hack/bench-agent.sh (make bench) runs it.
//
// It needs root (the agent attaches uprobes), nginx with the Lua module, wrk and h2load.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"math"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/kong-watcher/kong-watcher/test/benchkit"
	"github.com/kong-watcher/kong-watcher/test/fixture"
)

type config struct {
	agentBin             string
	rounds               int
	dur, warmup          time.Duration
	quick                bool
	cpuRate, cpuRounds   int
	cpuDur               time.Duration
	dropRate             int
	dropDur              time.Duration
	pacedConns           int
	pin                  string
	wrkThreads, wrkConns int
	h2Threads, h2Conns   int
	h2Streams            int
	kongRoute, fastRoute string
	scenarios            string
	docPath              string
	writeDoc             bool
	luaPhases            string
	dataPath             string
	workDir              string
	readyWait            time.Duration
	strict               bool
	command              string
}

func main() { os.Exit(run()) }

func run() int {
	var c config
	flag.StringVar(&c.agentBin, "agent", "bin/kong-watcher-agent", `the agent binary; "none" runs the "with" rounds without it (an A/A run: shows the noise floor)`)
	flag.IntVar(&c.rounds, "rounds", 3, "rounds per scenario; each round runs both sides, in alternating order")
	flag.DurationVar(&c.dur, "duration", 5*time.Second, "measured time of one side of one round")
	flag.DurationVar(&c.warmup, "warmup", time.Second, "unmeasured load before each measured run (after the agent is ready)")
	flag.BoolVar(&c.quick, "quick", false, "smoke test: 1 round of 2 s, 3 s CPU and drop runs, no docs update (under a minute)")
	flag.IntVar(&c.cpuRate, "cpu-rate", 2000, "paced req/s of the CPU-per-request measurement")
	flag.DurationVar(&c.cpuDur, "cpu-duration", 4*time.Second, "length of each side of one CPU round")
	flag.IntVar(&c.cpuRounds, "cpu-rounds", 4, "rounds of the CPU measurement (each both sides, order alternating; the workers' CPU per request drifts with the machine's other load, so several short alternating rounds beat one long pair)")
	flag.IntVar(&c.dropRate, "drop-rate", 5000, "paced req/s of the drop/accuracy run")
	flag.DurationVar(&c.dropDur, "drop-duration", 10*time.Second, "length of the drop/accuracy run")
	flag.IntVar(&c.pacedConns, "paced-conns", 8, "keep-alive connections of the paced generator (at least 1 per 500 req/s is used)")
	flag.StringVar(&c.pin, "pin", "1", `CPU list wrk/h2load are pinned to with taskset ("" = not pinned); nginx and the agent are never pinned`)
	flag.IntVar(&c.wrkThreads, "wrk-threads", 1, "wrk -t")
	flag.IntVar(&c.wrkConns, "wrk-conns", 50, "wrk -c")
	flag.IntVar(&c.h2Threads, "h2-threads", 1, "h2load -t")
	flag.IntVar(&c.h2Conns, "h2-conns", 50, "h2load -c")
	flag.IntVar(&c.h2Streams, "h2-streams", 10, "h2load -m (concurrent streams per connection)")
	flag.StringVar(&c.kongRoute, "kong-route", "/users/123", "the Kong-like route (Lua access + header filter, proxy_pass to a keep-alive upstream)")
	flag.StringVar(&c.fastRoute, "fast-route", "/fast", "the `return 200` route")
	flag.StringVar(&c.scenarios, "scenarios", "kong_like,return200,tls,http2", "throughput scenarios to run")
	flag.StringVar(&c.docPath, "doc", "docs/benchmarks.md", "the file whose \"## Agent\" section is rewritten")
	flag.BoolVar(&c.writeDoc, "write-doc", true, "rewrite the doc section (never in -quick or A/A mode)")
	flag.StringVar(&c.luaPhases, "lua-phases", "", "KONG_WATCHER_LUA_PHASES for the agent (off|on|sampled; empty = the agent's default)")
	flag.StringVar(&c.dataPath, "data-path", "", "KONG_WATCHER_DATA_PATH for the agent (auto|nginx-request|wire; empty = the agent's default)")
	flag.StringVar(&c.workDir, "work-dir", "", "where the gateway prefix and the agent log go (default: a new temporary directory, removed unless the run fails)")
	flag.DurationVar(&c.readyWait, "ready-timeout", 30*time.Second, "how long to wait for the agent's /readyz")
	flag.BoolVar(&c.strict, "strict", false, "exit 1 when a figure misses its target")
	flag.StringVar(&c.command, "command", "make bench", "the command to quote in the docs")
	flag.Parse()
	if c.quick {
		c.rounds, c.dur, c.warmup = 1, 2*time.Second, time.Second
		c.cpuDur, c.dropDur, c.cpuRounds = 3*time.Second, 3*time.Second, 1
		c.writeDoc = false
	}
	if c.agentBin == "none" {
		c.agentBin = ""
		c.writeDoc = false
	}
	if c.rounds < 1 || c.cpuRounds < 1 || c.dur < time.Second {
		fmt.Fprintln(os.Stderr, "benchagent: -rounds and -cpu-rounds must be >= 1 and -duration >= 1s")
		return 2
	}
	if c.agentBin != "" {
		abs, err := filepath.Abs(c.agentBin)
		if err == nil {
			c.agentBin = abs
		}
		if _, err := os.Stat(c.agentBin); err != nil {
			fmt.Fprintf(os.Stderr, "benchagent: agent binary: %v (make build, or -agent none for an A/A run)\n", err)
			return 2
		}
	}
	if os.Geteuid() != 0 {
		fmt.Fprintln(os.Stderr, "benchagent: needs root (the agent attaches uprobes; the gateway runs as root)")
		return 2
	}

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	b := &bench{cfg: c, started: time.Now()}
	err := b.run(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchagent: %v\n", err)
		if b.workDir != "" {
			fmt.Fprintf(os.Stderr, "benchagent: kept %s (agent log: %s)\n", b.workDir, b.agent.logPath)
		}
		return 1
	}
	if c.strict && b.missed > 0 {
		return 1
	}
	return 0
}

// side is one half of a round.
type side int

const (
	without side = iota
	with
)

func (s side) String() string {
	if s == with {
		return "with"
	}
	return "without"
}

type scenario struct {
	name, what string
	target     float64
	run        func(ctx context.Context, d time.Duration) (loadResult, error)
}

// roundResult is one measured run of one side.
type roundResult struct {
	scenario string
	round    int
	side     side
	load     loadResult
	logLines int     // access log lines written during the measured run
	counted  int64   // requests the agent counted during it (-1 = n/a)
	dropped  int64   // events the agent dropped during it (-1 = n/a)
	agentCPU float64 // agent CPU, % of one core
	nginxCPU float64 // workers' CPU, % of one core
	foreign  int     // uprobes of other owners present (-1 = unknown)
	load1    float64 // 1-minute load average at the end of the run
}

type cpuResult struct {
	side                 side
	pr                   pacedResult
	workersPct, schedPct float64 // workers' CPU, % of one core (ticks, schedstat)
	agentPct             float64
	wall                 float64
	bpf                  bpfProgStats // the agent's BPF programs during the run (with side)
	bpfOK                bool
}

type bench struct {
	cfg          config
	started      time.Time
	workDir      string
	g            *fixture.Gateway
	agent        *agentRunner
	tool         loadTool
	rounds       []roundResult
	cpu          []cpuResult
	notes        []string
	missed       int
	maxLoad      float64
	bpfWarned    bool
	agentVersion string

	// the drop/accuracy run
	drop struct {
		done             bool
		pr               pacedResult
		logLines         int
		counted, dropped int64
		droppedTotal     uint64
		rss, hwm         uint64
		agentPct         float64
	}
}

func (b *bench) logf(format string, args ...any) {
	fmt.Printf("[%6.1fs] %s\n", time.Since(b.started).Seconds(), fmt.Sprintf(format, args...))
}

func (b *bench) note(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	b.notes = append(b.notes, s)
	b.logf("NOTE: %s", s)
}

func (b *bench) run(ctx context.Context) (err error) {
	c := b.cfg
	for _, tool := range []string{"wrk", "h2load", "taskset"} {
		if _, err := execLookPath(tool); err != nil && (tool != "taskset" || c.pin != "") {
			return fmt.Errorf("%s not found (hack/install-deps.sh installs it)", tool)
		}
	}
	if c.pin != "" && runtime.NumCPU() < 2 {
		c.pin = ""
		b.cfg.pin = ""
	}
	b.workDir = c.workDir
	removeWork := false
	if b.workDir == "" {
		if b.workDir, err = os.MkdirTemp("", "kw-bench-agent-"); err != nil {
			return err
		}
		removeWork = true
	} else if err := os.MkdirAll(b.workDir, 0o755); err != nil {
		return err
	}
	defer func() {
		if err == nil && removeWork {
			os.RemoveAll(b.workDir)
			b.workDir = ""
		}
	}()

	ag, _ := os.ReadFile("/proc/self/autogroup")
	b.logf("machine: %s; load average %s; our niceness %d, %s", machineNote(), benchkit.LoadAvg(), benchkit.Niceness(), strings.TrimSpace(string(ag)))
	b.logf("starting the gateway fixture (2 workers) in %s", b.workDir)
	g, err := fixture.Start(ctx, fixture.Options{Workers: 2, Dir: filepath.Join(b.workDir, "gateway")})
	if err != nil {
		return err
	}
	b.g = g
	defer func() {
		if serr := g.Stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	workers, _ := g.WorkerPIDs()
	b.logf("gateway: master %d, workers %v, http %s, https %s", g.MasterPID(), workers, g.HTTPAddr, g.HTTPSAddr)

	// Run a private copy: bin/ is shared, and a `make build` elsewhere during the run would
	// otherwise swap the agent between rounds.
	if c.agentBin != "" {
		cp := filepath.Join(b.workDir, "kong-watcher-agent")
		if err := copyFile(c.agentBin, cp); err != nil {
			return fmt.Errorf("copying the agent: %w", err)
		}
		b.agentVersion = agentVersion(cp)
		c.agentBin = cp
	}
	b.agent = &agentRunner{bin: c.agentBin, master: g.MasterPID(), luaPhases: c.luaPhases, dataPath: c.dataPath,
		logPath: filepath.Join(b.workDir, "agent.log"), readyWait: c.readyWait}
	defer b.agent.stop()
	b.tool = loadTool{pinCPUs: c.pin}
	if c.agentBin == "" {
		b.agentVersion = "none (A/A run)"
		b.note("A/A run (-agent none): the \"with\" rounds run without the agent; the ratios show the noise floor")
	}

	httpURL := "http://" + g.HTTPAddr
	httpsURL := "https://" + g.HTTPSAddr
	all := map[string]scenario{
		"kong_like": {name: "kong_like", target: 0.95,
			what: fmt.Sprintf("wrk -t%d -c%d, HTTP/1.1 keep-alive, %s (Lua access + header filter, proxy_pass to a keep-alive upstream)", c.wrkThreads, c.wrkConns, c.kongRoute),
			run: func(ctx context.Context, d time.Duration) (loadResult, error) {
				return b.tool.wrk(ctx, httpURL+c.kongRoute, c.wrkThreads, c.wrkConns, d)
			}},
		"return200": {name: "return200", target: 0.90,
			what: fmt.Sprintf("wrk -t%d -c%d, HTTP/1.1 keep-alive, %s (`return 200`)", c.wrkThreads, c.wrkConns, c.fastRoute),
			run: func(ctx context.Context, d time.Duration) (loadResult, error) {
				return b.tool.wrk(ctx, httpURL+c.fastRoute, c.wrkThreads, c.wrkConns, d)
			}},
		"tls": {name: "tls", target: 0.95,
			what: fmt.Sprintf("wrk -t%d -c%d, HTTP/1.1 over TLS keep-alive, %s", c.wrkThreads, c.wrkConns, c.kongRoute),
			run: func(ctx context.Context, d time.Duration) (loadResult, error) {
				return b.tool.wrk(ctx, httpsURL+c.kongRoute, c.wrkThreads, c.wrkConns, d)
			}},
		"http2": {name: "http2", target: 0.95,
			what: fmt.Sprintf("h2load -t%d -c%d -m%d, HTTP/2 over TLS, %s", c.h2Threads, c.h2Conns, c.h2Streams, c.kongRoute),
			run: func(ctx context.Context, d time.Duration) (loadResult, error) {
				return b.tool.h2load(ctx, httpsURL+c.kongRoute, c.h2Threads, c.h2Conns, c.h2Streams, d)
			}},
	}
	var scens []scenario
	for _, n := range strings.Split(c.scenarios, ",") {
		n = strings.TrimSpace(n)
		if n == "" {
			continue
		}
		s, ok := all[n]
		if !ok {
			return fmt.Errorf("unknown scenario %q (kong_like, return200, tls, http2)", n)
		}
		scens = append(scens, s)
	}

	// Prime every path once (Lua code, upstream keep-alive pools, TLS sessions, page cache)
	// so that the first measured round is not the cold one.
	prime := c.warmup
	b.logf("priming: %v of each scenario's load, not measured", prime)
	for _, s := range scens {
		if _, err := s.run(ctx, prime); err != nil {
			return fmt.Errorf("%s (priming): %w", s.name, err)
		}
	}
	for _, s := range scens {
		b.logf("scenario %s: %s", s.name, s.what)
		for r := 0; r < c.rounds; r++ {
			order := []side{without, with}
			if r%2 == 1 {
				order = []side{with, without}
			}
			for _, sd := range order {
				rr, err := b.throughputRun(ctx, s, r, sd)
				if err != nil {
					return fmt.Errorf("%s round %d %s: %w", s.name, r+1, sd, err)
				}
				b.rounds = append(b.rounds, rr)
				b.logf("  %-9s round %d %-7s %9.0f req/s  %8d req  errors %d%s", s.name, r+1, sd, rr.load.RPS, rr.load.Requests, rr.load.Errors, b.roundExtra(rr))
				if rr.load.Errors > 0 {
					b.logf("    errors: %s", errorLines(rr.load.Raw))
				}
			}
		}
	}

	if err := b.cpuRuns(ctx); err != nil {
		return fmt.Errorf("CPU measurement: %w", err)
	}
	if err := b.dropRun(ctx); err != nil {
		return fmt.Errorf("drop/accuracy run: %w", err)
	}
	b.agent.stop()

	out := b.report(scens)
	fmt.Print(out.table)
	if b.cfg.writeDoc {
		if err := benchkit.WriteDocSection(c.docPath, "## Agent", out.doc); err != nil {
			return fmt.Errorf("writing %s: %w", c.docPath, err)
		}
		b.logf("wrote the \"## Agent\" section of %s", c.docPath)
	} else {
		b.logf("%s not updated (quick or A/A run, or -write-doc=false)", c.docPath)
	}
	fmt.Print(out.bench)
	return nil
}

func (b *bench) roundExtra(rr roundResult) string {
	s := fmt.Sprintf("  nginx %.0f%% cpu", rr.nginxCPU)
	if rr.side == with && b.agent.enabled() {
		s += fmt.Sprintf("  agent %.1f%% cpu, counted %d of %d logged, dropped %d", rr.agentCPU, rr.counted, rr.logLines, rr.dropped)
	}
	if rr.foreign > 0 {
		s += fmt.Sprintf("  [%d foreign uprobes]", rr.foreign)
	}
	return s + fmt.Sprintf("  load %.1f", rr.load1)
}

// throughputRun runs one side of one round: (start the agent,) warm up, measure, (stop).
func (b *bench) throughputRun(ctx context.Context, s scenario, round int, sd side) (roundResult, error) {
	rr := roundResult{scenario: s.name, round: round + 1, side: sd, counted: -1, dropped: -1}
	withAgent := sd == with && b.agent.enabled()
	if withAgent {
		if err := b.agent.start(ctx, poker("http://"+b.g.HTTPAddr+b.cfg.kongRoute)); err != nil {
			return rr, err
		}
		defer b.agent.stop()
	}
	if _, err := s.run(ctx, b.cfg.warmup); err != nil {
		return rr, fmt.Errorf("warm-up: %w", err)
	}
	var before statsSnap
	if withAgent {
		before = b.snap(2 * time.Second)
	}
	// Keep the access log small (it grows by ~100 MB per minute at full speed) and count
	// the measured run's lines.
	os.Truncate(b.g.AccessLogPath(), 0) //nolint:errcheck
	rr.foreign = foreignUprobes(b.agent.pid())
	workers, _ := b.g.WorkerPIDs()
	w0, a0 := sampleCPU(workers), sampleCPU(pidList(b.agent.pid()))
	res, err := s.run(ctx, b.cfg.dur)
	w1, a1 := sampleCPU(workers), sampleCPU(pidList(b.agent.pid()))
	if err != nil {
		return rr, err
	}
	rr.load = res
	rr.load1 = b.load1()
	wd, ad := diffCPU(w0, w1), diffCPU(a0, a1)
	rr.nginxCPU = pct(wd.TickSec, wd.WallSec)
	rr.agentCPU = pct(ad.TickSec, ad.WallSec)
	if withAgent {
		after := b.snap(3 * time.Second)
		if before.ok && after.ok {
			rr.counted = int64(after.requests) - int64(before.requests)
			rr.dropped = int64(after.dropped) - int64(before.dropped)
		}
	}
	rr.logLines, _ = countLines(b.g.AccessLogPath())
	return rr, nil
}

type statsSnap struct {
	ok                bool
	requests, dropped uint64
}

func (b *bench) snap(settle time.Duration) statsSnap {
	st, err := b.agent.settledStats(settle)
	if err != nil {
		b.logf("  agent /stats: %v", err)
		return statsSnap{}
	}
	return statsSnap{ok: true, requests: st.Total.Requests, dropped: st.Total.DroppedEvents}
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

func (b *bench) pacedConns(rate int) int {
	n := b.cfg.pacedConns
	if min := (rate + 499) / 500; n < min {
		n = min
	}
	return n
}

// cpuRuns measures the CPU of the workers (and of the agent) at a fixed paced rate.
func (b *bench) cpuRuns(ctx context.Context) error {
	c := b.cfg
	url := "http://" + b.g.HTTPAddr + c.kongRoute
	conns := b.pacedConns(c.cpuRate)
	b.logf("CPU at a fixed %d req/s: paced open-loop GET %s over %d keep-alive connections, %v per side", c.cpuRate, c.kongRoute, conns, c.cpuDur)
	for r := 0; r < c.cpuRounds; r++ {
		order := []side{without, with}
		if r%2 == 1 {
			order = []side{with, without}
		}
		for _, sd := range order {
			withAgent := sd == with && b.agent.enabled()
			if withAgent {
				if err := b.agent.start(ctx, poker(url)); err != nil {
					return err
				}
			}
			paced(ctx, url, c.cpuRate, c.warmup, conns)
			os.Truncate(b.g.AccessLogPath(), 0) //nolint:errcheck
			// BPF run-time accounting only around the with side's measured run: it adds
			// two clock reads per program run.
			var bpf0, bpf1 bpfProgStats
			bpfOK := false
			stopStats := func() {}
			if withAgent {
				var err error
				if stopStats, err = enableBPFStats(); err == nil {
					bpf0, err = agentBPFStats(b.agent.pid())
					bpfOK = err == nil && bpf0.Progs > 0
				}
				if !bpfOK && !b.bpfWarned {
					b.bpfWarned = true
					b.note("no BPF run-time accounting of the agent's programs (%v, %d programs found): no bottom-up CPU figure", err, bpf0.Progs)
				}
			}
			workers, _ := b.g.WorkerPIDs()
			w0, a0 := sampleCPU(workers), sampleCPU(pidList(b.agent.pid()))
			pr := paced(ctx, url, c.cpuRate, c.cpuDur, conns)
			w1, a1 := sampleCPU(workers), sampleCPU(pidList(b.agent.pid()))
			if bpfOK {
				var err error
				bpf1, err = agentBPFStats(b.agent.pid())
				bpfOK = err == nil
			}
			stopStats()
			if withAgent {
				b.agent.stop()
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			b.load1()
			wd, ad := diffCPU(w0, w1), diffCPU(a0, a1)
			cr := cpuResult{side: sd, pr: pr, workersPct: pct(wd.TickSec, wd.WallSec), schedPct: pct(wd.SchedSec, wd.WallSec),
				agentPct: pct(ad.TickSec, ad.WallSec), wall: wd.WallSec}
			if bpfOK && bpf1.Progs > 0 {
				cr.bpfOK = true
				cr.bpf = bpfProgStats{Progs: bpf1.Progs, RunCnt: bpf1.RunCnt - bpf0.RunCnt, RunNS: bpf1.RunNS - bpf0.RunNS}
			}
			b.cpu = append(b.cpu, cr)
			bpfNote := ""
			if cr.bpfOK && pr.OK > 0 {
				bpfNote = fmt.Sprintf("; %d BPF programs: %.2f runs and %.2f us of BPF per request", cr.bpf.Progs,
					float64(cr.bpf.RunCnt)/float64(pr.OK), float64(cr.bpf.RunNS)/1e3/float64(pr.OK))
			}
			b.logf("  cpu round %d %-7s sent %d ok %d failed %d (max lag %v): workers %.2f%% (schedstat %.2f%%), agent %.2f%% of a core%s",
				r+1, sd, pr.Sent, pr.OK, pr.Failed, pr.MaxLag.Round(time.Millisecond), cr.workersPct, cr.schedPct, cr.agentPct, bpfNote)
			if pr.Failed > 0 {
				b.note("CPU run %s: %d of %d requests failed: %v", sd, pr.Failed, pr.Sent, pr.Errs)
			}
			if pr.MaxLag > 100*time.Millisecond {
				b.note("CPU run %s: the paced generator fell behind by up to %v", sd, pr.MaxLag.Round(time.Millisecond))
			}
		}
	}
	return nil
}

// dropRun runs the agent under a paced 5,000 req/s load and checks it counted every
// request and dropped no event; it also reads the agent's memory.
func (b *bench) dropRun(ctx context.Context) error {
	c := b.cfg
	if !b.agent.enabled() {
		return nil
	}
	url := "http://" + b.g.HTTPAddr + c.kongRoute
	conns := b.pacedConns(c.dropRate)
	b.logf("accuracy at %d req/s: paced GET %s over %d connections for %v, agent running", c.dropRate, c.kongRoute, conns, c.dropDur)
	if err := b.agent.start(ctx, poker(url)); err != nil {
		return err
	}
	defer b.agent.stop()
	paced(ctx, url, c.dropRate, c.warmup, conns)
	before := b.snap(3 * time.Second)
	os.Truncate(b.g.AccessLogPath(), 0) //nolint:errcheck
	a0 := sampleCPU(pidList(b.agent.pid()))
	pr := paced(ctx, url, c.dropRate, c.dropDur, conns)
	a1 := sampleCPU(pidList(b.agent.pid()))
	if ctx.Err() != nil {
		return ctx.Err()
	}
	after := b.snap(5 * time.Second)
	d := &b.drop
	d.done = true
	d.pr = pr
	d.logLines, _ = countLines(b.g.AccessLogPath())
	d.counted, d.dropped = -1, -1
	if before.ok && after.ok {
		d.counted = int64(after.requests) - int64(before.requests)
		d.dropped = int64(after.dropped) - int64(before.dropped)
		d.droppedTotal = after.dropped
	} else {
		b.note("the agent's /stats could not be read around the %d req/s run", c.dropRate)
	}
	ad := diffCPU(a0, a1)
	d.agentPct = pct(ad.TickSec, ad.WallSec)
	var err error
	if d.rss, d.hwm, err = benchkit.ProcMem(b.agent.pid()); err != nil {
		b.note("agent memory: %v", err)
	}
	b.logf("  sent %d ok %d failed %d (max lag %v); access log %d lines; agent counted %d, dropped %d (lifetime %d); agent cpu %.1f%%; VmRSS %.1f MiB VmHWM %.1f MiB",
		pr.Sent, pr.OK, pr.Failed, pr.MaxLag.Round(time.Millisecond), d.logLines, d.counted, d.dropped, d.droppedTotal, d.agentPct, benchkit.MiB(d.rss), benchkit.MiB(d.hwm))
	if pr.Failed > 0 {
		b.note("%d req/s run: %d of %d requests failed: %v", c.dropRate, pr.Failed, pr.Sent, pr.Errs)
	}
	if pr.MaxLag > 100*time.Millisecond {
		b.note("%d req/s run: the paced generator fell behind by up to %v", c.dropRate, pr.MaxLag.Round(time.Millisecond))
	}
	return nil
}

func median(xs []float64) float64 {
	if len(xs) == 0 {
		return math.NaN()
	}
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

var errNotFound = errors.New("not found")

func execLookPath(name string) (string, error) {
	for _, dir := range filepath.SplitList(os.Getenv("PATH")) {
		p := filepath.Join(dir, name)
		if st, err := os.Stat(p); err == nil && !st.IsDir() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", errNotFound
}

func machineNote() string {
	model := ""
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, l := range strings.Split(string(data), "\n") {
			if strings.HasPrefix(l, "model name") {
				if _, v, ok := strings.Cut(l, ":"); ok {
					model = strings.TrimSpace(v)
				}
				break
			}
		}
	}
	var u syscall.Utsname
	kernel := ""
	if syscall.Uname(&u) == nil {
		var sb strings.Builder
		for _, c := range u.Release {
			if c == 0 {
				break
			}
			sb.WriteByte(byte(c))
		}
		kernel = sb.String()
	}
	return fmt.Sprintf("%d vCPU (%s), Linux %s", runtime.NumCPU(), model, kernel)
}

// load1 returns the 1-minute load average and remembers the highest seen.
func (b *bench) load1() float64 {
	var v float64
	fmt.Sscan(benchkit.LoadAvg(), &v) //nolint:errcheck
	if v > b.maxLoad {
		b.maxLoad = v
	}
	return v
}

func copyFile(src, dst string) error {
	data, err := os.ReadFile(src)
	if err != nil {
		return err
	}
	return os.WriteFile(dst, data, 0o755)
}

// errorLines picks the lines of wrk/h2load output that explain errors.
func errorLines(out string) string {
	var keep []string
	for _, l := range strings.Split(out, "\n") {
		l = strings.TrimSpace(l)
		for _, p := range []string{"Socket errors", "Non-2xx", "requests:", "status codes:"} {
			if strings.HasPrefix(l, p) {
				keep = append(keep, l)
			}
		}
	}
	return strings.Join(keep, "; ")
}
