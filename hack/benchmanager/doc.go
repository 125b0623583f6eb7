package main

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/api/resource"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/test/benchkit"
)

// markdown is the "## Manager: agent reports" section of docs/benchmarks.md.
func (r *results) markdown() string {
	var b strings.Builder
	p := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w, cw := r.steadyW, r.coldW
	nm := len(r.mgrs)
	perSec := float64(w.reports) / w.wall.Seconds()
	rollup := w.rate(keyPatchDeploy) > 0
	ver := r.c.managerVersion
	if ver == "" {
		ver = "unknown"
	}

	p("%s\n\n", docHeading)
	p("What the manager (the `cmd/webhook` binary, %d replicas behind a Service) costs when every agent\n", nm)
	p("reports to it: %d agents, one per Kong pod, each POSTing a `v1alpha1.Report` every %v to\n", r.agents, r.c.interval)
	p("`%s`, authenticated by its pod-bound projected token (audience `%s`), which the\n", kwv1.ReportPath, kwv1.ReportAudience)
	p("manager verifies with a cached TokenReview before it merge-patches the pod's statistics annotations\n")
	p("and records the Events the agent asks for.\n\n")
	p("Command: `make bench-manager` prints the figures; `make bench-manager-docs` also rewrites this\n")
	p("section, only after a passing run (hack/bench-manager.sh -> hack/benchmanager; niceness %d in its own\n", r.nice)
	p("scheduler autogroup). `go test -bench . ./hack/benchmanager` runs the in-process steps alone.\n")
	p("Run: %s, manager `%s`, %d CPUs, load average %s at the start and %s at the end (a VM shared\n", r.date, ver, r.cpus, r.loadStart, r.loadEnd)
	p("with other builds and tests: latency and CPU time both grow when the load exceeds the CPU count).\n\n")

	p("Setup, all on this machine:\n\n")
	p("- a real kube-apiserver + etcd (envtest, `hack/k8s-binaries.sh`) with service-account token signing;\n")
	p("  `kubectl kustomize config/default` applied except the manager's Deployment, PDB and webhook\n")
	p("  configuration: the manager's ServiceAccount, ClusterRole, Roles, bindings and the\n")
	p("  ValidatingAdmissionPolicies (every PATCH below passes `kong-watcher-manager-statistics-only`; the run\n")
	p("  first checks that it refuses the manager a foreign annotation);\n")
	p("- %d Deployments x %d pods: a ReplicaSet per Deployment (owned by it), pods owned by their\n", r.c.deployments, r.agents/r.c.deployments)
	p("  ReplicaSet, labelled `kong-watcher.io/inject: \"true\"`, with the agent injected by `webhook/inject`,\n")
	p("  the statuses a kubelet and the controllers would write (none runs): %d bytes of JSON per pod before its\n", r.podBytes)
	p("  statistics annotations, %d after; one token per pod from TokenRequest (audience as above, bound to\n", r.podBytesAfter)
	p("  the pod's name and UID), as the kubelet projects it;\n")
	p("- %d manager processes of the binary as `make build` builds it, each with its own ports,\n", nm)
	p("  `--disable-cert-rotation` and a serving certificate (RSA 2048, as the rotator issues) from a CA the\n")
	p("  agents trust, a kubeconfig with a TokenRequest token of the manager's ServiceAccount (so RBAC and the\n")
	p("  policies see the product's identity), leader election on (the default; replica %d held the lease),\n", r.leader)
	p("  POD_NAMESPACE set, everything else default;\n")
	p("- the agents, in the load generator: each has its own `agent/aggregate.Aggregator` fed about %d\n", r.c.perWindow)
	p("  synthetic requests per interval (its Deployment's 2-6 hosts and 8-30 routes, a status mix,\n")
	p("  log-normal upstream latencies, sampled Lua phases), so a report is the document an agent sends: %.0f\n", float64(r.steady.bytesSum)/float64(max(r.steady.ok, 1)))
	p("  bytes on average, latency histograms included. Agent i reports at t0 + round x %v + (i + 1/2) x %v / %d,\n", r.c.interval, r.c.interval, r.agents)
	p("  spread evenly over the interval, to replica i mod %d (a Service spreads the agents' long-lived\n", nm)
	p("  connections). A real agent keeps one connection of its own (%d per replica); here the agents of a\n", r.agents/nm)
	p("  replica share one keep-alive pool of at most %d connections, so the load generator does not need\n", r.c.conns)
	p("  %d sockets and TLS sessions; what the real connections add is measured apart (below). A failed report\n", r.agents)
	p("  is retried as the agent does (backoff from 1 s); latency is the agent's: request sent to answer read;\n")
	p("- round 0 is cold: every token is new to the managers (one TokenReview each) and every agent sends its\n")
	p("  start-up Events (KongDetected, ProbesAttached), as when the whole fleet rolls out. Rounds 1-%d are\n", r.rounds-1)
	p("  the steady state: Stats every round and a TrafficStats Event per agent every 5 minutes (the agent's\n")
	p("  default), phases spread over the fleet (a tenth of the agents per round).\n\n")
	p("CPU is utime+stime from `/proc/<pid>/stat` of each process; RSS is VmRSS sampled every second and\n")
	p("VmHWM (the peak) from `/proc/<pid>/status`; API-server requests are `apiserver_request_total` from\n")
	p("its `/metrics` (read as the administrator) at each round boundary.\n\n")

	role := func(i int) string {
		if i == r.leader {
			if rollup {
				return "leader, runs the rollup"
			}
			return "leader"
		}
		return "follower"
	}
	p("| steady state (rounds 1-%d, %.0f s) | value |\n|---|---|\n", r.rounds-1, w.wall.Seconds())
	p("| reports accepted | %.1f/s (%d agents every %v) |\n", perSec, r.agents, r.c.interval)
	var perRep []string
	for i, c := range w.mgrCPU {
		perRep = append(perRep, fmt.Sprintf("%.3f (%s)", w.cores(c), role(i)))
	}
	p("| manager CPU | **%.3f cores** for both: %s; idle before the run %.3f |\n", w.cores(w.mgrTotal()), strings.Join(perRep, " + "),
		r.idleW.cores(r.idleW.mgrTotal()))
	p("| manager CPU per report | **%.0f us** (cold round: %.0f us) |\n", benchkit.Micros(w.perReport(w.mgrTotal())), benchkit.Micros(cw.perReport(cw.mgrTotal())))
	var rss, peak []string
	for i := range r.mgrs {
		rss = append(rss, fmt.Sprintf("%.1f (%s)", benchkit.MiB(r.steadyRSS[i][0]), role(i)))
		peak = append(peak, fmt.Sprintf("%.1f", benchkit.MiB(r.peakRSS[i])))
	}
	p("| manager RSS, steady (largest sample) | **%s MiB** |\n", strings.Join(rss, ", "))
	p("| manager RSS, peak (VmHWM, cold round included) | %s MiB |\n", strings.Join(peak, ", "))
	kib := 0.0
	if pr := r.probe; pr != nil && pr.err == "" {
		kib = perConnKiB(pr)
		p("| + the agents' own keep-alive connections | %.0f KiB each: after the run, %d more connections to replica 0 (%s), one report each, then idle: RSS %.1f -> %.1f MiB, goroutines %.0f -> %.0f; **about %.0f MiB per replica** for %d agents each |\n",
			kib, pr.conns, role(0), benchkit.MiB(pr.rssBefore), benchkit.MiB(pr.rssAfter), pr.goroutinesBefore, pr.goroutinesAfter, kib*float64(r.agents/nm)/1024, r.agents/nm)
	}
	p("| API-server writes | **%.2f/s**: PATCH pods %.2f/s, PATCH deployments %.2f/s, Events %.2f/s (create and patch), the rest leases |\n",
		w.writes()/w.wall.Seconds(), w.rate(keyPatchPods), w.rate(keyPatchDeploy), eventWrites(w.api)/w.wall.Seconds())
	p("| TokenReviews | **%.2f/s** measured (every token cached after round 0); cold round %.2f/s; for agents started at different times about **%.1f/s**: a replica reviews a token again when its cache entry expires (10 minutes) and after each rotation (80%% of the 1 h lifetime) |\n",
		w.rate(keyTokenReview), cw.rate(keyTokenReview), r.modelTokenReviews())
	p("| report latency | p50 **%.1f ms**, p90 %.1f ms, p99 **%.1f ms**, max %.1f ms (cold round: p50 %.1f, p99 %.1f, max %.1f ms) |\n",
		benchkit.Millis(r.steady.pct(.5)), benchkit.Millis(r.steady.pct(.9)), benchkit.Millis(r.steady.pct(.99)), benchkit.Millis(r.steady.pct(1)), benchkit.Millis(r.cold.pct(.5)), benchkit.Millis(r.cold.pct(.99)), benchkit.Millis(r.cold.pct(1)))
	p("| status codes | steady: %s; cold round: %s |\n", r.steady.statusString(), r.cold.statusString())
	idleAPI, idleEtcd := r.idleW.cores(r.idleW.apiCPU), r.idleW.cores(r.idleW.etcdCPU)
	apiNet, etcdNet := benchkit.Micros(w.netPerReport(w.apiCPU, idleAPI)), benchkit.Micros(w.netPerReport(w.etcdCPU, idleEtcd))
	p("| API server / etcd CPU | %.3f / %.3f cores (idle before the run: %.3f / %.3f): **%.0f / %.0f us per report** above idle |\n",
		w.cores(w.apiCPU), w.cores(w.etcdCPU), idleAPI, idleEtcd, apiNet, etcdNet)
	if r.deployPods != "" {
		p("| what the rollup wrote on Deployment kong-gw-00 | `%s: %s`, `%s: %s`, a %d-byte `%s` |\n", kwv1.AnnotationPods, r.deployPods,
			kwv1.AnnotationRequests, r.deployRequests, r.deployStatsBytes, kwv1.AnnotationStats)
	}
	p("\n")

	// Memory against the shipped limit.
	if lim, err := resource.ParseQuantity(r.resources.memLimit); err == nil && r.leader >= 0 && nm > 1 {
		limMiB := float64(lim.Value()) / (1 << 20)
		leader := benchkit.MiB(r.steadyRSS[r.leader][0])
		var follower float64
		for i := range r.mgrs {
			if i != r.leader {
				follower = max(follower, benchkit.MiB(r.steadyRSS[i][0]))
			}
		}
		perConnMiB := kib / 1024
		p("Memory against the manager's limit in config/default (requests %s, limit %s):", r.resources.memRequest, r.resources.memLimit)
		if rollup && leader > follower {
			perPod := (leader - follower) / float64(r.agents)
			prod := leader + perConnMiB*float64(r.agents/nm)
			p(" the leader holds %.1f MiB more than the follower\n", leader-follower)
			p("for the rollup (its watch cache of the pods' metadata, the merges: %.0f KiB per pod). With every agent's\n", perPod*1024)
			p("own connection (%.0f KiB each) the leader would be at about **%.0f MiB** for %d agents", kib, prod, r.agents)
			if denom := perPod + perConnMiB/float64(nm); denom > 0 {
				n := (limMiB - leader + perPod*float64(r.agents)) / denom
				p(", and at the %s limit\nnear **%.0f agents** (a linear extrapolation: both terms grow with the fleet)", r.resources.memLimit, n)
			}
			p(". Go's heap may grow to\ntwice what is live before a collection, and the binary sets no GOMEMLIMIT, so it would not collect\n")
			p("harder near the limit.\n\n")
		} else {
			prod := max(leader, follower) + perConnMiB*float64(r.agents/nm)
			p(" with every agent's own connection (%.0f KiB each) a replica would be at about %.0f MiB for %d agents.\n\n", kib, prod, r.agents)
		}
	}

	p("Every round (reports by the round they were scheduled in; CPU and API requests from one round's start to\n")
	p("the next):\n\n")
	p("| round | reports | 200 | other | p50 ms | p99 ms | max ms | manager cores | manager us/report | API server cores | etcd cores | load generator cores | PATCH pods | PATCH deployments | TokenReviews | Event writes |\n")
	p("|---|---:|---:|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
	for i, ph := range r.perRound {
		rw := r.roundW[i]
		p("| %d | %d | %d | %s | %.1f | %.1f | %.1f | %s | %.0f | %.3f | %.3f | %.3f | %.0f | %.0f | %.0f | %.0f |\n", i, ph.reports, ph.ok, ph.otherStatuses(""),
			benchkit.Millis(ph.pct(.5)), benchkit.Millis(ph.pct(.99)), benchkit.Millis(ph.pct(1)), strings.Join(rw.mgrCores(), " + "), benchkit.Micros(rw.perReport(rw.mgrTotal())), rw.cores(rw.apiCPU),
			rw.cores(rw.etcdCPU), rw.cores(rw.genCPU), rw.api[keyPatchPods], rw.api[keyPatchDeploy], rw.api[keyTokenReview], eventWrites(rw.api))
	}
	p("\nEvery API-server request in the steady window, from every client (watches count when they end; the\n")
	p("administrator's `/metrics` reads are not in `apiserver_request_total`):\n\n")
	p("| request | per second | status codes (count) |\n|---|---:|---|\n")
	for _, k := range sortedKeys(w.api) {
		codes := w.b.api.codesDelta(w.a.api, k)
		var cs []string
		for _, code := range sortedCodes(codes) {
			cs = append(cs, fmt.Sprintf("%s: %.0f", code, codes[code]))
		}
		p("| %s | %.2f | %s |\n", k.String(), w.api[k]/w.wall.Seconds(), strings.Join(cs, ", "))
	}
	p("\nMean time in the API server: PATCH pods %.1f ms (steady), TokenReview %.1f ms (cold round).\n\n",
		benchkit.Millis(w.b.api.meanLatency(w.a.api, keyPatchPods)), benchkit.Millis(cw.b.api.meanLatency(cw.a.api, keyTokenReview)))

	p("The manager's per-report steps that need no network, run in the load generator's process on the\n")
	p("sanity pod's report and token (the CPU of one thread in a loop, so the machine's load inflates it\n")
	p("less than the figures above):\n\n")
	p("| step | CPU us | allocations | bytes allocated |\n|---|---:|---:|---:|\n")
	var inprocSum float64
	for _, c := range r.inproc {
		p("| %s | %.1f | %d | %d |\n", strings.TrimSpace(c.name), c.ns/1000, c.allocs, c.bytes)
		if !strings.HasPrefix(c.name, " ") {
			inprocSum += c.ns / 1000
		}
	}
	p("\n")

	mgrUs := benchkit.Micros(w.perReport(w.mgrTotal()))
	apiUs, etcdUs := apiNet, etcdNet
	p("What dominates:\n\n")
	p("- The cluster, not the manager: per report the API server spends %.0f us of CPU and etcd %.0f us above\n", apiUs, etcdUs)
	p("  their idle use,")
	p(" %.1fx the managers' %.0f us, for the PATCH of a %.1f KB pod: the merge applied to the whole\n", (apiUs+etcdUs)/max(mgrUs, 1), mgrUs, float64(r.podBytesAfter)/1000)
	p("  object, managedFields, the admission policies, storing it and the watch events.\n")
	p("- In the manager, the steps above add up to %.0f us of the %.0f us per report. The rest is the cost of\n", inprocSum, mgrUs)
	p("  handling a request that arrives alone every %.0f ms per replica: TLS, HTTP, the API call over HTTP/2, and\n", 1000*float64(nm)/max(perSec, 1))
	p("  the Go runtime waking up and going idle again, on a VM where every kernel entry is expensive.\n")
	if rollup && r.leader >= 0 {
		var fol float64
		for i, c := range w.mgrCPU {
			if i != r.leader {
				fol = max(fol, w.cores(c))
			}
		}
		p("- The rollup (leader only): %.2f GETs and %.2f PATCHes of Deployments per second, and %.3f cores more on\n",
			w.rate(metricKey{"GET", "apps", "deployments", ""}), w.rate(keyPatchDeploy), w.cores(w.mgrCPU[r.leader])-fol)
		p("  the leader than on the follower (its watch of the pods' metadata, the merges, its Events).\n")
	} else if !rollup {
		p("- No Deployment was patched: this manager build does not run the rollup.\n")
	}
	if tr := cw.rate(keyTokenReview); tr > 0 {
		p("- The cold round costs %.0f us per report in the managers against %.0f steady: a TokenReview per\n", benchkit.Micros(cw.perReport(cw.mgrTotal())), mgrUs)
		p("  agent (%.1f/s) and %d start-up Events. Each replica allows 20 TokenReviews/s with a burst of 100,\n", tr, r.cold.eventsAsked)
		p("  so a cold fleet larger than about %d agents spread over %v gets some 429s and retries.\n", int(20*float64(nm)*r.c.interval.Seconds()+100*float64(nm)), r.c.interval)
	}
	p("\nOne-off perf profiles (2026-12-05, this machine, 60 s of steady state at 1,000 agents, unstripped\n")
	p("binaries; not part of the bench): in the managers (before the rollup was wired in), the report\n")
	p("handler took 43%% of their CPU (the PATCH call 22%%, of which decoding the protobuf pod it returns 6%%;\n")
	p("decoding the report 13.5%%, mostly `encoding/json` on the histograms' bucket arrays; building the patch\n")
	p("5%%), the API client's HTTP/2 read loop 10%%, the HTTP server and TLS around the handler 8%%, the Go\n")
	p("scheduler and sysmon about 25%%, GC 6%%; 32%% of all samples were in the kernel. In the API server:\n")
	p("applying the merge patch 33%% (JSON encode, merge, decode of the whole pod), managedFields\n")
	p("(structured-merge-diff) 15%%, GC 15%%, the request filters (authentication, authorization, priority and\n")
	p("fairness) about 8%%, managedFields validation 6%%, the ValidatingAdmissionPolicies 5.6%% (CEL).\n")
	for _, n := range r.notes {
		p("\nNOTE: %s\n", n)
	}
	return b.String()
}
