//go:build e2e

package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// ---------------------------------------------------------------------------------------
// Step 10: real Kong Gateway 3.8.1 (hack/kong.sh's build in the image
// localhost/kong-watcher/kong:e2e, DB-less, its declarative configuration from a ConfigMap,
// Kong's settings in the container's environment), labelled: the agent is injected, counts
// the proxy's traffic exactly as Kong's access log has it, and keeps the kubelet's probes of
// the Status API out of the headline, in a listener of their own.

const (
	realKongDir      = "test/e2e/manifests-kong"
	realKongNS       = "kong-real"
	realKongDeploy   = "kong"
	realKongSelector = "app.kubernetes.io/name=kong"
	realKongImage    = "localhost/kong-watcher/kong:e2e"
	realKongCtr      = "proxy"
	// Kong's listeners in the pod (test/e2e/manifests-kong/kong.env).
	realKongStatusPort = 8100
	realKongAdminPort  = 8001
)

// realKongPlan is the traffic sent to the real Kong's proxy: 260 requests over HTTP/1.1,
// HTTP/1.1 over TLS and HTTP/2, answered by the service behind Kong (the pod's upstream
// container), by Kong's plugins (request-termination, key-auth) and by Kong's router (404).
func realKongPlan() []req {
	return []req{
		{proto: protoH1, method: "GET", host: "api.kong.test", uri: "/svc/users/42", status: 200, count: 80, proxied: true, norm: "GET /svc/users/{id}"},
		{proto: protoH2, method: "POST", host: "shop.kong.test", uri: "/svc/orders", status: 200, count: 30, proxied: true, norm: "POST /svc/orders"},
		{proto: protoH1, method: "GET", host: "api.kong.test", uri: "/fast", status: 200, count: 60, norm: "GET /fast"},
		{proto: protoH1TLS, method: "GET", host: "shop.kong.test", uri: "/fast", status: 200, count: 30, norm: "GET /fast"},
		{proto: protoH1, method: "GET", host: "api.kong.test", uri: "/svc/status/404", status: 404, count: 20, proxied: true, norm: "GET /svc/status/{id}"},
		{proto: protoH2, method: "GET", host: "api.kong.test", uri: "/svc/status/500", status: 500, count: 5, proxied: true, norm: "GET /svc/status/{id}"},
		{proto: protoH1, method: "DELETE", host: "api.kong.test", uri: "/maintenance", status: 503, count: 10, norm: "DELETE /maintenance"},
		{proto: protoH1TLS, method: "GET", host: "api.kong.test", uri: "/private", status: 401, count: 15, norm: "GET /private"},
		{proto: protoH1, method: "GET", host: "other.kong.test", uri: "/nowhere", status: 404, count: 10, norm: "GET /nowhere"},
	}
}

// requestsHeadline is the kong-watcher.io/requests line of kubectl describe pod.
var requestsHeadline = regexp.MustCompile(regexp.QuoteMeta(kwv1.AnnotationRequests) + `:\s+total=(\d+) errors=(\d+)`)

func (s *suite) stepRealKong(t *testing.T) {
	begin := time.Now()
	// The image exists only when hack/kong.sh has built Kong (hack/e2e-images.sh never builds
	// it). Like every missing prerequisite of `make e2e`, that fails, unless asked otherwise.
	if os.Getenv("KW_E2E_KONG") == "off" {
		t.Skip("KW_E2E_KONG=off: real Kong not run")
	}
	out, err := exec.Command("ctr", "--address", s.containerd, "-n", "k8s.io", "images", "ls", "-q", "name=="+realKongImage).CombinedOutput()
	if err != nil {
		t.Fatalf("ctr images ls: %v: %s", err, out)
	}
	if !strings.Contains(string(out), realKongImage) {
		t.Fatalf("the image %s is not in the node's containerd: Kong 3.8.1 is not built (`hack/kong.sh --check` found no build when "+
			"hack/e2e-images.sh ran, so it wrote no kong.tar). Build it with hack/kong.sh (`make kong`; .ci/run does before `make e2e`) "+
			"and run `make e2e` again, or set KW_E2E_KONG=off to leave this step out", realKongImage)
	}

	// What an earlier run against a kept cluster may have left.
	s.deleteRealKongNS(t)

	// Steps 7 and 8 uninstalled kong-watcher: install it again for this step, and remove it
	// after.
	installedHere := false
	if !s.installed {
		t.Logf("apply:\n%s", s.mustKubectl(t, 2*time.Minute, "apply", "-k", overlayDir))
		s.installed, installedHere = true, true
		s.waitDeploymentRolledOut(t, systemNS, webhookDeploy, waitLong)
		s.waitWebhookInjects(t, "the webhook injecting the agent again", func(c corev1.Container) string {
			if c.Image != agentImage {
				return "agent image " + c.Image
			}
			return ""
		})
	}
	t.Cleanup(func() {
		if t.Failed() {
			s.dumpRealKong(t)
		}
		if _, err := s.kubectl(t, waitLong, "delete", "namespace", realKongNS, "--ignore-not-found", "--wait=true", "--timeout=120s"); err != nil {
			t.Errorf("removing the real Kong: %v", err)
		}
		if installedHere {
			if _, err := s.kubectl(t, waitLong, "delete", "-k", overlayDir, "--ignore-not-found", "--wait=true", "--timeout=150s"); err != nil {
				t.Errorf("uninstalling kong-watcher after the real Kong: %v", err)
			}
			s.installed = false
		}
	})
	installed := time.Since(begin)

	// The labelled Kong Deployment: its pod comes up with the agent.
	applied := time.Now()
	t.Logf("apply:\n%s", s.mustKubectl(t, time.Minute, "apply", "-k", realKongDir))
	s.waitDeploymentRolledOut(t, realKongNS, realKongDeploy, waitLong)
	var pod *corev1.Pod
	waitFor(t, "the real Kong pod Running and Ready with the agent", waitShort, time.Second, func(ctx context.Context) (bool, string, error) {
		pods, err := s.cs.CoreV1().Pods(realKongNS).List(ctx, metav1.ListOptions{LabelSelector: realKongSelector})
		if err != nil {
			return false, "", err
		}
		var states []string
		var live []corev1.Pod
		for _, p := range pods.Items {
			states = append(states, p.Name+"="+podState(&p))
			if p.DeletionTimestamp == nil {
				live = append(live, p)
			}
		}
		if len(live) != 1 || live[0].Status.Phase != corev1.PodRunning || !podReady(&live[0]) {
			return false, strings.Join(states, ", "), nil
		}
		st := agentStatus(&live[0])
		if st == nil || st.Started == nil || !*st.Started || !st.Ready || st.State.Running == nil {
			return false, "agent not running: " + strings.Join(states, ", "), nil
		}
		pod = live[0].DeepCopy()
		return true, "", nil
	})
	checkInjected(t, pod)
	if c := findContainer(pod, realKongCtr); c.Image != realKongImage {
		t.Fatalf("pod %s: container %s runs %q, want %q", pod.Name, realKongCtr, c.Image, realKongImage)
	}
	ready := time.Since(applied)
	agentStart := agentStatus(pod).State.Running.StartedAt.Time
	waitAgentReady(t, pod, waitShort)
	s.waitEvent(t, pod, kwv1.ReasonKongDetected, corev1.EventTypeNormal, agentStart.Add(-time.Second), waitShort)
	ev := s.waitEvent(t, pod, kwv1.ReasonProbesAttached, corev1.EventTypeNormal, agentStart.Add(-time.Second), waitShort)
	attachedBy := eventFirstTime(ev).Truncate(time.Second).Add(time.Second)

	// Traffic to the proxy, on the pod IP.
	plan := realKongPlan()
	snd := newSender(pod.Status.PodIP)
	defer snd.close() // also on t.Fatalf
	sendBegin := time.Now()
	n := snd.sendAll(t, plan)
	trafficEnd := time.Now()
	snd.close()
	t.Logf("%s (%s): %d requests to Kong's proxy in %s, every answer as expected", pod.Name, pod.Status.PodIP, n, trafficEnd.Sub(sendBegin).Round(time.Millisecond))

	// Kong's access log (kubectl logs: every listener logs JSON to stdout, $server_port tells
	// them apart) is the ground truth: first, it holds what was sent.
	nm := norms(plan)
	exp := expected(plan)
	var proxyLog *tally
	var logs map[string][]fixture.LogEntry
	waitFor(t, "Kong's proxy access log to hold the requests sent", 30*time.Second, 500*time.Millisecond, func(ctx context.Context) (bool, string, error) {
		var err error
		logs, err = s.realKongLogs(pod.Name)
		if err != nil {
			return false, "", err
		}
		if lines := len(logs[fixture.KongProxy]); lines != n {
			return false, fmt.Sprintf("%d proxy lines, %d requests sent", lines, n), nil
		}
		return true, "", nil
	})
	proxyLog = logTally(t, logs[fixture.KongProxy], nm, nil)
	if d := diffTally(proxyLog, exp); len(d) > 0 {
		t.Fatalf("%s: Kong's proxy access log does not hold what the test sent: %s", pod.Name, strings.Join(d, "; "))
	}
	if len(logs[fixture.KongStatus]) == 0 {
		t.Fatalf("%s: Kong's Status API logged no request: the kubelet's probes go there (readiness /status/ready, liveness /status)", pod.Name)
	}
	t.Logf("Kong's access log: the proxy logged %s; the Status API %d requests (the kubelet's probes), the Admin API %d",
		proxyLog, len(logs[fixture.KongStatus]), len(logs[fixture.KongAdmin]))

	// The annotations: every count of the stats equals the proxy's log, the probes left out.
	waitFor(t, "the kong-watcher.io/* annotations of "+pod.Name+" to equal Kong's proxy access log", 2*statsInterval+30*time.Second, 250*time.Millisecond,
		func(ctx context.Context) (bool, string, error) {
			p, err := s.cs.CoreV1().Pods(realKongNS).Get(ctx, pod.Name, metav1.GetOptions{})
			if err != nil {
				return false, "", err
			}
			got, err := podStats(p.Annotations)
			if err != nil {
				return false, err.Error(), nil
			}
			diff := diffTally(statsTally(got.Total), proxyLog)
			diff = append(diff, checkShortAnnotations(p.Annotations, got.Total)...)
			if len(diff) > 0 {
				return false, fmt.Sprintf("stats updated %s: %s", got.Updated.Format(time.TimeOnly), strings.Join(diff, "; ")), nil
			}
			return true, "", nil
		})
	matched := time.Since(trafficEnd)

	// What a person reads: the headline of kubectl describe pod.
	desc := s.mustKubectl(t, time.Minute, "describe", "pod", "-n", realKongNS, pod.Name)
	t.Logf("kubectl describe pod %s:\n%s", pod.Name, desc)
	m := requestsHeadline.FindStringSubmatch(desc)
	if m == nil {
		t.Fatalf("kubectl describe pod %s: no `%s: total=N errors=M` line", pod.Name, kwv1.AnnotationRequests)
	}
	if total, _ := strconv.ParseUint(m[1], 10, 64); total != proxyLog.Requests {
		t.Errorf("kubectl describe pod %s: %s total=%d, Kong's proxy access log has %d lines", pod.Name, kwv1.AnnotationRequests, total, proxyLog.Requests)
	}
	if errs, _ := strconv.ParseUint(m[2], 10, 64); errs != proxyLog.Errors {
		t.Errorf("kubectl describe pod %s: %s errors=%d, Kong's proxy access log has %d 5xx", pod.Name, kwv1.AnnotationRequests, errs, proxyLog.Errors)
	}
	checkDescribeCounts(t, pod.Name, desc, proxyLog)
	s.describe["after step 10 ("+pod.Name+")"] = desc

	// The agent's /stats: the Status API is a listener of its own, counting the probes (as
	// many as Kong logged since the probes were attached, give or take the snapshot's second);
	// the proxy listener is the headline.
	var live kwv1.Stats
	var fetched time.Time
	waitFor(t, "the agent's /stats to count the kubelet's probes under listeners.status", waitShort, time.Second, func(ctx context.Context) (bool, string, error) {
		var err error
		fetched = time.Now()
		live, err = agentStats(ctx, pod.Status.PodIP)
		if err != nil {
			return false, "", err
		}
		return live.Total.Listeners["status"].Requests > 0, fmt.Sprintf("listeners %v", listenerCounts(live.Total)), nil
	})
	logs, err = s.realKongLogs(pod.Name)
	if err != nil {
		t.Fatal(err)
	}
	statusGot := live.Total.Listeners["status"].Requests
	var statusLogged, statusSure uint64
	for _, e := range logs[fixture.KongStatus] {
		statusLogged++
		if e.Msec >= float64(attachedBy.UnixNano())/1e9 && e.Msec <= float64(fetched.Add(-3*time.Second).UnixNano())/1e9 {
			statusSure++
		}
	}
	if statusGot > statusLogged || statusGot < statusSure {
		t.Errorf("%s: /stats listeners.status counts %d requests; Kong's Status API logged %d, %d of them after the probes were attached and 3 s before the read",
			pod.Name, statusGot, statusLogged, statusSure)
	}
	// (/status/ready answers 503 until Kong has loaded its configuration: not every probe is a 200.)
	if got := live.Total.Listeners["status"].StatusCodes["200"]; got == 0 {
		t.Errorf("%s: /stats listeners.status: no 200 among %d requests (%v)", pod.Name, statusGot, live.Total.Listeners["status"].StatusCodes)
	}
	if p := live.Total.Listeners["proxy"]; p.Requests != proxyLog.Requests || live.Total.Requests != proxyLog.Requests {
		t.Errorf("%s: /stats total %d, listeners.proxy %d, Kong's proxy access log %d", pod.Name, live.Total.Requests, p.Requests, proxyLog.Requests)
	}
	for _, row := range live.Total.Paths {
		if strings.HasPrefix(row.Name, "GET /status") {
			t.Errorf("%s: /stats has the probes' path %q among the proxy's paths (%d)", pod.Name, row.Name, row.Requests)
		}
	}
	t.Logf("%s: /stats listeners %v; Kong's Status API logged %d requests (%d certain to be counted)", pod.Name, listenerCounts(live.Total), statusLogged, statusSure)

	s.note("Step 10: real Kong Gateway 3.8.1 (DB-less, 2 workers) in pod %s: Ready with the agent %s after `kubectl apply -k %s` (kong-watcher installed again in %s); %d requests to its proxy, and `kubectl describe pod` said %s: %s %s after the last one (Kong's proxy access log: %d lines, %d errors); the kubelet's probes of the Status API (port %d) stayed out of it, %d of them under `listeners.status` in the agent's /stats (Kong logged %d).",
		pod.Name, ready.Round(100*time.Millisecond), realKongDir, installed.Round(100*time.Millisecond), n, kwv1.AnnotationRequests,
		strings.TrimSpace(strings.TrimPrefix(m[0], kwv1.AnnotationRequests+":")), matched.Round(100*time.Millisecond),
		proxyLog.Requests, proxyLog.Errors, realKongStatusPort, statusGot, statusLogged)
}

// realKongLogs reads the Kong container's output (not recorded: a poll) and sorts its JSON
// access log lines by listener ($server_port); Kong's error log lines are skipped.
func (s *suite) realKongLogs(pod string) (map[string][]fixture.LogEntry, error) {
	out, err := s.pollKubectl(time.Minute, "logs", "-n", realKongNS, pod, "-c", realKongCtr)
	if err != nil {
		return nil, err
	}
	entries, err := parseAccessLog(pod, out)
	if err != nil {
		return nil, err
	}
	logs := map[string][]fixture.LogEntry{}
	for _, e := range entries {
		switch e.ServerPort {
		case httpPort, tlsPort:
			logs[fixture.KongProxy] = append(logs[fixture.KongProxy], e)
		case realKongStatusPort:
			logs[fixture.KongStatus] = append(logs[fixture.KongStatus], e)
		case realKongAdminPort:
			logs[fixture.KongAdmin] = append(logs[fixture.KongAdmin], e)
		default:
			return nil, fmt.Errorf("pod %s: an access log line on port %d, which no listener of Kong's has: %+v", pod, e.ServerPort, e)
		}
	}
	return logs, nil
}

// agentStats reads the agent's /stats on the pod IP.
func agentStats(ctx context.Context, ip string) (kwv1.Stats, error) {
	var st kwv1.Stats
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 10 * time.Second}
	hr, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://%s:%d/stats", ip, agentPort), nil)
	if err != nil {
		return st, err
	}
	resp, err := c.Do(hr)
	if err != nil {
		return st, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return st, fmt.Errorf("GET /stats: %s", resp.Status)
	}
	if err := json.NewDecoder(resp.Body).Decode(&st); err != nil {
		return st, fmt.Errorf("GET /stats: %v", err)
	}
	return st, nil
}

func listenerCounts(s kwv1.Summary) map[string]uint64 {
	m := map[string]uint64{}
	for name, l := range s.Listeners {
		m[name] = l.Requests
	}
	return m
}

// deleteRealKongNS removes the real Kong's namespace if it is there, and waits until it is
// gone.
func (s *suite) deleteRealKongNS(t *testing.T) {
	t.Helper()
	ctx, cancel := ctx30()
	_, err := s.cs.CoreV1().Namespaces().Get(ctx, realKongNS, metav1.GetOptions{})
	cancel()
	if apierrors.IsNotFound(err) {
		return
	}
	t.Logf("namespace %s left by an earlier run: deleting it", realKongNS)
	s.mustKubectl(t, waitLong, "delete", "namespace", realKongNS, "--ignore-not-found", "--wait=true", "--timeout=150s")
	waitFor(t, "namespace "+realKongNS+" gone", waitLong, time.Second, func(ctx context.Context) (bool, string, error) {
		_, err := s.cs.CoreV1().Namespaces().Get(ctx, realKongNS, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, "", nil
		}
		return false, "still there", err
	})
}

// dumpRealKong logs what helps to understand a failure of step 10.
func (s *suite) dumpRealKong(t *testing.T) {
	t.Helper()
	q := func(args ...string) {
		t.Logf("--- kubectl %s\n%s", strings.Join(args, " "), s.quietKubectl(60*time.Second, args...))
	}
	q("get", "pods", "-n", realKongNS, "-o", "wide")
	q("get", "events", "-n", realKongNS, "--sort-by=.lastTimestamp")
	ctx, cancel := ctx30()
	defer cancel()
	pods, err := s.cs.CoreV1().Pods(realKongNS).List(ctx, metav1.ListOptions{LabelSelector: realKongSelector})
	if err != nil {
		t.Logf("listing the real Kong pods: %v", err)
		return
	}
	for _, p := range pods.Items {
		q("describe", "pod", "-n", realKongNS, p.Name)
		q("logs", "-n", realKongNS, p.Name, "-c", realKongCtr, "--tail=60")
		if hasAgent(&p) {
			q("logs", "-n", realKongNS, p.Name, "-c", kwv1.AgentContainerName, "--tail=120")
		}
	}
}
