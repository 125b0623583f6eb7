//go:build e2e

package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// writeDocs writes docs/e2e.md from this run.
func (s *suite) writeDocs(total time.Duration) error {
	var b strings.Builder
	w := func(format string, args ...any) { fmt.Fprintf(&b, format, args...) }
	w("# kong-watcher end to end, on a real single-node cluster\n\n")
	w("Written by the test of `make e2e` (`test/e2e`, from a run where every step passed, or with\n")
	w("`KW_E2E_WRITE_DOCS=1`) on %s. Re-run it with `make e2e`; `make e2e KEEP=1` leaves the\n", s.start.UTC().Format("2006-01-02 15:04 MST"))
	w("cluster running with kong-watcher installed again after the story, for exploring with kubectl.\n\n")
	w("Nothing here is simulated: `hack/e2e-cluster.sh` starts etcd, kube-apiserver,\n")
	w("kube-controller-manager, kube-scheduler, a kubelet with containerd, runc and a bridge CNI,\n")
	w("kube-proxy and CoreDNS on this machine; the images are built from the repository's `Dockerfile.webhook` and\n")
	w("`Dockerfile.agent` and the gateway's `test/e2e/gateway` (Debian's nginx + the Lua module with\n")
	w("a Kong-like configuration) and imported into containerd; the agent attaches its eBPF probes to\n")
	w("nginx in a real pod. The test (`test/e2e`) uses `kubectl` for what a person would do and\n")
	w("client-go to wait and check; traffic goes from the test process straight to the pod IPs.\n\n")
	w("The cluster's parts: etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and\n")
	w("kube-proxy v1.37.2 (built from the `k8s.io/kubernetes` module by `hack/k8s-binaries.sh`) and\n")
	w("CoreDNS (built from its module by `hack/coredns.sh`) run as host processes; containerd, runc\n")
	w("and the bridge CNI plugin are Debian's. Pods get addresses in 10.244.0.0/24 on the bridge\n")
	w("`kwbr0`, whose %s is the node's, the API server's (6443) and the cluster DNS server's:\n", envOr("KW_E2E_NODE_IP", "10.244.0.1"))
	w("CoreDNS on port 53, zone `cluster.local`, the kubelet's `clusterDNS` (it forwards nothing:\n")
	w("there is no upstream). Services get ClusterIPs in %s, which kube-proxy serves in\n", envOr("KW_E2E_SERVICE_CIDR", "10.96.0.0/16"))
	w("iptables mode (the `kubernetes` Service too), so a pod reaches a Service by its DNS name, e.g.\n")
	w("`https://kong-watcher-webhook-service.kong-watcher-system.svc:443`, as in any cluster (step 9).\n\n")

	w("## The story and its timings\n\n")
	w("| step | result | time |\n|---|---|---|\n")
	desc := map[string]string{
		"1-install":                        "`kubectl apply -k test/e2e/overlay` (config/default with the local image names and `imagePullPolicy: Never`); the webhook Deployment Available, its self-issued certificate in the Secret, the caBundle verifying it, a dry-run pod coming back mutated",
		"2-label-deployment":               "a 2-replica Kong-like Deployment without the label gets no agent; `kubectl patch` adds `kong-watcher.io/inject: \"true\"` to its pod template; the rolled pods are Running and Ready with the agent as a native sidecar, `shareProcessNamespace: true`, capabilities BPF, PERFMON, SYS_PTRACE (ALL dropped), not privileged",
		"3-traffic-stats-events":           fmt.Sprintf("%d requests to each pod", sent(mainPlan())) + " (HTTP/1.1 keep-alive, HTTP/1.1 over TLS, HTTP/2; 200, 404, 500, 502, 503; three hosts); the `kong-watcher.io/*` annotations equal the access log (`kubectl logs`) plus the kubelet's probes, within one stats interval (5 s); Events KongDetected, ProbesAttached and TrafficStats; a burst of " + fmt.Sprint(sent(burstPlan())) + " × 500 raises HighErrorRate (then HighErrorRateResolved)",
		"4-label-only-identity":            "the label was the whole opt-in: no Role or RoleBinding exists for Kong's service account, and it can do nothing new (`kubectl auth can-i --as=system:serviceaccount:kong:kong`: get/patch pods, create events, create tokenreviews all `no`); pod A's statistics annotations were written by the manager (field manager kong-watcher-manager); the agent's report token (audience kong-watcher.io/manager) is refused by the API server; through the manager's Service, a report with pod A's token claiming pod B is refused (403) and pod B is unchanged; `kubectl describe deployment` shows the Deployment's combined stats (`kong-watcher.io/pods: 2 of 2 pods reporting`)",
		"5-reload-and-agent-kill":          "`kubectl exec … nginx -s reload` in pod B under traffic: no failed request, the annotations still equal the access log; SIGKILL of pod A's agent task (`ctr tasks kill`): the kubelet restarts it (the agent has no readiness probe: the pod is NotReady only until then, at most 5 s), the gateway answers every request meanwhile, the new agent counts from its start, counts new traffic exactly and records its own KongDetected, ProbesAttached and TrafficStats",
		"6-do-no-harm":                     fmt.Sprintf("in pod A under gateway traffic: a %d req/s flood of the agent's `/stats` for %s while `/healthz` is probed; then the agent process SIGKILLed %d times, %s apart (what an OOM kill or a crash does), its port %d held by another process from the first kill, then freed: the gateway answers every request, the pod stays Ready and its endpoint in Service %s ready, the agent container never restarts (its supervisor restarts the agent in place), a MetricsPortUnavailable Warning is recorded, and the agent serves and counts exactly again", floodRate, floodFor, kills, killEvery, agentPort, serviceName),
		"7-uninstall":                      "`kubectl delete -k test/e2e/overlay`: namespace, webhook configuration, ClusterRoles, policies gone; the gateway pods keep running and serving; after `kubectl rollout restart` the new pods, still labelled, have no agent",
		"8-helm-install-upgrade-uninstall": "`helm install kong-watcher charts/kong-watcher -n kong-watcher-system --create-namespace -f test/e2e/helm-values.yaml` (the chart with the local image names and `pullPolicy: Never`): the rolled gateway pods are injected; `helm upgrade … --set agent.logLevel=debug`: the pods rolled next have the agent's `LOG_LEVEL=debug`; `helm uninstall`: every object of the release gone, the gateway pods keep running and serving, after `kubectl rollout restart` the new pods have no agent",
		"9-cluster-network":                "in a namespace of its own, an nginx pod (the gateway image) behind a ClusterIP Service and a client pod (`test/e2e/netcheck`) with the default dnsPolicy: its `/etc/resolv.conf` names CoreDNS with the `cluster.local` search domains; `kubernetes.default.svc.cluster.local`, `kubernetes.default` and the Service's short and full names resolve to their ClusterIPs; an HTTP GET of `http://kw-e2e-web.kw-e2e-net.svc/healthz` goes through kube-proxy to the nginx pod (whose access log shows the client pod's address); `https://kubernetes.default.svc/version` answers with the service account's CA and token",
		"10-real-kong":                     fmt.Sprintf("real Kong Gateway 3.8.1 (`hack/kong.sh`'s build, image `localhost/kong-watcher/kong:e2e`: its nginx, Lua tree and libraries on scratch, its prefix rendered by `kong prepare` at build time with the settings of `test/e2e/manifests-kong/kong.env`), kong-watcher installed again (`kubectl apply -k test/e2e/overlay`): `kubectl apply -k test/e2e/manifests-kong`, a labelled DB-less Kong Deployment (declarative configuration from a ConfigMap, Kong's settings as its environment, the kubelet's probes on the Status API's `/status` and `/status/ready`, port 8100), comes up Ready with the agent; %d requests to its proxy (HTTP/1.1, TLS, HTTP/2; a proxied service, request-termination, key-auth, Kong's 404); the `kong-watcher.io/*` annotations and the `kong-watcher.io/requests` headline of `kubectl describe pod` equal Kong's proxy access log (`kubectl logs`, JSON) exactly, without the probes, which the agent's `/stats` counts under `listeners.status`; then the namespace and the install are removed", sent(realKongPlan())),
	}
	for _, r := range s.steps {
		status := r.Status
		if r.Why != "" {
			status += " (" + r.Why + ")"
		}
		w("| **%s**: %s | %s | %s |\n", r.Name, desc[r.Name], status, r.Duration.Round(100*time.Millisecond))
	}
	w("| total (with the clean-up of earlier runs) | | %s |\n\n", total.Round(100*time.Millisecond))
	if b, err := os.ReadFile(filepath.Join(os.Getenv("KW_E2E_DIR"), "timings.tsv")); err == nil && len(b) > 0 {
		w("Before the story, `hack/e2e-cluster.sh up` (its `timings.tsv`; each part waited for until it answers):\n\n")
		w("| part | time |\n|---|---|\n")
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			if what, took, ok := strings.Cut(line, "\t"); ok {
				w("| %s | %s |\n", what, took)
			}
		}
		w("\n`make e2e-down` (stop every process, remove the bridge, iptables chains and cgroups) took about 14 s in these runs.\n\n")
	}

	w("## How the counts are checked\n\n")
	w("The gateway's access log (`kubectl logs -c proxy`, one JSON line per request) is the ground\n")
	w("truth. The test first checks that it holds exactly the requests it sent (method, host, URI,\n")
	w("status, protocol and port), then that the agent's `kong-watcher.io/stats` totals (requests,\n")
	w("errors, client errors, and every method, status code, host and path row) equal the log's, and\n")
	w("that the short annotations (`requests`, `methods`, `status`, `top-hosts`, `top-paths`) agree\n")
	w("with the JSON, and that the agent's Prometheus counter `kong_watcher_requests_total` (its\n")
	w("`/metrics`, what a PodMonitor scrapes) equals the log row for row too. The gateway pod runs nginx (`proxy`) and, as a second container, the service\n")
	w("its routes proxy to (`upstream`, a Go server on the pod's loopback): the agent follows nginx\n")
	w("only, so each client request is one request, as with a real Kong. The kubelet's readiness\n")
	w("probes (`GET /healthz`, Host the pod IP) are logged and counted too; as they keep coming while\n")
	w("the test waits, their row is checked on its own against the probes logged since the agent\n")
	w("started: no more than the log holds, at most one behind it (one probe may be logged and not\n")
	w("yet in the last stats snapshot; one more if it came before the agent had attached).\n\n")

	if len(s.notes) > 0 {
		w("## What was measured\n\n")
		for _, n := range s.notes {
			w("- %s\n", n)
		}
		w("\n")
	}

	w("## Environment\n\n")
	for _, e := range s.env {
		if !strings.Contains(e.Value, "\n") {
			w("- %s: %s\n", e.Key, e.Value)
		}
	}
	w("\n")
	for _, e := range s.env {
		if strings.Contains(e.Value, "\n") {
			w("```console\n$ %s\n%s\n```\n\n", e.Key, e.Value)
		}
	}

	if s.describePod != "" {
		key := "after step 5 (" + s.describePod + ")"
		w("## `kubectl describe pod` of a gateway pod\n\n")
		w("Pod B (%s) after step 5: its agent has run since the label was added, counted step 3's\n", s.describePod)
		w("traffic and burst, step 5's reload traffic, and recorded the Events.\n\n")
		w("```console\n$ kubectl describe pod -n %s %s\n%s```\n\n", kongNS, s.describePod, s.describe[key])
		if s.eventsOut != "" {
			w("```console\n$ kubectl get events -n %s --field-selector involvedObject.name=%s\n%s```\n\n", kongNS, s.describePod, s.eventsOut)
		}
	} else if len(s.describe) > 0 {
		keys := make([]string, 0, len(s.describe))
		for k := range s.describe {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		w("## `kubectl describe pod` of a gateway pod (%s)\n\n```console\n%s```\n\n", keys[0], s.describe[keys[0]])
	}

	if s.describeDeployment != "" {
		w("## `kubectl describe deployment` of the gateway\n\n")
		w("After step 4: the manager's combined stats of both gateway pods on the Deployment itself.\n\n")
		w("```console\n$ kubectl describe deployment -n %s %s\n%s```\n\n", kongNS, gatewayDeploy, s.describeDeployment)
	}

	w("## The commands, in order\n\n```sh\n")
	for _, c := range s.commands[:s.storyCommands] {
		w("%s\n", c)
	}
	w("```\n")
	return os.WriteFile(filepath.Join(s.root, "docs", "e2e.md"), []byte(b.String()), 0o644)
}

func sent(plan []req) int {
	n := 0
	for _, r := range plan {
		n += r.count
	}
	return n
}
