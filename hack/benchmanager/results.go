package main

import (
	"context"
	"fmt"
	"net/http"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/scheme"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/test/benchkit"
	"github.com/kong-watcher/kong-watcher/webhook/ingest"
)

var metaGet = metav1.GetOptions{}

// phase is the agents' view of a set of rounds.
type phase struct {
	name        string
	rounds      []int
	reports     int // scheduled
	ok          int // answered 200 in the end
	attempts    int
	statuses    map[int]int // by attempt; 0: no HTTP answer
	firstErr    map[int]string
	lat         []time.Duration // per report: first attempt's start to the last answer, sorted
	bytesSum    int
	eventsAsked int // Events carried by reports answered 200
	lateMax     time.Duration
	late10ms    int
}

func (p *phase) pct(q float64) time.Duration { return benchkit.Percentile(p.lat, q) }

func (p *phase) non200() int {
	n := 0
	for st, c := range p.statuses {
		if st != http.StatusOK {
			n += c
		}
	}
	return n
}

// otherStatuses is statusString when some answer was not a 200, else none: the "other"
// column of the per-round tables.
func (p *phase) otherStatuses(none string) string {
	if p.non200() == 0 {
		return none
	}
	return p.statusString()
}

func (p *phase) statusString() string {
	codes := make([]int, 0, len(p.statuses))
	for st := range p.statuses {
		codes = append(codes, st)
	}
	slices.Sort(codes)
	var parts []string
	for _, st := range codes {
		name := strconv.Itoa(st)
		if st == 0 {
			name = "no answer"
		}
		parts = append(parts, fmt.Sprintf("%s x%d", name, p.statuses[st]))
	}
	return strings.Join(parts, ", ")
}

func newPhase(name string, s *schedule, rounds []int) *phase {
	p := &phase{name: name, rounds: rounds, statuses: map[int]int{}, firstErr: map[int]string{}}
	for _, r := range rounds {
		for _, atts := range s.results[r] {
			p.reports++
			if len(atts) == 0 {
				continue
			}
			p.attempts += len(atts)
			for _, a := range atts {
				p.statuses[a.status]++
				if a.status != http.StatusOK && p.firstErr[a.status] == "" {
					p.firstErr[a.status] = a.err
				}
			}
			first, last := atts[0], atts[len(atts)-1]
			p.lateMax = max(p.lateMax, first.late)
			if first.late > 10*time.Millisecond {
				p.late10ms++
			}
			if last.status == http.StatusOK {
				p.ok++
				p.bytesSum += last.bytes
				p.eventsAsked += last.events
				p.lat = append(p.lat, last.start.Add(last.latency).Sub(first.start))
			}
		}
	}
	slices.Sort(p.lat)
	return p
}

// window is what the managers and the API server did between two snapshots.
type window struct {
	name    string
	wall    time.Duration
	mgrCPU  []time.Duration
	apiCPU  time.Duration
	etcdCPU time.Duration
	genCPU  time.Duration
	api     map[metricKey]float64
	a, b    snapshot
	reports int // reports answered 200 in it
}

func newWindow(name string, a, b snapshot, reports int) *window {
	w := &window{name: name, wall: b.at.Sub(a.at), apiCPU: b.apiCPU - a.apiCPU, etcdCPU: b.etcdCPU - a.etcdCPU,
		genCPU: b.genCPU - a.genCPU, api: b.api.delta(a.api), a: a, b: b, reports: reports}
	for i := range a.mgrCPU {
		w.mgrCPU = append(w.mgrCPU, b.mgrCPU[i]-a.mgrCPU[i])
	}
	return w
}

func (w *window) cores(d time.Duration) float64 { return d.Seconds() / w.wall.Seconds() }

// mgrCores is each manager's CPU in w, in cores with 3 decimals, for the per-round lines.
func (w *window) mgrCores() []string {
	out := make([]string, 0, len(w.mgrCPU))
	for _, c := range w.mgrCPU {
		out = append(out, fmt.Sprintf("%.3f", w.cores(c)))
	}
	return out
}
func (w *window) mgrTotal() time.Duration {
	var t time.Duration
	for _, c := range w.mgrCPU {
		t += c
	}
	return t
}
func (w *window) perReport(d time.Duration) time.Duration {
	if w.reports == 0 {
		return 0
	}
	return d / time.Duration(w.reports)
}

// netPerReport is d (CPU in w) less what the process used idle at idleCores, per report.
func (w *window) netPerReport(d time.Duration, idleCores float64) time.Duration {
	if w.reports == 0 {
		return 0
	}
	net := d - time.Duration(idleCores*float64(w.wall))
	return max(net, 0) / time.Duration(w.reports)
}

func (w *window) rate(k metricKey) float64 { return w.api[k] / w.wall.Seconds() }
func (w *window) writes() float64 {
	var n float64
	for k, v := range w.api {
		if isWrite(k) {
			n += v
		}
	}
	return n
}

var (
	keyPatchPods   = metricKey{"PATCH", "", "pods", ""}
	keyPatchDeploy = metricKey{"PATCH", "apps", "deployments", ""}
	keyTokenReview = metricKey{"POST", "authentication.k8s.io", "tokenreviews", ""}
)

type inprocCost struct {
	name   string
	ns     float64
	allocs int64
	bytes  int64
}

type probeResult struct {
	conns            int
	cpu              time.Duration // the replica's CPU for the probe: n TLS handshakes and n reports
	rssBefore        uint64
	rssAfter         uint64
	heapBefore       float64
	heapAfter        float64
	goroutinesBefore float64
	goroutinesAfter  float64
	err              string
}

type results struct {
	c         config
	date      string
	cpus      int
	agents    int
	rounds    int
	cold      *phase
	steady    *phase
	perRound  []*phase
	coldW     *window
	steadyW   *window
	roundW    []*window
	idleW     *window
	steadyRSS [][2]uint64 // per manager: max, mean VmRSS in the steady window
	coldRSS   []uint64    // per manager: VmRSS at the end of the cold round
	peakRSS   []uint64    // per manager: VmHWM at the end
	mgrs      []*manager
	inproc    []inprocCost
	probe     *probeResult
	notes     []string
	loadStart string
	loadEnd   string
	podBytes  int
	// podBytesAfter is the size of a pod as JSON with its statistics annotations.
	podBytesAfter int
	setup         time.Duration
	total         time.Duration
	nice          int
	managerBin    string
	leader        int // the replica that held the lease (-1: none seen)
	resources     managerResources
	// What the rollup wrote on the first Deployment (empty: nothing).
	deployPods, deployRequests string
	deployStatsBytes           int

	steadyNon200 int
}

func analyse(c config, s *schedule, snaps []snapshot, idle0, idle1 snapshot, sampler *rssSampler, mgrs []*manager) *results {
	r := &results{c: c, date: time.Now().UTC().Format("2006-01-02 15:04 UTC"), cpus: runtime.NumCPU(), agents: len(s.results[0]),
		rounds: s.rounds, mgrs: mgrs, leader: -1, loadStart: snaps[0].loadavg, nice: benchkit.Niceness(), managerBin: c.managerBin}
	var steadyRounds []int
	for i := 1; i < s.rounds; i++ {
		steadyRounds = append(steadyRounds, i)
	}
	r.cold = newPhase("cold (round 0)", s, []int{0})
	r.steady = newPhase(fmt.Sprintf("steady (rounds 1-%d)", s.rounds-1), s, steadyRounds)
	r.steadyNon200 = r.steady.non200()
	for i := range s.rounds {
		p := newPhase(fmt.Sprintf("round %d", i), s, []int{i})
		r.perRound = append(r.perRound, p)
		r.roundW = append(r.roundW, newWindow(p.name, snaps[i], snaps[i+1], p.ok))
	}
	r.coldW = r.roundW[0]
	r.steadyW = newWindow("steady", snaps[1], snaps[s.rounds], r.steady.ok)
	r.idleW = newWindow("idle", idle0, idle1, 0)
	for i := range mgrs {
		mx, mean := sampler.window(i, snaps[1].at, snaps[s.rounds].at)
		r.steadyRSS = append(r.steadyRSS, [2]uint64{mx, mean})
		r.coldRSS = append(r.coldRSS, snaps[1].mgrRSS[i])
	}
	for _, sn := range snaps {
		if sn.api.readErr != nil {
			r.notes = append(r.notes, "reading the API server's /metrics failed: "+sn.api.readErr.Error())
			break
		}
	}
	return r
}

// ingestCost runs the manager's per-report work that needs no network in this process:
// webhook/ingest's token pre-check (done for every report, cached or not), decoding and
// validating the report, building the pod's merge patch. CPU is this thread's own (RUSAGE_THREAD),
// so other processes on a busy machine do not inflate it; allocations from the Go runtime.
func ingestCost(body []byte, token string, n int) []inprocCost {
	rep, err := ingest.DecodeReport(body)
	if err != nil {
		return nil
	}
	return []inprocCost{
		measureCost("token pre-check (ingest.Precheck: JWT parse, claims)", n, func() {
			if _, err := ingest.Precheck(token, kwv1.ReportAudience, time.Now()); err != nil {
				panic(err)
			}
		}),
		measureCost("decode + validate the report (ingest.DecodeReport)", n, func() {
			if _, err := ingest.DecodeReport(body); err != nil {
				panic(err)
			}
		}),
		measureCost("  of which the checks (ingest.ValidateReport)", n, func() {
			if err := ingest.ValidateReport(rep); err != nil {
				panic(err)
			}
		}),
		measureCost("build the pod's merge patch (ingest.PodPatch: annotations, stats JSON)", n, func() {
			patchSink = ingest.PodPatch("0b5c5a3e-1111-2222-3333-444455556666", *rep.Stats, 0)
		}),
	}
}

// patchSink keeps the compiler from dropping the PodPatch calls measured.
var patchSink []byte

// decodePodCost is client-go decoding the pod a PATCH returns (protobuf), per report.
func decodePodCost(raw []byte, n int) inprocCost {
	dec := scheme.Codecs.UniversalDeserializer()
	return measureCost(fmt.Sprintf("decode the PATCH response (the pod, %d bytes of protobuf, client-go)", len(raw)), n, func() {
		var pod corev1.Pod
		if _, _, err := dec.Decode(raw, nil, &pod); err != nil {
			panic(err)
		}
	})
}

// measureCost runs f n times on one locked OS thread and returns its CPU time and
// allocations per call (after a warm-up).
func measureCost(name string, n int, f func()) inprocCost {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	for range 20 {
		f()
	}
	var ms0, ms1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&ms0)
	c0 := benchkit.ThreadCPU()
	for range n {
		f()
	}
	c1 := benchkit.ThreadCPU()
	runtime.ReadMemStats(&ms1)
	return inprocCost{name: name, ns: float64(c1-c0) / float64(n), allocs: int64(ms1.Mallocs-ms0.Mallocs) / int64(n),
		bytes: int64(ms1.TotalAlloc-ms0.TotalAlloc) / int64(n)}
}

// connProbe opens n more keep-alive connections to m, sends one report on each (so the
// server's per-connection buffers have seen a real report), leaves them idle, and reads m's
// RSS and Go heap before and after: what a real fleet's one-connection-per-agent costs.
func connProbe(ctx context.Context, m *manager, caPEM []byte, url, token string, body []byte, n int) *probeResult {
	pr := &probeResult{conns: n}
	_ = readManagerMetrics(m)
	pr.heapBefore, pr.goroutinesBefore = m.heapInuse, m.goroutines
	pr.rssBefore, _, _ = benchkit.ProcMem(m.pid)
	cpu0, _ := benchkit.ProcCPU(m.pid)
	var trs []*http.Transport
	sem := make(chan struct{}, 8)
	var wg sync.WaitGroup
	var mu sync.Mutex
	for range n {
		tr, err := newTransport(caPEM, 1)
		if err != nil {
			pr.err = err.Error()
			return pr
		}
		tr.TLSClientConfig = tr.TLSClientConfig.Clone()
		tr.TLSClientConfig.ClientSessionCache = nil
		trs = append(trs, tr)
		hc := &http.Client{Transport: tr, Timeout: 10 * time.Second}
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			status, _, err := post(ctx, hc, url, token, body)
			if err != nil || status != http.StatusOK {
				mu.Lock()
				if pr.err == "" {
					pr.err = fmt.Sprintf("status %d %v", status, err)
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	cpu1, _ := benchkit.ProcCPU(m.pid)
	pr.cpu = cpu1 - cpu0
	time.Sleep(3 * time.Second)
	pr.rssAfter, _, _ = benchkit.ProcMem(m.pid)
	_ = readManagerMetrics(m)
	pr.heapAfter, pr.goroutinesAfter = m.heapInuse, m.goroutines
	for _, tr := range trs {
		tr.CloseIdleConnections()
	}
	return pr
}

func (r *results) maxSteadyRSS() uint64 {
	var m uint64
	for _, x := range r.steadyRSS {
		m = max(m, x[0])
	}
	return m
}

func (r *results) maxPeakRSS() uint64 {
	var m uint64
	for _, x := range r.peakRSS {
		m = max(m, x)
	}
	return m
}

func (r *results) steadyStatuses() string { return r.steady.statusString() }

// modelTokenReviews is the steady TokenReview rate of a fleet whose agents started at
// different times: each replica reviews each of its agents' tokens again when its cache entry
// ages out (ingest.DefaultAuthOptions: 10 minutes) and when the kubelet rotates the token
// (at 80% of its 1 h lifetime, every 48 minutes); the run is shorter than both.
func (r *results) modelTokenReviews() float64 {
	maxAge := ingest.DefaultAuthOptions(kwv1.ReportAudience).MaxCacheAge.Seconds()
	rotate := 0.8 * float64(tokenTTL)
	return float64(r.agents) * (1/maxAge + 1/rotate)
}

func (r *results) print() {
	fmt.Printf("\n== %d agents every %v, %d manager replicas; %d rounds (%v), load average %s -> %s\n",
		r.agents, r.c.interval, len(r.mgrs), r.rounds, time.Duration(r.rounds)*r.c.interval, r.loadStart, r.loadEnd)
	fmt.Printf("\nper round (reports are scheduled by round; the CPU and API windows run from one round's start to the next):\n")
	fmt.Printf("  %-8s %7s %6s %-24s %8s %8s %8s  %-16s %8s %8s %8s %7s %7s %7s\n", "round", "reports", "200", "other", "p50 ms", "p99 ms", "max ms",
		"manager cores", "us/rep", "api", "etcd", "PATCH", "TokRev", "Events")
	for i, p := range r.perRound {
		w := r.roundW[i]
		fmt.Printf("  %-8d %7d %6d %-24s %8.2f %8.2f %8.2f  %-16s %8.0f %8.2f %8.2f %7.0f %7.0f %7.0f\n", i, p.reports, p.ok, p.otherStatuses("-"),
			benchkit.Millis(p.pct(.5)), benchkit.Millis(p.pct(.99)), benchkit.Millis(p.pct(1)), strings.Join(w.mgrCores(), "+"), benchkit.Micros(w.perReport(w.mgrTotal())), w.cores(w.apiCPU), w.cores(w.etcdCPU),
			w.api[keyPatchPods], w.api[keyTokenReview], eventWrites(w.api))
	}
	for _, ph := range []*phase{r.cold, r.steady} {
		fmt.Printf("\n%s: %d reports, %d answered 200, statuses %s; latency p50 %.2f ms p90 %.2f ms p99 %.2f ms max %.2f ms; %.0f bytes per report; %d Events carried; load generator late >10ms %d (max %.1f ms)\n",
			ph.name, ph.reports, ph.ok, ph.statusString(), benchkit.Millis(ph.pct(.5)), benchkit.Millis(ph.pct(.9)), benchkit.Millis(ph.pct(.99)), benchkit.Millis(ph.pct(1)),
			float64(ph.bytesSum)/float64(max(ph.ok, 1)), ph.eventsAsked, ph.late10ms, benchkit.Millis(ph.lateMax))
		for st, e := range ph.firstErr {
			fmt.Printf("  first %d: %s\n", st, e)
		}
	}
	w := r.steadyW
	fmt.Printf("\nsteady window %.1f s, %d reports accepted (%.1f/s):\n", w.wall.Seconds(), w.reports, float64(w.reports)/w.wall.Seconds())
	for i, c := range w.mgrCPU {
		fmt.Printf("  manager %d: %.3f cores (idle before the run: %.3f), RSS steady max %.1f MiB mean %.1f MiB, after the cold round %.1f MiB, peak (VmHWM) %.1f MiB; reports_total %v; heap in use %.1f MiB, goroutines %.0f, open fds %.0f\n",
			i, w.cores(c), r.idleW.cores(r.idleW.mgrCPU[i]), benchkit.MiB(r.steadyRSS[i][0]), benchkit.MiB(r.steadyRSS[i][1]), benchkit.MiB(r.coldRSS[i]), benchkit.MiB(r.peakRSS[i]),
			r.mgrs[i].reportsTotal, r.mgrs[i].heapInuse/(1<<20), r.mgrs[i].goroutines, r.mgrs[i].openFDs)
	}
	fmt.Printf("  managers together: %.3f cores, %.0f us CPU per report (cold round: %.0f us)\n", w.cores(w.mgrTotal()), benchkit.Micros(w.perReport(w.mgrTotal())),
		benchkit.Micros(r.coldW.perReport(r.coldW.mgrTotal())))
	fmt.Printf("  API server %.3f cores (idle %.3f; %.0f us per report above idle), etcd %.3f cores (idle %.3f; %.0f us per report), load generator %.3f cores\n",
		w.cores(w.apiCPU), r.idleW.cores(r.idleW.apiCPU), benchkit.Micros(w.netPerReport(w.apiCPU, r.idleW.cores(r.idleW.apiCPU))),
		w.cores(w.etcdCPU), r.idleW.cores(r.idleW.etcdCPU), benchkit.Micros(w.netPerReport(w.etcdCPU, r.idleW.cores(r.idleW.etcdCPU))), w.cores(w.genCPU))
	fmt.Printf("  API server writes %.2f/s: PATCH pods %.2f/s (mean %.1f ms in the API server), PATCH deployments %.2f/s, Events %.2f/s; TokenReviews %.2f/s (cold round %.2f/s, mean %.1f ms); modelled steady TokenReviews %.2f/s\n",
		w.writes()/w.wall.Seconds(), w.rate(keyPatchPods), benchkit.Millis(w.b.api.meanLatency(w.a.api, keyPatchPods)), w.rate(keyPatchDeploy),
		eventWrites(w.api)/w.wall.Seconds(), w.rate(keyTokenReview), r.coldW.rate(keyTokenReview),
		benchkit.Millis(r.coldW.b.api.meanLatency(r.coldW.a.api, keyTokenReview)), r.modelTokenReviews())
	fmt.Printf("  every API request in the steady window (per second):\n")
	for _, k := range sortedKeys(w.api) {
		codes := w.b.api.codesDelta(w.a.api, k)
		fmt.Printf("    %-50s %8.2f  %v\n", k.String(), w.api[k]/w.wall.Seconds(), codes)
	}
	fmt.Printf("  cold round API requests:")
	for _, k := range sortedKeys(r.coldW.api) {
		fmt.Printf(" %s=%.0f", k.String(), r.coldW.api[k])
	}
	fmt.Println()
	fmt.Printf("\nthe manager's per-report work in-process (no TLS, no API server):\n")
	for _, c := range r.inproc {
		fmt.Printf("  %-80s %8.1f us %6d allocs %8d bytes\n", c.name, c.ns/1000, c.allocs, c.bytes)
	}
	if pr := r.probe; pr != nil {
		fmt.Printf("\n%d more keep-alive connections to manager 0 (one report each, then idle): CPU %.0f us per new connection and its report, RSS %.1f -> %.1f MiB (%.1f KiB per connection), heap in use %.1f -> %.1f MiB, goroutines %.0f -> %.0f%s\n",
			pr.conns, benchkit.Micros(pr.cpu/time.Duration(max(pr.conns, 1))), benchkit.MiB(pr.rssBefore), benchkit.MiB(pr.rssAfter), perConnKiB(pr), pr.heapBefore/(1<<20), pr.heapAfter/(1<<20), pr.goroutinesBefore, pr.goroutinesAfter,
			map[bool]string{true: " (error: " + pr.err + ")", false: ""}[pr.err != ""])
	}
	if r.deployPods != "" || r.deployRequests != "" {
		fmt.Printf("\nthe rollup on Deployment kong-gw-00: %s=%q, %s=%q, %s %d bytes (leader: manager %d)\n", kwv1.AnnotationPods, r.deployPods,
			kwv1.AnnotationRequests, r.deployRequests, kwv1.AnnotationStats, r.deployStatsBytes, r.leader)
	} else {
		fmt.Printf("\nno statistics annotations on Deployment kong-gw-00: no rollup ran (leader: manager %d)\n", r.leader)
	}
	for _, n := range r.notes {
		fmt.Println("NOTE:", n)
	}
	fmt.Printf("\nsetup %v, total %v\n", r.setup.Round(time.Second), r.total.Round(time.Second))
}

func perConnKiB(pr *probeResult) float64 {
	if pr.conns == 0 || pr.rssAfter < pr.rssBefore {
		return 0
	}
	return float64(pr.rssAfter-pr.rssBefore) / 1024 / float64(pr.conns)
}

func (r *results) printBench() {
	w := r.steadyW
	fmt.Printf("BENCH manager_agents %d\n", r.agents)
	fmt.Printf("BENCH manager_replicas %d\n", len(r.mgrs))
	fmt.Printf("BENCH manager_reports_per_second %.2f\n", float64(w.reports)/w.wall.Seconds())
	fmt.Printf("BENCH manager_cpu_cores %.4f\n", w.cores(w.mgrTotal()))
	fmt.Printf("BENCH manager_cpu_cores_max_replica %.4f\n", maxCores(w))
	fmt.Printf("BENCH manager_cpu_us_per_report %.0f\n", benchkit.Micros(w.perReport(w.mgrTotal())))
	fmt.Printf("BENCH manager_cold_cpu_us_per_report %.0f\n", benchkit.Micros(r.coldW.perReport(r.coldW.mgrTotal())))
	fmt.Printf("BENCH manager_rss_mib %.1f\n", benchkit.MiB(r.maxSteadyRSS()))
	fmt.Printf("BENCH manager_rss_peak_mib %.1f\n", benchkit.MiB(r.maxPeakRSS()))
	if r.probe != nil {
		fmt.Printf("BENCH manager_rss_kib_per_connection %.1f\n", perConnKiB(r.probe))
	}
	fmt.Printf("BENCH apiserver_writes_per_second %.2f\n", w.writes()/w.wall.Seconds())
	fmt.Printf("BENCH apiserver_pod_patches_per_second %.2f\n", w.rate(keyPatchPods))
	fmt.Printf("BENCH apiserver_deployment_patches_per_second %.2f\n", w.rate(keyPatchDeploy))
	fmt.Printf("BENCH apiserver_event_writes_per_second %.2f\n", eventWrites(w.api)/w.wall.Seconds())
	fmt.Printf("BENCH apiserver_cpu_us_per_report %.0f\n", benchkit.Micros(w.netPerReport(w.apiCPU, r.idleW.cores(r.idleW.apiCPU))))
	fmt.Printf("BENCH etcd_cpu_us_per_report %.0f\n", benchkit.Micros(w.netPerReport(w.etcdCPU, r.idleW.cores(r.idleW.etcdCPU))))
	fmt.Printf("BENCH tokenreviews_per_second %.2f\n", w.rate(keyTokenReview))
	fmt.Printf("BENCH tokenreviews_cold_round_per_second %.2f\n", r.coldW.rate(keyTokenReview))
	fmt.Printf("BENCH tokenreviews_modelled_steady_per_second %.2f\n", r.modelTokenReviews())
	fmt.Printf("BENCH report_bytes %.0f\n", float64(r.steady.bytesSum)/float64(max(r.steady.ok, 1)))
	fmt.Printf("BENCH report_p50_ms %.2f\n", benchkit.Millis(r.steady.pct(.5)))
	fmt.Printf("BENCH report_p99_ms %.2f\n", benchkit.Millis(r.steady.pct(.99)))
	fmt.Printf("BENCH report_cold_p99_ms %.2f\n", benchkit.Millis(r.cold.pct(.99)))
	fmt.Printf("BENCH reports_non_200_steady %d\n", r.steadyNon200)
	fmt.Printf("BENCH reports_non_200_cold %d\n", r.cold.non200())
}

func maxCores(w *window) float64 {
	var m float64
	for _, c := range w.mgrCPU {
		m = max(m, w.cores(c))
	}
	return m
}

const docHeading = "## Manager: agent reports"

func sortedCodes(m map[string]float64) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}
