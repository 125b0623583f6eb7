// Command benchmanager measures the kong-watcher manager (the cmd/webhook binary) under the
// reports of a fleet of agents: by default 1,000 agents, each POSTing a v1alpha1.Report every
// 30 s, against 2 manager replicas.
//
// Real parts:
//   - a kube-apiserver + etcd (envtest, KUBEBUILDER_ASSETS) with service-account token signing;
//   - what `kubectl kustomize config/default` renders for the manager: its ServiceAccount,
//     ClusterRole, Roles and bindings, and the ValidatingAdmissionPolicies (the manager's PATCHes
//     go through kong-watcher-manager-statistics-only; checked before the run);
//   - Deployments x pods (20 x 50): a ReplicaSet per Deployment owned by it, pods owned by their
//     ReplicaSet, labelled kong-watcher.io/inject, with the agent injected by webhook/inject and
//     a running status written as a kubelet would (no kubelet runs: the pods are objects);
//   - one pod-bound report token per pod from TokenRequest (audience v1alpha1.ReportAudience,
//     boundObjectRef the pod), what the kubelet projects into the agent container;
//   - the managers: 2 processes of the binary built from ./cmd/webhook (-manager), each with
//     its own ports, --disable-cert-rotation and a serving certificate from a CA generated here,
//     a kubeconfig holding a real token of the manager's ServiceAccount, leader election on (the
//     binary's default), POD_NAMESPACE set;
//   - each agent's Stats come from its own agent/aggregate.Aggregator fed synthetic requests
//     (its Deployment's hosts and routes, a status mix, latencies, sampled Lua phases), so the
//     report is the document a real agent sends.
//
// The load: agent i reports at t0 + r*interval + i*interval/n, so the reports are spread evenly
// over the interval, each agent at its own phase. Agent i talks to replica i mod 2, as a
// Service spreads the agents' long-lived keep-alive connections. Real agents each hold one
// keep-alive connection (1,000 TLS connections); here the agents a replica serves share one
// keep-alive pool of -conns connections to it, so the client does not need 1,000 sockets and
// TLS sessions. The idle connections' memory is measured separately (-conn-probe) and
// extrapolated. Round 0 is cold: every token is new to the managers (one TokenReview each) and
// every agent sends its start-up Events (KongDetected, ProbesAttached). The following rounds are
// the steady state: Stats every round, and a TrafficStats Event per agent every 5 minutes
// (the agent's default), phases spread over the fleet.
//
// Measured: the managers' CPU (utime+stime from /proc/<pid>/stat) and memory (VmRSS sampled
// every second, VmHWM), the API server's requests by verb and resource (apiserver_request_total
// from its /metrics, read with administrator credentials) before and after each round, the
// report latency and status as the agents see them. Output ends with `BENCH <name> <value>`
// lines; -doc rewrites the "## Manager: agent reports" section of docs/benchmarks.md. Exit
// status 1 when a steady round saw anything but 200.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	"go.uber.org/zap/zapcore"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
	logf "sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/log/zap"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/hack/internal/benchenv"
	"github.com/kong-watcher/kong-watcher/test/benchkit"
)

type config struct {
	managerBin     string
	agents         int
	deployments    int
	replicas       int
	interval       time.Duration
	duration       time.Duration
	conns          int
	perWindow      int
	startupEvents  bool
	connProbe      int
	idle           time.Duration
	doc            string
	managerVersion string
	keep           bool
	policies       bool
}

func main() {
	var c config
	flag.StringVar(&c.managerBin, "manager", "", "the manager binary (built from ./cmd/webhook; hack/bench-manager.sh builds it)")
	flag.IntVar(&c.agents, "agents", 1000, "simulated agents (= pods)")
	flag.IntVar(&c.deployments, "deployments", 20, "Deployments the pods belong to (agents/deployments pods each)")
	flag.IntVar(&c.replicas, "replicas", 2, "manager processes")
	flag.DurationVar(&c.interval, "interval", 30*time.Second, "the agents' STATS_INTERVAL")
	flag.DurationVar(&c.duration, "duration", 2*time.Minute, "reporting time: the cold round plus the steady rounds (whole intervals; at least 4)")
	flag.IntVar(&c.conns, "conns", 32, "keep-alive connections the load generator keeps per replica (the manager's --report-max-in-flight is 32)")
	flag.IntVar(&c.perWindow, "requests-per-window", 600, "synthetic Kong requests each agent counts per interval (on average)")
	flag.BoolVar(&c.startupEvents, "startup-events", true, "the cold round carries each agent's start-up Events (KongDetected, ProbesAttached)")
	flag.IntVar(&c.connProbe, "conn-probe", -1, "after the run, open this many more keep-alive connections to replica 0 (one report each) and measure what they add to its RSS; -1: agents/replicas, what the real agents' own connections would be; 0: off")
	flag.DurationVar(&c.idle, "idle", 5*time.Second, "measure the managers idle (ready, no reports) for this long first")
	flag.StringVar(&c.doc, "doc", "", "rewrite the \"## Manager: agent reports\" section of this markdown file (only when the run passed)")
	flag.StringVar(&c.managerVersion, "manager-version", "", "the manager's version, for the doc")
	flag.BoolVar(&c.policies, "policies", true, "apply config/default's ValidatingAdmissionPolicies (false: to measure what they cost the API server; the doc is not written)")
	flag.BoolVar(&c.keep, "keep", false, "keep the temporary directory (manager logs, kubeconfig, certificates)")
	flag.Parse()
	logf.SetLogger(zap.New(zap.WriteTo(os.Stderr), zap.Level(zapcore.ErrorLevel), zap.StacktraceLevel(zapcore.PanicLevel)))
	ok, err := run(c)
	if err != nil {
		fmt.Fprintln(os.Stderr, "benchmanager:", err)
		os.Exit(2)
	}
	if !ok {
		os.Exit(1)
	}
}

func run(c config) (bool, error) {
	if err := benchenv.RequireAssets("bench-manager"); err != nil {
		return false, err
	}
	if c.managerBin == "" {
		return false, errors.New("-manager is required (the binary built from ./cmd/webhook)")
	}
	if c.agents%c.deployments != 0 || c.replicas < 1 || c.agents < 1 {
		return false, fmt.Errorf("-agents (%d) must be a multiple of -deployments (%d), -replicas >= 1", c.agents, c.deployments)
	}
	rounds := int(c.duration / c.interval)
	if rounds < 2 {
		return false, fmt.Errorf("-duration %v holds %d interval(s); at least 2 (the cold round and a steady one), 4 for 3 steady rounds", c.duration, rounds)
	}
	if rounds < 4 {
		fmt.Printf("NOTE: %d steady round(s) only (-duration %v); 3 or more are recommended\n", rounds-1, c.duration)
	}
	tStart := time.Now()
	dir, err := os.MkdirTemp("", "kw-bench-manager-")
	if err != nil {
		return false, err
	}
	if c.keep {
		fmt.Println("temporary directory (kept):", dir)
	} else {
		defer os.RemoveAll(dir)
	}

	// The API server.
	env := &envtest.Environment{}
	cfg, err := benchenv.StartAPIServer(env)
	if err != nil {
		return false, err
	}
	defer env.Stop() //nolint:errcheck // best effort at exit
	acfg := rest.CopyConfig(cfg)
	acfg.QPS = -1
	admin, err := kubernetes.NewForConfig(acfg)
	if err != nil {
		return false, err
	}
	cl, err := client.New(acfg, client.Options{})
	if err != nil {
		return false, err
	}
	ctx := context.Background()
	applied, mres, err := applyConfigDefault(ctx, cl, c.policies)
	if err != nil {
		return false, err
	}
	fmt.Printf("applied %d objects of config/default (all but the Deployment, PDB, MutatingWebhookConfiguration)\n", len(applied))

	certDir := dir + "/certs"
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return false, err
	}
	srv, err := newServing(certDir)
	if err != nil {
		return false, err
	}

	t0 := time.Now()
	perDeploy := c.agents / c.deployments
	fl, err := createFleet(ctx, admin, srv.caPEM, c.deployments, perDeploy, 32)
	if err != nil {
		return false, err
	}
	fmt.Printf("created %d Deployments, %d ReplicaSets, %d pods (running status, agent injected; %d bytes each as JSON) and their report tokens in %v\n",
		c.deployments, c.deployments, len(fl.pods), fl.podBytes, time.Since(t0).Round(time.Millisecond))
	// One more pod, owned by nothing, for the sanity checks.
	sanityPod, sanityToken, err := createSanityPod(ctx, admin, srv.caPEM)
	if err != nil {
		return false, err
	}

	mcfg, err := managerKubeconfig(ctx, admin, cfg, dir+"/kubeconfig")
	if err != nil {
		return false, err
	}
	mgrClient, err := kubernetes.NewForConfig(mcfg)
	if err != nil {
		return false, err
	}
	if c.policies {
		if err := checkPolicy(ctx, mgrClient, sanityPod); err != nil {
			return false, err
		}
		fmt.Println("policy kong-watcher-manager-statistics-only in force: the manager identity cannot write a foreign annotation")
	} else {
		fmt.Println("WARNING: -policies=false: no ValidatingAdmissionPolicy applied (not the shipped configuration)")
	}

	// The managers.
	t0 = time.Now()
	var mgrs []*manager
	defer func() {
		for _, m := range mgrs {
			m.stop()
		}
	}()
	for i := range c.replicas {
		m, err := startManager(c.managerBin, dir, dir+"/kubeconfig", certDir, i)
		if err != nil {
			return false, err
		}
		mgrs = append(mgrs, m)
	}
	for _, m := range mgrs {
		if err := m.waitReady(60 * time.Second); err != nil {
			return false, err
		}
	}
	fmt.Printf("%d managers ready in %v (pids", len(mgrs), time.Since(t0).Round(time.Millisecond))
	for _, m := range mgrs {
		fmt.Printf(" %d", m.pid)
	}
	fmt.Println(")")

	var clients []*http.Client
	var urls []string
	for _, m := range mgrs {
		tr, err := newTransport(srv.caPEM, c.conns)
		if err != nil {
			return false, err
		}
		clients = append(clients, &http.Client{Transport: tr, Timeout: 10 * time.Second})
		urls = append(urls, fmt.Sprintf("https://127.0.0.1:%d%s", m.webhookPort, kwv1.ReportPath))
	}

	// The agents.
	t0 = time.Now()
	agents := make([]*simAgent, len(fl.pods))
	routeSets := make([]*routeSet, c.deployments)
	for d := range routeSets {
		routeSets[d] = routeSetFor(d)
	}
	for i, pod := range fl.pods {
		agents[i] = newSimAgent(i, pod, fl.tokens[i], i%c.replicas, routeSets[i/perDeploy], c.perWindow)
	}
	fmt.Printf("%d simulated agents (one Aggregator each) in %v\n", len(agents), time.Since(t0).Round(time.Millisecond))

	// Sanity: the sanity pod's agent reports to every replica; its annotations appear.
	sanity := newSimAgent(len(agents), sanityPod, sanityToken, 0, routeSets[0], c.perWindow)
	sanity.traffic(c.interval, time.Now())
	sanityBody, err := json.Marshal(sanity.report(1, false))
	if err != nil {
		return false, err
	}
	for i := range mgrs {
		status, body, err := post(ctx, clients[i], urls[i], sanityToken, sanityBody)
		if err != nil || status != http.StatusOK {
			return false, fmt.Errorf("sanity report to manager %d: %v %d %s\n%s", i, err, status, firstLine(body), tail(mgrs[i].logPath, 20))
		}
	}
	got, err := admin.CoreV1().Pods(sanityPod.Namespace).Get(ctx, sanityPod.Name, metaGet)
	if err != nil {
		return false, err
	}
	if got.Annotations[kwv1.AnnotationRequests] == "" || got.Annotations[kwv1.AnnotationStats] == "" {
		return false, fmt.Errorf("sanity: the manager answered 200 but pod %s has no statistics annotations", sanityPod.Name)
	}
	fmt.Printf("sanity: a %d-byte report to each manager -> 200, pod annotated (%d statistics annotations, %s %d bytes)\n",
		len(sanityBody), countStatistics(got.Annotations), kwv1.AnnotationStats, len(got.Annotations[kwv1.AnnotationStats]))
	// The sanity pod's token is now cached by both managers; no agent uses it.

	p := procs{managers: mgrs, apiserver: benchkit.ChildrenNamed("kube-apiserver"), etcd: benchkit.ChildrenNamed("etcd")}
	if len(p.apiserver) == 0 || len(p.etcd) == 0 {
		fmt.Println("WARNING: kube-apiserver or etcd process not found among this process's children: their CPU is not reported")
	}
	rctx, stopSampler := context.WithCancel(ctx)
	sampler := &rssSampler{}
	go sampler.run(rctx, mgrs)
	defer stopSampler()

	// Idle managers first.
	idle0 := takeSnapshot(ctx, admin, p)
	time.Sleep(c.idle)
	idle1 := takeSnapshot(ctx, admin, p)

	sched := &schedule{t0: time.Now().Add(time.Second).Truncate(time.Second), interval: c.interval, rounds: rounds,
		urls: urls, clients: clients, startup: c.startupEvents}
	fmt.Printf("reporting: %d agents every %v for %d rounds (round 0 cold, %d steady), %d keep-alive connections per replica at most ...\n",
		len(agents), c.interval, rounds, rounds-1, c.conns)
	snaps := make([]snapshot, rounds+1)
	snapDone := make(chan struct{})
	go func() {
		defer close(snapDone)
		for r := 0; r < rounds; r++ { // snapshot r at the start of round r; the last one after the run
			sleepUntil(ctx, sched.t0.Add(time.Duration(r)*c.interval))
			snaps[r] = takeSnapshot(ctx, admin, p)
			if r > 0 {
				printRoundProgress(r-1, snaps[r-1], snaps[r])
			}
		}
	}()
	sched.run(ctx, agents)
	<-snapDone
	sleepUntil(ctx, sched.t0.Add(time.Duration(rounds)*c.interval))
	time.Sleep(500 * time.Millisecond) // the managers' Event broadcasters write asynchronously
	snaps[rounds] = takeSnapshot(ctx, admin, p)
	printRoundProgress(rounds-1, snaps[rounds-1], snaps[rounds])

	res := analyse(c, sched, snaps, idle0, idle1, sampler, mgrs)
	// What the leader's rollup wrote on a Deployment, if it runs.
	if dep, err := admin.AppsV1().Deployments(kongNamespace).Get(ctx, fl.deployments[0].Name, metaGet); err == nil {
		res.deployPods = dep.Annotations[kwv1.AnnotationPods]
		res.deployRequests = dep.Annotations[kwv1.AnnotationRequests]
		res.deployStatsBytes = len(dep.Annotations[kwv1.AnnotationStats])
	}
	res.podBytes = fl.podBytes
	res.resources = mres
	res.setup = sched.t0.Sub(tStart)
	for _, m := range mgrs {
		if err := readManagerMetrics(m); err != nil {
			fmt.Printf("WARNING: manager %d /metrics: %v\n", m.idx, err)
		}
		// VmHWM can lag VmRSS a little (the kernel folds per-thread RSS counters in lazily): the
		// peak is the larger of it and every sample.
		_, hwm, _ := benchkit.ProcMem(m.pid)
		res.peakRSS = append(res.peakRSS, max(hwm, sampler.peak(m.idx)))
	}

	// The manager's own per-report work, in this process (no TLS, no API server).
	res.inproc = ingestCost(sanityBody, sanityToken, 2000)
	podPath := []string{"/api/v1/namespaces", sanityPod.Namespace, "pods", sanityPod.Name}
	if raw, err := admin.CoreV1().RESTClient().Get().AbsPath(podPath...).DoRaw(ctx); err == nil {
		res.podBytesAfter = len(raw)
	}
	// client-go asks for protobuf: the PATCH returns the pod so.
	if raw, err := admin.CoreV1().RESTClient().Get().AbsPath(podPath...).SetHeader("Accept", "application/vnd.kubernetes.protobuf").DoRaw(ctx); err == nil {
		res.inproc = append(res.inproc, decodePodCost(raw, 1000))
	}

	if c.connProbe < 0 {
		c.connProbe = c.agents / c.replicas
	}
	if c.connProbe > 0 {
		res.probe = connProbe(ctx, mgrs[0], srv.caPEM, urls[0], sanityToken, sanityBody, c.connProbe)
	}
	for _, m := range mgrs {
		if m.exited() {
			res.notes = append(res.notes, fmt.Sprintf("manager %d exited during the run (log %s)", m.idx, m.logPath))
		}
	}
	for _, m := range mgrs {
		if strings.Contains(readFile(m.logPath), "Successfully acquired lease") {
			res.leader = m.idx
		}
	}
	res.loadEnd = benchkit.LoadAvg()
	res.total = time.Since(tStart)
	res.print()
	passed := res.steadyNon200 == 0 && len(res.notes) == 0
	if c.doc != "" {
		if passed && c.policies {
			if err := benchkit.WriteDocSection(c.doc, docHeading, res.markdown()); err != nil {
				return false, err
			}
			fmt.Printf("wrote the %q section of %s\n", docHeading, c.doc)
		} else {
			fmt.Printf("NOT writing %s: the run did not pass\n", c.doc)
		}
	}
	res.printBench()
	if !passed {
		fmt.Printf("FAIL: %d reports in steady rounds were answered with something other than 200 (%s)\n", res.steadyNon200, res.steadyStatuses())
		for _, m := range mgrs {
			fmt.Printf("--- manager %d log tail (%s)\n%s\n", m.idx, m.logPath, tail(m.logPath, 15))
		}
	}
	return passed, nil
}

func readFile(path string) string {
	b, _ := os.ReadFile(path)
	return string(b)
}

func countStatistics(ann map[string]string) int {
	n := 0
	for _, k := range kwv1.ReportedAnnotations {
		if _, ok := ann[k]; ok {
			n++
		}
	}
	return n
}

// printRoundProgress prints round r's window (snapshots a and b) as it ends.
func printRoundProgress(r int, a, b snapshot) {
	w := newWindow(fmt.Sprintf("round %d", r), a, b, 0)
	fmt.Printf("  round %d: managers %s cores, API server %.2f, etcd %.2f, load generator %.2f; PATCH pods %.0f, TokenReviews %.0f, Events %.0f; load %s\n",
		r, strings.Join(w.mgrCores(), " + "), w.cores(w.apiCPU), w.cores(w.etcdCPU), w.cores(w.genCPU),
		w.api[keyPatchPods], w.api[keyTokenReview], eventWrites(w.api), b.loadavg)
}

func eventWrites(d map[metricKey]float64) float64 {
	var n float64
	for k, v := range d {
		if k.resource == "events" && isWrite(k) {
			n += v
		}
	}
	return n
}

func sortedKeys(m map[metricKey]float64) []metricKey {
	keys := make([]metricKey, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if m[keys[i]] != m[keys[j]] {
			return m[keys[i]] > m[keys[j]]
		}
		return keys[i].String() < keys[j].String()
	})
	return keys
}
