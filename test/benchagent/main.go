// Command benchagent measures what the kong-watcher agent costs the gateway it watches, side
// by side with the physical limit of its design. Its rounds alternate three sides on each
// route of the Kong-like gateway fixture (test/fixture): "none" (no probe), "floor" (an EMPTY
// BPF program on the same uprobe, ngx_http_free_request, attached by bpftrace: what any
// design that traps once per request pays here) and "agent" (bin/kong-watcher-agent). The
// routes: Kong-like Lua + proxy over HTTP/1.1, `return 200`, HTTP/1.1 over TLS, HTTP/2. Then
// the agent's own CPU per request at paced 2,000 and 20,000 req/s, the BPF run time per
// request at saturation, its memory, whether it counts every request without dropping events
// at 5,000 req/s, and a round set on real Kong 3.8.1 (hack/kong.sh) when it is built. It
// prints a table and ends its output with one `BENCH <name> <value>` line per figure; with
// -write-doc it also rewrites the "## Agent" section of docs/benchmarks.md.
// hack/bench-agent.sh (make bench, make bench-docs) runs it.
//
// It exits 1 when the agent's counting is not exact (a request counted twice or missed) or it
// dropped events; the throughput targets are printed, and fail the run only with -strict.
//
// It needs root (the agent attaches uprobes), nginx with the Lua module, wrk, h2load and
// bpftrace (the floor side; without it the floor is skipped with a note).
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
	floor                bool
	cpuRate, cpuRounds   int
	cpuDur               time.Duration
	highRate, highRounds int
	highRoute            string
	satDur               time.Duration
	dropRate             int
	dropDur              time.Duration
	pacedConns           int
	pin                  string
	wrkThreads, wrkConns int
	h2Threads, h2Conns   int
	h2Streams            int
	kongRoute, fastRoute string
	scenarios            string
	kongTop              string
	kongWarmup           time.Duration
	kongRounds           int
	kongConns            int
	kongDur              time.Duration
	kongLuaRate          int
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
	flag.StringVar(&c.agentBin, "agent", "bin/kong-watcher-agent", `the agent binary; "none" runs the "agent" rounds without it (an A/A run: shows the noise floor)`)
	flag.IntVar(&c.rounds, "rounds", 6, "rounds per scenario; each round runs every side, the order rotating from round to round (a multiple of 3 puts every side in every position equally often)")
	flag.DurationVar(&c.dur, "duration", 3*time.Second, "measured time of one side of one round (many short rounds resist the shared machine's bursts better than a few long ones)")
	flag.DurationVar(&c.warmup, "warmup", time.Second, "unmeasured load before each measured run (after the agent or bpftrace is ready)")
	flag.BoolVar(&c.quick, "quick", false, "smoke test: 1 round of 2 s, short CPU and drop runs, a short Kong warm-up (about 2 minutes)")
	flag.BoolVar(&c.floor, "floor", true, "run the floor side (an empty BPF program on the same uprobe, with bpftrace)")
	flag.IntVar(&c.cpuRate, "cpu-rate", 2000, "paced req/s of the CPU-per-request measurement (both sides: the workers' extra CPU, the agent's own)")
	flag.DurationVar(&c.cpuDur, "cpu-duration", 4*time.Second, "length of each side of one CPU round")
	flag.IntVar(&c.cpuRounds, "cpu-rounds", 4, "rounds of the CPU measurement at -cpu-rate (each both sides, order alternating)")
	flag.IntVar(&c.highRate, "high-rate", 20000, "paced req/s of the second agent-CPU measurement (the agent's side only; 0 = skip)")
	flag.IntVar(&c.highRounds, "high-rounds", 2, "runs at -high-rate")
	flag.StringVar(&c.highRoute, "high-route", "", "the route of the -high-rate runs (default: -fast-route, which the 2 vCPUs can serve at that rate beside the generator)")
	flag.DurationVar(&c.satDur, "sat-duration", 5*time.Second, "the agent's BPF run time at saturation (wrk on the Kong-like route, run-time accounting on): measured time (0 = skip)")
	flag.IntVar(&c.dropRate, "drop-rate", 5000, "paced req/s of the drop/accuracy run")
	flag.DurationVar(&c.dropDur, "drop-duration", 10*time.Second, "length of the drop/accuracy run")
	flag.IntVar(&c.pacedConns, "paced-conns", 8, "keep-alive connections of the paced generator (at least 1 per 500 req/s is used)")
	flag.StringVar(&c.pin, "pin", "1", `CPU list wrk/h2load are pinned to with taskset ("" = not pinned); nginx, the agent and bpftrace are never pinned`)
	flag.IntVar(&c.wrkThreads, "wrk-threads", 1, "wrk -t")
	flag.IntVar(&c.wrkConns, "wrk-conns", 50, "wrk -c")
	flag.IntVar(&c.h2Threads, "h2-threads", 1, "h2load -t")
	flag.IntVar(&c.h2Conns, "h2-conns", 50, "h2load -c")
	flag.IntVar(&c.h2Streams, "h2-streams", 10, "h2load -m (concurrent streams per connection)")
	flag.StringVar(&c.kongRoute, "kong-route", "/users/123", "the Kong-like route (Lua access + header filter, proxy_pass to a keep-alive upstream)")
	flag.StringVar(&c.fastRoute, "fast-route", "/fast", "the `return 200` route")
	flag.StringVar(&c.scenarios, "scenarios", "kong_like,return200,tls,http2", "fixture scenarios to run (empty: none)")
	flag.StringVar(&c.kongTop, "kong", "", "TOP of hack/kong.sh's real Kong build: run the round set on real Kong (empty: skipped, with a note)")
	flag.DurationVar(&c.kongWarmup, "kong-warmup", 25*time.Second, "unmeasured load on real Kong before its rounds (LuaJIT's traces: throughput climbs for ~15 s after start)")
	flag.IntVar(&c.kongRounds, "kong-rounds", 6, "rounds on real Kong (each runs every side, the order rotating; Kong's throughput is the noisiest)")
	flag.IntVar(&c.kongConns, "kong-conns", 50, "wrk -c on real Kong")
	flag.DurationVar(&c.kongDur, "kong-duration", 5*time.Second, "measured time of one side of one round on real Kong")
	flag.IntVar(&c.kongLuaRate, "kong-lua-rate", 1000, "paced req/s on real Kong of the Lua phase timing cost runs (agent with Lua timing off vs on, -cpu-rounds rounds of -cpu-duration; 0 = skip)")
	flag.StringVar(&c.docPath, "doc", "docs/benchmarks.md", "the file whose \"## Agent\" section -write-doc rewrites")
	flag.BoolVar(&c.writeDoc, "write-doc", false, "rewrite the doc section after a run that counted exactly (never in -quick or A/A mode); make bench-docs sets it")
	flag.StringVar(&c.luaPhases, "lua-phases", "", "KONG_WATCHER_LUA_PHASES for the agent (off|on|sampled; empty = the agent's default)")
	flag.StringVar(&c.dataPath, "data-path", "", "KONG_WATCHER_DATA_PATH for the agent (auto|nginx-request|wire; empty = the agent's default)")
	flag.StringVar(&c.workDir, "work-dir", "", "where the gateway prefixes and the agent and bpftrace logs go (default: a new temporary directory, removed unless the run fails)")
	flag.DurationVar(&c.readyWait, "ready-timeout", 30*time.Second, "how long to wait for the agent's /readyz")
	flag.BoolVar(&c.strict, "strict", false, "also exit 1 when a throughput or CPU figure misses its target")
	flag.StringVar(&c.command, "command", "make bench-docs", "the command to quote in the docs")
	flag.Parse()
	if c.quick {
		c.rounds, c.dur, c.warmup = 1, 2*time.Second, time.Second
		c.cpuDur, c.dropDur, c.cpuRounds, c.highRounds, c.satDur = 3*time.Second, 3*time.Second, 1, 1, 3*time.Second
		c.kongWarmup, c.kongRounds, c.kongDur = 5*time.Second, 1, 2*time.Second
		c.writeDoc = false
	}
	if c.agentBin == "none" {
		c.agentBin = ""
		c.writeDoc = false
	}
	if c.highRoute == "" {
		c.highRoute = c.fastRoute
	}
	if c.rounds < 1 || c.cpuRounds < 1 || c.kongRounds < 1 || c.dur < time.Second {
		fmt.Fprintln(os.Stderr, "benchagent: -rounds, -cpu-rounds and -kong-rounds must be >= 1 and -duration >= 1s")
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
	// bpftrace raises RLIMIT_MEMLOCK itself and complains when it cannot; the kernel charges
	// BPF memory to the cgroup anyway.
	syscall.Setrlimit(8 /* RLIMIT_MEMLOCK */, &syscall.Rlimit{Cur: math.MaxUint64, Max: math.MaxUint64}) //nolint:errcheck

	ctx, cancel := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer cancel()
	b := &bench{cfg: c, started: time.Now()}
	err := b.run(ctx)
	if err != nil {
		fmt.Fprintf(os.Stderr, "benchagent: %v\n", err)
		if b.workDir != "" {
			fmt.Fprintf(os.Stderr, "benchagent: kept %s (agent log: %s)\n", b.workDir, filepath.Join(b.workDir, "agent.log"))
		}
		return 1
	}
	if len(b.broken) > 0 {
		for _, m := range b.broken {
			fmt.Fprintf(os.Stderr, "benchagent: FAIL: %s\n", m)
		}
		return 1
	}
	if c.strict && b.missed > 0 {
		return 1
	}
	return 0
}

// side is one third of a round.
type side int

const (
	sideNone  side = iota // no probe
	sideFloor             // an empty BPF program on the same uprobe (bpftrace)
	sideAgent             // the agent
)

func (s side) String() string {
	switch s {
	case sideFloor:
		return "floor"
	case sideAgent:
		return "agent"
	}
	return "none"
}

// order is the sides of round r (from 0): a rotation of sides, every side in every position
// once per len(sides) rounds, and the rotations reversed in the next len(sides) rounds, so
// that no side always follows the same one.
func order(sides []side, r int) []side {
	n := len(sides)
	out := make([]side, n)
	for i := range sides {
		out[i] = sides[(i+r)%n]
	}
	if (r/n)%2 == 1 {
		for i, j := 0, n-1; i < j; i, j = i+1, j-1 {
			out[i], out[j] = out[j], out[i]
		}
	}
	return out
}

// scenario is one load on one route.
type scenario struct {
	name, what string
	// slack is the target: the agent's ratio at least the floor's minus slack (0: no target).
	slack float64
	run   func(ctx context.Context, d time.Duration) (loadResult, error)
}

// target is a gateway the rounds run on, with the agent and the floor's bpftrace for it.
type target struct {
	name  string // "fixture" or "kong"
	g     *fixture.Gateway
	agent *agentRunner
	floor *floorRunner
	poke  func()
	dur   time.Duration // measured time of a side
}

// roundResult is one measured run of one side.
type roundResult struct {
	target       string
	scenario     string
	round        int
	side         side
	load         loadResult
	logLines     int     // access log lines written during the measured run
	counted      int64   // requests the agent counted during it (-1 = n/a)
	dropped      int64   // events the agent dropped during it (-1 = n/a)
	agentCPU     float64 // agent CPU, % of one core
	nginxCPU     float64 // workers' CPU, % of one core
	foreign      int     // uprobes of other owners on files the workers map (-1 = unknown)
	foreignPaths []string
	busiest      float64 // the busiest worker's share of the workers' CPU
	attempts     int     // measured runs (an unbalanced one is measured again)
	load1        float64 // 1-minute load average at the end of the run
}

// pacedCPU is one paced run's CPU readings.
type pacedCPU struct {
	rate                 int
	route                string
	side                 side
	pr                   pacedResult
	logLines             int
	workersPct, schedPct float64 // workers' CPU, % of one core (ticks, schedstat)
	agentPct             float64 // the agent's CPU, % of one core (its threads' schedstat)
	agentTickPct         float64 // the same from utime+stime ticks
	wall                 float64
	bpf                  bpfProgStats // the agent's BPF programs during the run (agent side)
	bpfOK                bool
}

// satResult is the agent under saturating load with BPF run-time accounting on.
type satResult struct {
	done     bool
	load     loadResult
	logLines int
	bpf      bpfProgStats
	bpfOK    bool
	agentPct float64
	wall     float64
}

type bench struct {
	cfg          config
	started      time.Time
	workDir      string
	fx           *target
	scens        []scenario
	tool         loadTool
	rounds       []roundResult
	cpu          []pacedCPU
	idleAgentPct float64 // the agent's CPU with no traffic, % of a core (-1 = not measured)
	sat          satResult
	kong         kongResult
	kongLua      kongLuaResult
	notes        []string
	broken       []string // counting or drop failures: the run fails
	missed       int
	maxLoad      float64
	bpfWarned    bool
	floorNote    string // why there is no floor side ("" = there is)
	agentVersion string
	agentStarts  int
	maxHWM       uint64

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

func (b *bench) fail(format string, args ...any) {
	s := fmt.Sprintf(format, args...)
	b.broken = append(b.broken, s)
	b.logf("FAIL: %s", s)
}

func (b *bench) sides(t *target) []side {
	if t.floor.enabled() {
		return []side{sideNone, sideFloor, sideAgent}
	}
	return []side{sideNone, sideAgent}
}

func (b *bench) run(ctx context.Context) (err error) {
	c := b.cfg
	for _, tool := range []string{"wrk", "h2load", "taskset", "bpftool"} {
		if _, err := execLookPath(tool); err != nil && (tool != "taskset" || c.pin != "") {
			return fmt.Errorf("%s not found (hack/install-deps.sh installs it)", tool)
		}
	}
	if c.pin != "" && runtime.NumCPU() < 2 {
		c.pin = ""
		b.cfg.pin = ""
	}
	b.idleAgentPct = -1
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
		if err == nil && removeWork && len(b.broken) == 0 {
			os.RemoveAll(b.workDir)
			b.workDir = ""
		}
	}()

	ag, _ := os.ReadFile("/proc/self/autogroup")
	b.logf("machine: %s; load average %s; our niceness %d, %s", machineNote(), benchkit.LoadAvg(), benchkit.Niceness(), strings.TrimSpace(string(ag)))
	// Run a private copy: bin/ is shared, and a `make build` elsewhere during the run would
	// otherwise swap the agent between rounds.
	if c.agentBin != "" {
		cp := filepath.Join(b.workDir, "kong-watcher-agent")
		if err := copyFile(c.agentBin, cp); err != nil {
			return fmt.Errorf("copying the agent: %w", err)
		}
		b.agentVersion = agentVersion(cp)
		b.cfg.agentBin = cp
		c.agentBin = cp
	} else {
		b.agentVersion = "none (A/A run)"
		b.note("A/A run (-agent none): the \"agent\" rounds run without the agent; the ratios show the noise floor")
	}
	b.tool = loadTool{pinCPUs: c.pin}

	if strings.TrimSpace(c.scenarios) != "" {
		if err := b.fixtureRuns(ctx); err != nil {
			return err
		}
	}
	if err := b.kongRuns(ctx); err != nil {
		return fmt.Errorf("real Kong: %w", err)
	}

	out := b.report()
	fmt.Print(out.table)
	switch {
	case b.cfg.writeDoc && len(b.broken) == 0:
		if err := benchkit.WriteDocSection(c.docPath, "## Agent", out.doc); err != nil {
			return fmt.Errorf("writing %s: %w", c.docPath, err)
		}
		b.logf("wrote the \"## Agent\" section of %s", c.docPath)
	case b.cfg.writeDoc:
		b.logf("%s not updated: the agent's counting failed", c.docPath)
	default:
		b.logf("%s not updated (make bench-docs, or -write-doc, rewrites its \"## Agent\" section)", c.docPath)
	}
	fmt.Print(out.bench)
	return nil
}

func (b *bench) newAgent(name string, master int) *agentRunner {
	c := b.cfg
	return &agentRunner{bin: c.agentBin, master: master, luaPhases: c.luaPhases, dataPath: c.dataPath,
		logPath: filepath.Join(b.workDir, "agent.log"), readyWait: c.readyWait, label: name}
}

func (b *bench) newFloor(name string, master int) *floorRunner {
	if !b.cfg.floor {
		b.floorNote = "the floor side is off (-floor=false)"
		return nil
	}
	f, err := newFloorRunner(master, filepath.Join(b.workDir, "bpftrace-"+name+".log"))
	if err != nil {
		b.floorNote = err.Error()
		b.note("%s: %v", name, err)
		return nil
	}
	return f
}

// fixtureRuns runs everything on the Kong-like gateway fixture: the throughput round sets,
// the paced CPU runs, the BPF run time at saturation and the drop/accuracy run.
func (b *bench) fixtureRuns(ctx context.Context) (err error) {
	c := b.cfg
	// A private copy of nginx: uprobes are set on a file (its inode), and other tests on this
	// machine attach theirs to /usr/sbin/nginx's ngx_http_free_request; on the same file they
	// would fire in our workers on every side, the "none" one included.
	// The Lua module too: other agents time Lua phases there.
	nginxBin, err := privateCopy(b.workDir, "nginx", "nginx", "/usr/sbin/nginx")
	if err != nil {
		return err
	}
	luaMod, err := privateCopy(b.workDir, filepath.Base(fixture.DefaultLuaModule), "", fixture.DefaultLuaModule)
	if err != nil {
		return err
	}
	ndkMod, err := privateCopy(b.workDir, filepath.Base(fixture.DefaultNDKModule), "", fixture.DefaultNDKModule)
	if err != nil {
		return err
	}
	b.logf("starting the gateway fixture (2 workers; nginx and its Lua and NDK modules copied to %s) in %s", filepath.Dir(nginxBin), b.workDir)
	g, err := fixture.Start(ctx, fixture.Options{Workers: 2, Dir: filepath.Join(b.workDir, "gateway"), Nginx: nginxBin,
		LuaModule: luaMod, NDKModule: ndkMod})
	if err != nil {
		return err
	}
	defer func() {
		if serr := g.Stop(); serr != nil && err == nil {
			err = serr
		}
	}()
	workers, _ := g.WorkerPIDs()
	t := &target{name: "fixture", g: g, agent: b.newAgent("fixture", g.MasterPID()), dur: c.dur,
		poke: poker("http://"+g.HTTPAddr+c.kongRoute, nil)}
	t.floor = b.newFloor("fixture", g.MasterPID())
	b.fx = t
	defer t.agent.stop()
	defer t.floor.stop()
	b.logf("gateway: master %d (%s), workers %v, http %s, https %s; floor: %v", g.MasterPID(), exeOf(g.MasterPID()), workers, g.HTTPAddr, g.HTTPSAddr, t.floor)

	httpURL := "http://" + g.HTTPAddr
	httpsURL := "https://" + g.HTTPSAddr
	all := map[string]scenario{
		"kong_like": {name: "kong_like", slack: 0.02,
			what: fmt.Sprintf("wrk -t%d -c%d, HTTP/1.1 keep-alive, %s (Lua access + header filter, proxy_pass to a keep-alive upstream)", c.wrkThreads, c.wrkConns, c.kongRoute),
			run: func(ctx context.Context, d time.Duration) (loadResult, error) {
				return b.tool.wrk(ctx, httpURL+c.kongRoute, c.wrkThreads, c.wrkConns, d)
			}},
		"return200": {name: "return200",
			what: fmt.Sprintf("wrk -t%d -c%d, HTTP/1.1 keep-alive, %s (`return 200`)", c.wrkThreads, c.wrkConns, c.fastRoute),
			run: func(ctx context.Context, d time.Duration) (loadResult, error) {
				return b.tool.wrk(ctx, httpURL+c.fastRoute, c.wrkThreads, c.wrkConns, d)
			}},
		"tls": {name: "tls", slack: 0.03,
			what: fmt.Sprintf("wrk -t%d -c%d, HTTP/1.1 over TLS keep-alive, %s", c.wrkThreads, c.wrkConns, c.kongRoute),
			run: func(ctx context.Context, d time.Duration) (loadResult, error) {
				return b.tool.wrk(ctx, httpsURL+c.kongRoute, c.wrkThreads, c.wrkConns, d)
			}},
		"http2": {name: "http2", slack: 0.03,
			what: fmt.Sprintf("h2load -t%d -c%d -m%d, HTTP/2 over TLS, %s, batches of %d requests (%d per connection: nginx closes one after 1000)", c.h2Threads, c.h2Conns, c.h2Streams, c.kongRoute, c.h2Conns*h2loadPerConn, h2loadPerConn),
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
	b.scens = scens

	// Prime every path once (Lua code, upstream keep-alive pools, TLS sessions, page cache)
	// so that the first measured round is not the cold one.
	prime := c.warmup
	if !c.quick {
		prime = max(prime, 3*time.Second)
	}
	b.logf("priming: %v of each scenario's load, not measured", prime)
	for _, s := range scens {
		if _, err := s.run(ctx, prime); err != nil {
			return fmt.Errorf("%s (priming): %w", s.name, err)
		}
	}
	for _, s := range scens {
		b.logf("scenario %s: %s", s.name, s.what)
		if err := b.roundSet(ctx, t, s, c.rounds); err != nil {
			return err
		}
	}

	if err := b.cpuRuns(ctx, t); err != nil {
		return fmt.Errorf("CPU measurement: %w", err)
	}
	if err := b.highRuns(ctx, t); err != nil {
		return fmt.Errorf("CPU measurement at %d req/s: %w", c.highRate, err)
	}
	if err := b.satRun(ctx, t, all["kong_like"]); err != nil {
		return fmt.Errorf("BPF run time at saturation: %w", err)
	}
	if err := b.dropRun(ctx, t); err != nil {
		return fmt.Errorf("drop/accuracy run: %w", err)
	}
	t.agent.stop()
	b.collectAgent(t.agent)
	return nil
}

func (b *bench) collectAgent(a *agentRunner) {
	if a == nil {
		return
	}
	b.agentStarts += a.starts
	if a.maxHWM > b.maxHWM {
		b.maxHWM = a.maxHWM
	}
}

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
				switch {
				case rr.counted < 0:
					b.fail("%s %s round %d: the agent's /stats could not be read around the run", t.name, s.name, r+1)
				case rr.counted != int64(rr.logLines) || rr.dropped != 0:
					b.fail("%s %s round %d: the agent counted %d requests and dropped %d events; the access log has %d", t.name, s.name, r+1, rr.counted, rr.dropped, rr.logLines)
				}
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
	if withAgent {
		if err := t.agent.start(ctx, t.poke); err != nil {
			return rr, err
		}
		defer t.agent.stop()
	}
	if sd == sideFloor {
		if err := t.floor.start(ctx); err != nil {
			return rr, err
		}
		defer t.floor.stop()
	}
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
			rr.counted, rr.dropped = -1, -1
			if before.ok && after.ok {
				rr.counted = int64(after.requests) - int64(before.requests)
				rr.dropped = int64(after.dropped) - int64(before.dropped)
			}
		}
		if len(workers) < 2 || rr.busiest <= maxWorkerShare || attempt == maxAttempts {
			break
		}
		b.logf("    %s round %d %s: one worker did %.0f%% of the workers' work (%.0f req/s): measured again", s.name, round+1, sd, 100*rr.busiest, res.RPS)
	}
	rr.logLines, _ = countLines(t.g.AccessLogPath())
	return rr, nil
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
	c := b.cfg
	url := "http://" + t.g.HTTPAddr + route
	conns := b.pacedConns(rate)
	withAgent := sd == sideAgent && t.agent.enabled()
	if withAgent && !t.agent.running() {
		if err := t.agent.start(ctx, t.poke); err != nil {
			return pacedCPU{}, err
		}
		defer t.agent.stop()
	}
	paced(ctx, url, rate, c.warmup, conns)
	os.Truncate(t.g.AccessLogPath(), 0) //nolint:errcheck
	// BPF run-time accounting only around the agent side's measured run: it adds two clock
	// reads per program run.
	var acct *bpfAccounting
	if withAgent {
		acct = b.startBPFAccounting(t.agent.pid())
	}
	workers, _ := t.g.WorkerPIDs()
	w0, a0, at0 := sampleCPU(workers), sampleCPU(pidList(t.agent.pid())), sampleTasks(t.agent.pid())
	pr := paced(ctx, url, rate, dur, conns)
	w1, a1, at1 := sampleCPU(workers), sampleCPU(pidList(t.agent.pid())), sampleTasks(t.agent.pid())
	cr := pacedCPU{rate: rate, route: route, side: sd, pr: pr}
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
		b.note("paced %d req/s %s run: %d of %d requests failed: %v", rate, sd, pr.Failed, pr.Sent, pr.Errs)
	}
	if pr.MaxLag > 100*time.Millisecond {
		b.note("paced %d req/s %s run: the generator fell behind by up to %v", rate, sd, pr.MaxLag.Round(time.Millisecond))
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

// cpuRuns measures the CPU of the workers (and of the agent) at a fixed paced rate, both sides.
func (b *bench) cpuRuns(ctx context.Context, t *target) error {
	c := b.cfg
	b.logf("CPU at a fixed %d req/s: paced open-loop GET %s over %d keep-alive connections, %v per side", c.cpuRate, c.kongRoute, b.pacedConns(c.cpuRate), c.cpuDur)
	for r := 0; r < c.cpuRounds; r++ {
		for _, sd := range order([]side{sideNone, sideAgent}, r) {
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

// privateCopy copies a file of the gateway's into dir/private/name: the command lookPath
// finds in PATH (when not ""), else fallback.
func privateCopy(dir, name, lookPath, fallback string) (string, error) {
	src := fallback
	if lookPath != "" {
		if p, err := execLookPath(lookPath); err == nil {
			src = p
		}
	}
	dst := filepath.Join(dir, "private", name)
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return "", err
	}
	if err := copyFile(src, dst); err != nil {
		return "", fmt.Errorf("copying %s: %w", src, err)
	}
	return dst, nil
}

// maxWorkerShare is the busiest worker's largest share of the workers' CPU in a valid side;
// maxAttempts is how many times a side is measured to get one.
const (
	maxWorkerShare = 0.75
	maxAttempts    = 4
)

// busiestShare is the largest share of one process in the CPU the processes used between two
// samples (schedstat, 0 when unknown).
func busiestShare(a, b cpuSample) float64 {
	var total, top float64
	for p, n1 := range b.nanos {
		if n0, ok := a.nanos[p]; ok && n1 >= n0 {
			d := float64(n1 - n0)
			total += d
			top = max(top, d)
		}
	}
	if total == 0 {
		return 0
	}
	return top / total
}

func uniq(xs []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, x := range xs {
		if !seen[x] {
			seen[x] = true
			out = append(out, x)
		}
	}
	return out
}

func exeOf(pid int) string {
	p, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		return "?"
	}
	return p
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
