//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"net/http"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// ---------------------------------------------------------------------------------------
// Step 1: kubectl apply -k test/e2e/overlay; the webhook becomes ready, issues its own
// certificate, patches the caBundle, and the API server reaches it.

func (s *suite) stepInstall(t *testing.T) {
	applied := time.Now()
	out := s.mustKubectl(t, 2*time.Minute, "apply", "-k", overlayDir)
	t.Logf("apply:\n%s", out)
	s.installed = true

	s.waitDeploymentRolledOut(t, systemNS, webhookDeploy, waitLong)

	var secret *corev1.Secret
	waitFor(t, "Secret "+systemNS+"/"+webhookSecret+" holding the CA and the serving certificate", waitShort, time.Second,
		func(ctx context.Context) (bool, string, error) {
			sec, err := s.cs.CoreV1().Secrets(systemNS).Get(ctx, webhookSecret, metav1.GetOptions{})
			if err != nil {
				return false, "", err
			}
			var missing []string
			for _, k := range []string{"ca.crt", "tls.crt", "tls.key"} {
				if len(sec.Data[k]) == 0 {
					missing = append(missing, k)
				}
			}
			secret = sec
			return len(missing) == 0, "missing keys: " + strings.Join(missing, ","), nil
		})

	dnsName := webhookService + "." + systemNS + ".svc"
	waitFor(t, "the caBundle of "+webhookConfig+" verifying the serving certificate for "+dnsName, waitShort, time.Second,
		func(ctx context.Context) (bool, string, error) {
			mwc, err := s.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, webhookConfig, metav1.GetOptions{})
			if err != nil {
				return false, "", err
			}
			if len(mwc.Webhooks) == 0 {
				return false, "no webhooks in the configuration", nil
			}
			for _, wh := range mwc.Webhooks {
				if len(wh.ClientConfig.CABundle) == 0 {
					return false, "webhook " + wh.Name + " has an empty caBundle", nil
				}
				if wh.FailurePolicy == nil || *wh.FailurePolicy != admissionregistrationv1.Ignore {
					return false, "", fmt.Errorf("webhook %s failurePolicy %v, want Ignore", wh.Name, wh.FailurePolicy)
				}
				// The Secret may have been re-read by the rotator since: take the latest.
				sec, err := s.cs.CoreV1().Secrets(systemNS).Get(ctx, webhookSecret, metav1.GetOptions{})
				if err == nil {
					secret = sec
				}
				if err := verifyServing(wh.ClientConfig.CABundle, secret.Data["tls.crt"], dnsName); err != nil {
					return false, "webhook " + wh.Name + ": " + err.Error(), nil
				}
			}
			return true, "", nil
		})

	// The API server calls the webhook through the Service's endpoints (--enable-aggregator-routing):
	// a dry-run create of a labelled pod comes back with the agent.
	probe := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "kw-e2e-dry-run-", Namespace: "default",
			Labels: map[string]string{kwv1.LabelInject: kwv1.LabelInjectValue}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "proxy", Image: gatewayImage, ImagePullPolicy: corev1.PullNever}}},
	}
	var mutated *corev1.Pod
	waitFor(t, "a dry-run create of a labelled pod coming back with the agent (the API server reaches the webhook)", waitLong, time.Second,
		func(ctx context.Context) (bool, string, error) {
			p, err := s.cs.CoreV1().Pods("default").Create(ctx, probe.DeepCopy(), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			if err != nil {
				return false, "", err
			}
			if !hasAgent(p) {
				return false, "dry-run pod not mutated (containers: " + containerNames(p) + ")", nil
			}
			mutated = p
			return true, "", nil
		})
	s.note("Step 1: %s after `kubectl apply -k`, both webhook replicas were Ready with their self-issued certificate, the caBundle was patched, and a dry-run pod came back with the agent.",
		time.Since(applied).Round(100*time.Millisecond))
	agent := findContainer(mutated, kwv1.AgentContainerName)
	if agent.Image != agentImage {
		t.Errorf("injected agent image %q, want %q (kustomize images: must rewrite AGENT_IMAGE)", agent.Image, agentImage)
	}
	if agent.ImagePullPolicy != corev1.PullNever {
		t.Errorf("injected agent imagePullPolicy %q, want Never (--agent-image-pull-policy from the overlay)", agent.ImagePullPolicy)
	}
}

// verifyServing checks that the serving certificate chains to the caBundle for dnsName.
func verifyServing(caBundle, servingPEM []byte, dnsName string) error {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caBundle) {
		return fmt.Errorf("the caBundle holds no PEM certificate")
	}
	var leaf *x509.Certificate
	inter := x509.NewCertPool()
	rest := servingPEM
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return fmt.Errorf("tls.crt: %v", err)
		}
		if leaf == nil {
			leaf = c
		} else {
			inter.AddCert(c)
		}
	}
	if leaf == nil {
		return fmt.Errorf("tls.crt holds no certificate")
	}
	_, err := leaf.Verify(x509.VerifyOptions{DNSName: dnsName, Roots: pool, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	if err != nil {
		return fmt.Errorf("the serving certificate does not verify against the caBundle: %v", err)
	}
	return nil
}

func containerNames(p *corev1.Pod) string {
	var n []string
	for _, c := range p.Spec.InitContainers {
		n = append(n, "init:"+c.Name)
	}
	for _, c := range p.Spec.Containers {
		n = append(n, c.Name)
	}
	return strings.Join(n, ",")
}

func findContainer(p *corev1.Pod, name string) corev1.Container {
	for _, c := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
		if c.Name == name {
			return c
		}
	}
	return corev1.Container{}
}

// ---------------------------------------------------------------------------------------
// Step 2: an unlabelled Kong-like Deployment gets no agent; labelled, its rolled pods get
// the agent as a native sidecar with the shared PID namespace and three capabilities.

func (s *suite) stepLabel(t *testing.T) {
	t.Logf("apply:\n%s", s.mustKubectl(t, time.Minute, "apply", "-k", manifestsDir))
	s.waitDeploymentRolledOut(t, kongNS, gatewayDeploy, waitLong)
	pods := s.waitGatewayPods(t, 2, waitLong)
	for _, p := range pods {
		if hasAgent(&p) {
			t.Errorf("pod %s of the unlabelled Deployment has the agent (containers %s)", p.Name, containerNames(&p))
		}
		if _, ok := p.Annotations[kwv1.AnnotationInjected]; ok {
			t.Errorf("pod %s of the unlabelled Deployment has the %s annotation", p.Name, kwv1.AnnotationInjected)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	before := map[string]bool{}
	for _, p := range pods {
		before[p.Name] = true
	}
	t.Logf("unlabelled pods %s: Running, Ready, no agent", strings.Join(podNames(pods), ", "))

	patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"labels":{%q:%q}}}}}`, kwv1.LabelInject, kwv1.LabelInjectValue)
	s.mustKubectl(t, time.Minute, "patch", "deployment", gatewayDeploy, "-n", kongNS, "--type=merge", "-p", patch)
	begin := time.Now()
	t.Logf("%s", s.mustKubectl(t, waitLong+30*time.Second, "rollout", "status", "deployment/"+gatewayDeploy, "-n", kongNS, "--timeout=180s"))
	s.waitDeploymentRolledOut(t, kongNS, gatewayDeploy, waitLong)
	pods = s.waitGatewayPods(t, 2, waitLong)
	s.note("Step 2: adding the label rolled the 2 gateway pods in %s (kubectl rollout status until both injected pods were Ready).", time.Since(begin).Round(100*time.Millisecond))

	// The agent container must also be started and ready (a native sidecar's readiness counts
	// toward the pod's, but check it by name).
	waitFor(t, "the agent containers started and ready", waitShort, time.Second, func(ctx context.Context) (bool, string, error) {
		var states []string
		ok := true
		for _, p := range pods {
			np, err := s.cs.CoreV1().Pods(kongNS).Get(ctx, p.Name, metav1.GetOptions{})
			if err != nil {
				return false, "", err
			}
			st := agentStatus(np)
			if st == nil || st.Started == nil || !*st.Started || !st.Ready || st.State.Running == nil {
				ok = false
			}
			states = append(states, p.Name+": "+podState(np))
		}
		return ok, strings.Join(states, "; "), nil
	})

	s.gatewayPods = nil
	for _, p := range pods {
		np := s.pod(t, p.Name)
		if before[np.Name] {
			t.Errorf("pod %s is from before the label", np.Name)
		}
		checkInjected(t, np)
		st := agentStatus(np)
		if st != nil && st.State.Running != nil {
			s.agentStart[np.Name] = st.State.Running.StartedAt.Time
		}
		s.gatewayPods = append(s.gatewayPods, np.Name)
	}
	slices.Sort(s.gatewayPods)
	t.Logf("injected pods: %s", strings.Join(s.gatewayPods, ", "))
}

func podNames(pods []corev1.Pod) []string {
	var n []string
	for _, p := range pods {
		n = append(n, p.Name)
	}
	return n
}

// checkInjected checks the pod's spec and status for the injected native sidecar.
func checkInjected(t *testing.T, p *corev1.Pod) {
	t.Helper()
	if p.Labels[kwv1.LabelInject] != kwv1.LabelInjectValue {
		t.Errorf("pod %s: label %s=%q", p.Name, kwv1.LabelInject, p.Labels[kwv1.LabelInject])
	}
	if p.Status.Phase != corev1.PodRunning || !podReady(p) {
		t.Errorf("pod %s: %s, want Running and Ready", p.Name, podState(p))
	}
	for _, c := range p.Spec.Containers {
		if c.Name == kwv1.AgentContainerName {
			t.Errorf("pod %s: the agent is a regular container, want a native sidecar (init container, restartPolicy Always)", p.Name)
		}
	}
	var agent *corev1.Container
	for i := range p.Spec.InitContainers {
		if p.Spec.InitContainers[i].Name == kwv1.AgentContainerName {
			agent = &p.Spec.InitContainers[i]
		}
	}
	if agent == nil {
		t.Errorf("pod %s: no %s init container (containers: %s)", p.Name, kwv1.AgentContainerName, containerNames(p))
		return
	}
	if agent.RestartPolicy == nil || *agent.RestartPolicy != corev1.ContainerRestartPolicyAlways {
		t.Errorf("pod %s: agent restartPolicy %v, want Always (native sidecar)", p.Name, agent.RestartPolicy)
	}
	if p.Spec.ShareProcessNamespace == nil || !*p.Spec.ShareProcessNamespace {
		t.Errorf("pod %s: shareProcessNamespace %v, want true", p.Name, p.Spec.ShareProcessNamespace)
	}
	if agent.Image != agentImage {
		t.Errorf("pod %s: agent image %q, want %q", p.Name, agent.Image, agentImage)
	}
	sc := agent.SecurityContext
	if sc == nil || sc.Capabilities == nil {
		t.Errorf("pod %s: agent has no securityContext.capabilities", p.Name)
		return
	}
	var add []string
	for _, c := range sc.Capabilities.Add {
		add = append(add, string(c))
	}
	slices.Sort(add)
	if !slices.Equal(add, []string{"BPF", "PERFMON", "SYS_PTRACE"}) {
		t.Errorf("pod %s: agent capabilities add %v, want exactly [BPF PERFMON SYS_PTRACE]", p.Name, add)
	}
	if len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		t.Errorf("pod %s: agent capabilities drop %v, want [ALL]", p.Name, sc.Capabilities.Drop)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Errorf("pod %s: agent is privileged", p.Name)
	}
	if sc.AllowPrivilegeEscalation != nil && *sc.AllowPrivilegeEscalation {
		t.Errorf("pod %s: agent allows privilege escalation", p.Name)
	}
	// No probes at all: a sidecar's readiness gates the pod's Ready (with one, a restarted
	// agent would keep Kong out of its Service until a probe passes), a startup probe would
	// hold Kong's containers back, and a liveness probe restarts the agent, which makes the
	// pod NotReady while it restarts.
	if agent.ReadinessProbe != nil {
		t.Errorf("pod %s: the agent has a readiness probe (%+v), want none: a native sidecar's readiness gates the pod's Ready condition", p.Name, agent.ReadinessProbe)
	}
	if agent.StartupProbe != nil {
		t.Errorf("pod %s: the agent has a startup probe (%+v), want none", p.Name, agent.StartupProbe)
	}
	if agent.LivenessProbe != nil {
		t.Errorf("pod %s: the agent has a liveness probe (%+v), want none: a restarting native sidecar makes the pod NotReady", p.Name, agent.LivenessProbe)
	}
	if p.Annotations[kwv1.AnnotationInjected] == "" {
		t.Errorf("pod %s: no %s annotation", p.Name, kwv1.AnnotationInjected)
	}
	st := agentStatus(p)
	if st == nil || st.Started == nil || !*st.Started || !st.Ready {
		t.Errorf("pod %s: agent container not started and ready: %+v", p.Name, st)
	}
}

// ---------------------------------------------------------------------------------------
// Step 3: traffic, the annotations within one stats interval, the Events, HighErrorRate.

// mainPlan is the traffic sent to each gateway pod in step 3: 238 requests to three hosts.
func mainPlan() []req {
	return []req{
		// HTTP/1.1, keep-alive.
		{proto: protoH1, method: "GET", host: "api.kong.test", uri: "/users/123", status: 200, count: 40, proxied: true, norm: "GET /users/{id}"},
		{proto: protoH1, method: "POST", host: "api.kong.test", uri: "/orders", status: 200, count: 20, proxied: true, norm: "POST /orders"},
		{proto: protoH1, method: "GET", host: "shop.kong.test", uri: "/fast", status: 200, count: 40, norm: "GET /fast"},
		{proto: protoH1, method: "GET", host: "shop.kong.test", uri: "/lua/hello", status: 200, count: 20, norm: "GET /lua/hello"},
		// HTTP/1.1 over TLS.
		{proto: protoH1TLS, method: "GET", host: "api.kong.test", uri: "/cart", status: 200, count: 30, proxied: true, norm: "GET /cart"},
		{proto: protoH1TLS, method: "DELETE", host: "api.kong.test", uri: "/users/77", status: 200, count: 10, proxied: true, norm: "DELETE /users/{id}"},
		// HTTP/2 over TLS.
		{proto: protoH2, method: "GET", host: "shop.kong.test", uri: "/api/items/42", status: 200, count: 30, proxied: true, norm: "GET /api/items/{id}"},
		{proto: protoH2, method: "GET", host: "other.kong.test", uri: "/fast", status: 200, count: 20, norm: "GET /fast"},
		{proto: protoH2, method: "PUT", host: "shop.kong.test", uri: "/cart/9", status: 200, count: 10, proxied: true, norm: "PUT /cart/{id}"},
		// Errors: 404 (the service's), 500 (the service's and a Lua plugin's), 502 (a dead
		// service), 503 (the service's).
		{proto: protoH1, method: "GET", host: "api.kong.test", uri: "/status/404", status: 404, count: 10, proxied: true, norm: "GET /status/{id}"},
		{proto: protoH1, method: "GET", host: "api.kong.test", uri: "/status/500", status: 500, count: 2, proxied: true, norm: "GET /status/{id}"},
		{proto: protoH1TLS, method: "GET", host: "shop.kong.test", uri: "/lua/error", status: 500, count: 2, norm: "GET /lua/error"},
		{proto: protoH2, method: "GET", host: "api.kong.test", uri: "/dead", status: 502, count: 2, norm: "GET /dead"},
		{proto: protoH2, method: "GET", host: "other.kong.test", uri: "/status/503", status: 503, count: 2, proxied: true, norm: "GET /status/{id}"},
	}
}

// burstPlan is the 5xx burst that must raise HighErrorRate.
func burstPlan() []req {
	return []req{{proto: protoH1, method: "GET", host: "api.kong.test", uri: "/status/500", status: 500, count: 60, proxied: true, norm: "GET /status/{id}"}}
}

// Step 5's traffic: during the reload, during the agent's restart, and after it.
func reloadReqs() []req {
	return []req{
		{proto: protoH1, method: "GET", host: "api.kong.test", uri: "/lua/hello", status: 200, norm: "GET /lua/hello"},
		{proto: protoH2, method: "GET", host: "shop.kong.test", uri: "/users/5", status: 200, proxied: true, norm: "GET /users/{id}"},
	}
}

func restartBgReq() req {
	return req{proto: protoH1, method: "GET", host: "api.kong.test", uri: "/during-restart", status: 200, proxied: true, norm: "GET /during-restart"}
}

func afterRestartPlan() []req {
	return []req{
		{proto: protoH1, method: "GET", host: "api.kong.test", uri: "/after-restart", status: 200, count: 25, proxied: true, norm: "GET /after-restart"},
		{proto: protoH2, method: "POST", host: "shop.kong.test", uri: "/after-restart/orders", status: 200, count: 15, proxied: true, norm: "POST /after-restart/orders"},
		{proto: protoH1TLS, method: "GET", host: "other.kong.test", uri: "/status/503", status: 503, count: 2, proxied: true, norm: "GET /status/{id}"},
	}
}

func allNorms() map[string]string {
	m := norms(mainPlan(), burstPlan(), reloadReqs(), afterRestartPlan(), []req{restartBgReq()}, afterHarmPlan(), []req{harmBgReq(), killsBgReq()})
	return m
}

// waitAgentReady waits until the agent's /readyz (probes attached to a serving gateway)
// answers 200 on the pod IP.
func waitAgentReady(t *testing.T, p *corev1.Pod, timeout time.Duration) {
	t.Helper()
	url := fmt.Sprintf("http://%s:%d/readyz", p.Status.PodIP, agentPort)
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 3 * time.Second}
	waitFor(t, "the agent of "+p.Name+" ready ("+url+")", timeout, 500*time.Millisecond, func(ctx context.Context) (bool, string, error) {
		hr, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return false, "", err
		}
		resp, err := c.Do(hr)
		if err != nil {
			return false, "", err
		}
		defer resp.Body.Close()
		var b bytes.Buffer
		_, _ = b.ReadFrom(resp.Body)
		return resp.StatusCode == 200, fmt.Sprintf("%d %s", resp.StatusCode, strings.TrimSpace(b.String())), nil
	})
}

// matchResult is what the annotation poll found for one pod.
type matchResult struct {
	after  time.Duration
	stats  kwv1.Stats
	probes uint64
}

// waitCountsMatch waits until, for every pod, the kong-watcher.io/stats annotation's totals
// equal want[pod] (the access log without the kubelet's probes) plus the readiness probes,
// which must agree with the access log too (withProbes), and the short annotations agree
// with the JSON. since[pod] is when the pod's traffic ended.
func (s *suite) waitCountsMatch(t *testing.T, what string, want map[string]*tally, since map[string]time.Time, timeout time.Duration) map[string]matchResult {
	t.Helper()
	res := map[string]matchResult{}
	waitFor(t, what, timeout, 250*time.Millisecond, func(ctx context.Context) (bool, string, error) {
		var msgs []string
		for pod, w := range want {
			if _, done := res[pod]; done {
				continue
			}
			p, err := s.cs.CoreV1().Pods(kongNS).Get(ctx, pod, metav1.GetOptions{})
			if err != nil {
				return false, "", err
			}
			st, err := podStats(p.Annotations)
			if err != nil {
				msgs = append(msgs, pod+": "+err.Error())
				continue
			}
			got := statsTally(st.Total)
			full, probes, bad, err := s.withProbes(pod, w, got, p.Status.PodIP, st.Since, s.probesAttached[pod])
			if err != nil {
				msgs = append(msgs, pod+": "+err.Error())
				continue
			}
			diff := diffTally(got, full)
			if bad != "" {
				diff = append(diff, bad)
			}
			diff = append(diff, checkShortAnnotations(p.Annotations, st.Total)...)
			if len(diff) > 0 {
				msgs = append(msgs, fmt.Sprintf("%s (stats updated %s): %s", pod, st.Updated.Format(time.TimeOnly), strings.Join(diff, "; ")))
				continue
			}
			after := time.Since(since[pod])
			res[pod] = matchResult{after: after, stats: st, probes: probes}
			t.Logf("%s: annotations match %s after its traffic: %d requests (%d of them kubelet probes), dataPath %q, %s",
				pod, after.Round(10*time.Millisecond), st.Total.Requests, probes, st.DataPath, p.Annotations[kwv1.AnnotationRequests])
		}
		return len(res) == len(want), strings.Join(msgs, " | "), nil
	})
	return res
}

func (s *suite) stepTraffic(t *testing.T) {
	pods := map[string]*corev1.Pod{}
	for _, name := range s.gatewayPods {
		p := s.pod(t, name)
		pods[name] = p
		waitAgentReady(t, p, waitShort)
		s.waitEvent(t, p, kwv1.ReasonKongDetected, corev1.EventTypeNormal, s.agentStart[name].Add(-time.Second), waitShort)
		ev := s.waitEvent(t, p, kwv1.ReasonProbesAttached, corev1.EventTypeNormal, s.agentStart[name].Add(-time.Second), waitShort)
		// Event times have second precision: the probes were attached before the next second.
		s.probesAttached[name] = eventFirstTime(ev).Truncate(time.Second).Add(time.Second)
	}

	plan := mainPlan()
	nm := allNorms()
	want := map[string]*tally{}
	trafficBegin := time.Now()
	trafficEnd := map[string]time.Time{}
	for _, name := range s.gatewayPods {
		snd := newSender(pods[name].Status.PodIP)
		defer snd.close() // also on t.Fatalf
		begin := time.Now()
		n := snd.sendAll(t, plan)
		trafficEnd[name] = time.Now()
		snd.close()
		t.Logf("%s (%s): %d requests (HTTP/1.1, HTTP/1.1 over TLS, HTTP/2; 200, 404, 500, 502, 503) in %s, every answer as expected",
			name, pods[name].Status.PodIP, n, time.Since(begin).Round(time.Millisecond))
	}

	// The access log (kubectl logs) is the ground truth; first check it says what was sent.
	exp := expected(plan)
	for _, name := range s.gatewayPods {
		entries := s.accessLog(t, name)
		lt := logTally(t, entries, nm, nil)
		if d := diffTally(lt, exp); len(d) > 0 {
			t.Fatalf("%s: the access log does not hold what the test sent: %s", name, strings.Join(d, "; "))
		}
		checkProtocols(t, name, entries, plan)
		want[name] = lt
	}
	t.Logf("access logs: each pod logged %s", exp)

	res := s.waitCountsMatch(t, "the kong-watcher.io/* annotations of both pods to count what the access logs hold", want, trafficEnd, 2*statsInterval+30*time.Second)
	for _, name := range s.gatewayPods {
		r := res[name]
		if r.after > statsInterval+3*time.Second {
			t.Errorf("%s: the annotations matched %s after the traffic, more than one stats interval (%s) plus 3s",
				name, r.after.Round(10*time.Millisecond), statsInterval)
		}
		s.note("Step 3, %s: the annotations counted the traffic %s after its last request (stats interval %s); %d requests, %d of them kubelet readiness probes; data path %q.",
			name, r.after.Round(100*time.Millisecond), statsInterval, r.stats.Total.Requests, r.probes, r.stats.DataPath)
	}

	// The third place people look: Prometheus /metrics on the agent's port.
	for _, name := range s.gatewayPods {
		mt, err := metricsTally(pods[name].Status.PodIP)
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if d := diffTally(mt, want[name]); len(d) > 0 {
			t.Errorf("%s: kong_watcher_requests_total on /metrics does not equal the access log: %s", name, strings.Join(d, "; "))
		} else {
			t.Logf("%s: kong_watcher_requests_total on /metrics equals the access log (%d requests)", name, mt.Requests)
		}
	}

	// TrafficStats: the first one at the first stats window holding at least
	// ALERT_MIN_REQUESTS (20) requests (the kubelet's probes alone never make one), then every
	// TRAFFIC_STATS_EVENT_INTERVAL (5m).
	for _, name := range s.gatewayPods {
		ev := s.waitEvent(t, pods[name], kwv1.ReasonTrafficStats, corev1.EventTypeNormal, s.agentStart[name].Add(-time.Second), 2*statsInterval+30*time.Second)
		checkTrafficStats(t, name, ev, trafficBegin)
		s.note("Step 3, %s: `TrafficStats` %q.", name, ev.Message)
	}

	// What a person sees (after the TrafficStats Events, which it lists too).
	podA := s.gatewayPods[0]
	desc := s.mustKubectl(t, time.Minute, "describe", "pod", "-n", kongNS, podA)
	t.Logf("kubectl describe pod %s:\n%s", podA, desc)
	for _, k := range []string{kwv1.AnnotationRequests, kwv1.AnnotationLatency, kwv1.AnnotationMethods, kwv1.AnnotationStatus,
		kwv1.AnnotationTopHosts, kwv1.AnnotationTopPaths, kwv1.AnnotationStats, kwv1.AnnotationInjected} {
		if !strings.Contains(desc, k+":") {
			t.Errorf("kubectl describe pod %s shows no %s annotation", podA, k)
		}
	}
	if !strings.Contains(desc, "kong-watcher.io/requests:  total=") && !strings.Contains(desc, "kong-watcher.io/requests: total=") {
		t.Errorf("kubectl describe pod %s: no `kong-watcher.io/requests: total=...` line", podA)
	}
	checkDescribeCounts(t, podA, desc, want[podA])
	for _, reason := range []string{kwv1.ReasonKongDetected, kwv1.ReasonProbesAttached, kwv1.ReasonTrafficStats} {
		if !strings.Contains(desc, reason) {
			t.Errorf("kubectl describe pod %s lists no %s Event", podA, reason)
		}
	}
	for _, name := range s.gatewayPods {
		out := s.mustKubectl(t, time.Minute, "get", "events", "-n", kongNS, "--field-selector", "involvedObject.name="+name)
		t.Logf("events of %s:\n%s", name, out)
		for _, reason := range []string{kwv1.ReasonKongDetected, kwv1.ReasonProbesAttached, kwv1.ReasonTrafficStats} {
			if !strings.Contains(out, reason) {
				t.Errorf("kubectl get events for %s lists no %s", name, reason)
			}
		}
	}

	// Did the mixed traffic (about 3% 5xx, spread evenly) already raise HighErrorRate? It
	// should not have; a note, not a failure (a window holding only part of the traffic may
	// hold more than 5%).
	ctx, cancel := ctx30()
	for _, name := range s.gatewayPods {
		evs, err := s.podEvents(ctx, pods[name])
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range evs {
			if e.Reason == kwv1.ReasonHighErrorRate {
				t.Logf("note: %s already had HighErrorRate before the burst: %s", name, e.Message)
			}
		}
	}
	cancel()

	// A burst of 5xx raises HighErrorRate (default threshold 5%, at least 20 requests in the
	// window), then, once the window is quiet again, HighErrorRateResolved.
	burst := burstPlan()
	burstStart := time.Now()
	burstEnd := map[string]time.Time{}
	for _, name := range s.gatewayPods {
		snd := newSender(pods[name].Status.PodIP)
		defer snd.close() // also on t.Fatalf
		snd.sendAll(t, burst)
		burstEnd[name] = time.Now()
		snd.close()
	}
	for _, name := range s.gatewayPods {
		ev := s.waitEvent(t, pods[name], kwv1.ReasonHighErrorRate, corev1.EventTypeWarning, burstStart, 2*statsInterval+30*time.Second)
		s.note("Step 3, %s: `HighErrorRate` %s after a burst of %d requests answered 500: %q", name,
			eventTime(ev).Sub(burstStart.Truncate(time.Second)).Round(time.Second), sent(burst), ev.Message)
	}
	for _, name := range s.gatewayPods {
		s.waitEvent(t, pods[name], kwv1.ReasonHighErrorRateResolved, corev1.EventTypeNormal, burstStart, 3*statsInterval+30*time.Second)
	}
	bexp := expected(burst)
	for _, name := range s.gatewayPods {
		entries := s.accessLog(t, name)
		lt := logTally(t, entries, nm, nil)
		sum := cloneTally(want[name])
		addTally(sum, bexp)
		if d := diffTally(lt, sum); len(d) > 0 {
			t.Fatalf("%s: the access log after the burst does not hold what the test sent: %s", name, strings.Join(d, "; "))
		}
		want[name] = lt
	}
	s.waitCountsMatch(t, "the annotations to count the burst too", want, burstEnd, 2*statsInterval+30*time.Second)
	s.describe["after step 3 ("+podA+")"] = desc
}

func addTally(dst, src *tally) {
	dst.Requests += src.Requests
	dst.Errors += src.Errors
	dst.ClientErrors += src.ClientErrors
	for _, m := range []struct{ d, s map[string]uint64 }{{dst.Methods, src.Methods}, {dst.Status, src.Status}, {dst.Hosts, src.Hosts}, {dst.Paths, src.Paths}} {
		for k, v := range m.s {
			m.d[k] += v
		}
	}
}

// checkProtocols checks that the client-facing log lines have the protocols and ports of
// the plan: HTTP/1.1 on 8000, HTTP/1.1 and HTTP/2.0 over TLS on 8443.
func checkProtocols(t *testing.T, pod string, entries []fixture.LogEntry, plan []req) {
	t.Helper()
	want := map[string]int{}
	for _, r := range plan {
		switch r.proto {
		case protoH1:
			want[fmt.Sprintf("http HTTP/1.1 %d", httpPort)] += r.count
		case protoH1TLS:
			want[fmt.Sprintf("https HTTP/1.1 %d", tlsPort)] += r.count
		case protoH2:
			want[fmt.Sprintf("https HTTP/2.0 %d", tlsPort)] += r.count
		}
	}
	got := map[string]int{}
	for _, e := range entries {
		if !isProbe(e) {
			got[fmt.Sprintf("%s %s %d", e.Scheme, e.Protocol, e.ServerPort)]++
		}
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s: access log has %d requests %q, want %d (all: %v)", pod, got[k], k, v, got)
		}
	}
	for k, v := range got {
		if want[k] == 0 {
			t.Errorf("%s: access log has %d requests %q the test did not send (all: %v)", pod, v, k, got)
		}
	}
}

// ---------------------------------------------------------------------------------------
// Step 5: nginx reload (pod B) and a killed agent (pod A): the gateway keeps serving and the
// counting goes on.

func (s *suite) stepResilience(t *testing.T) {
	nameA, nameB := s.gatewayPods[0], s.gatewayPods[1]
	nm := allNorms()

	// --- nginx -s reload in pod B, under traffic.
	pb := s.pod(t, nameB)
	before := s.accessLog(t, nameB)
	oldPIDs := map[int]bool{}
	for _, e := range before {
		oldPIDs[e.PID] = true
	}
	var bgs []*background
	for _, r := range reloadReqs() {
		bgs = append(bgs, startBackground(pb.Status.PodIP, r, 20*time.Millisecond, 3000))
	}
	stopAll := func() (ok int, failed []string) {
		for _, b := range bgs {
			o, f := b.end()
			ok += o
			failed = append(failed, f...)
		}
		return ok, failed
	}
	defer stopAll()
	waitBg := func(what string, n int) {
		t.Helper()
		base := 0
		for _, b := range bgs {
			o, _ := b.counts()
			base += o
		}
		waitFor(t, what, waitShort, 100*time.Millisecond, func(context.Context) (bool, string, error) {
			ok, failed := 0, 0
			for _, b := range bgs {
				o, f := b.counts()
				ok, failed = ok+o, failed+f
			}
			return ok-base >= n, fmt.Sprintf("%d answered, %d failed", ok-base, failed), nil
		})
	}
	waitBg("background traffic to "+nameB+" flowing", 50)
	reloadAt := time.Now()
	s.mustKubectl(t, time.Minute, "exec", "-n", kongNS, nameB, "-c", gatewayCtr, "--", "nginx", "-s", "reload")
	waitBg("background traffic to "+nameB+" after the reload (old workers gone: worker_shutdown_timeout 5s)", 800)
	ok, failed := stopAll()
	bgs = nil
	if len(failed) > 0 {
		t.Errorf("%s: %d of %d requests failed around the nginx reload: %s", nameB, len(failed), ok+len(failed), strings.Join(failed, "; "))
	}
	trafficEnd := time.Now()
	t.Logf("%s: %d requests answered during and after the reload, %d failed", nameB, ok, len(failed))
	logs := s.quietKubectl(time.Minute, "logs", "-n", kongNS, nameB, "-c", gatewayCtr, "--since-time="+reloadAt.Add(-time.Second).UTC().Format(time.RFC3339))
	if !strings.Contains(logs, "reconfiguring") {
		t.Errorf("%s: nginx's log shows no reload (\"reconfiguring\") after `nginx -s reload`", nameB)
	}
	entries := s.accessLog(t, nameB)
	newPIDs := map[int]int{}
	for _, e := range entries[len(before):] {
		if !oldPIDs[e.PID] {
			newPIDs[e.PID]++
		}
	}
	if len(newPIDs) == 0 {
		t.Errorf("%s: no request was served by a new worker after the reload", nameB)
	}
	t.Logf("%s: requests served by the workers started by the reload: %v", nameB, newPIDs)
	lt := logTally(t, entries, nm, nil)
	res := s.waitCountsMatch(t, "the annotations of "+nameB+" to count every request of the access log across the reload",
		map[string]*tally{nameB: lt}, map[string]time.Time{nameB: trafficEnd}, 2*statsInterval+30*time.Second)
	s.note("Step 5, %s: `nginx -s reload` under traffic: %d requests answered, %d failed; new workers %v served requests; the annotations matched the access log (%d requests) %s after the traffic.",
		nameB, ok, len(failed), pidList(newPIDs), res[nameB].stats.Total.Requests, res[nameB].after.Round(100*time.Millisecond))

	// --- SIGKILL the agent of pod A (its containerd task); the kubelet restarts it.
	pa := s.pod(t, nameA)
	st := agentStatus(pa)
	if st == nil || st.ContainerID == "" {
		t.Fatalf("%s: no agent container status/ID", nameA)
	}
	id := strings.TrimPrefix(st.ContainerID, "containerd://")
	restarts := st.RestartCount
	rw := s.watchReady(t, pa)
	defer rw.stop()
	prev, err := podStats(pa.Annotations)
	if err != nil {
		t.Fatalf("%s: the previous agent's stats before the kill: %v", nameA, err)
	}
	bg := startBackground(pa.Status.PodIP, restartBgReq(), 20*time.Millisecond, 10000)
	bgs = []*background{bg}
	waitBg("background traffic to "+nameA+" flowing", 30)
	killAt := time.Now()
	ctrArgs := []string{"--address", s.containerd, "-n", "k8s.io", "tasks", "kill", "-s", "SIGKILL", id}
	out, err := exec.Command("ctr", ctrArgs...).CombinedOutput()
	s.commands = append(s.commands, "ctr "+shellJoin(ctrArgs))
	t.Logf("$ ctr %s\n%s", shellJoin(ctrArgs), out)
	if err != nil {
		t.Fatalf("killing the agent's task: %v: %s", err, out)
	}
	var newStart time.Time
	d := waitFor(t, "the kubelet restarting the agent of "+nameA, waitLong, 500*time.Millisecond, func(ctx context.Context) (bool, string, error) {
		p, err := s.cs.CoreV1().Pods(kongNS).Get(ctx, nameA, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		cs := agentStatus(p)
		if cs == nil {
			return false, "no agent status", nil
		}
		msg := fmt.Sprintf("restartCount %d (was %d), %s", cs.RestartCount, restarts, podState(p))
		if cs.RestartCount > restarts && cs.State.Running != nil && cs.Started != nil && *cs.Started && cs.Ready {
			newStart = cs.State.Running.StartedAt.Time
			return true, msg, nil
		}
		return false, msg, nil
	})
	pa = s.pod(t, nameA)
	waitAgentReady(t, pa, waitShort)
	waitBg("background traffic to "+nameA+" after the agent's restart", 30)
	ok, failed = stopAll()
	bgs = nil
	if len(failed) > 0 {
		t.Errorf("%s: %d of %d requests failed while the agent was killed and restarted: %s", nameA, len(failed), ok+len(failed), strings.Join(failed, "; "))
	}
	t.Logf("%s: agent restarted %s after SIGKILL (restartCount %d); %d requests answered meanwhile, %d failed",
		nameA, d.Round(100*time.Millisecond), agentStatus(pa).RestartCount, ok, len(failed))
	if !podReady(pa) || pa.Status.Phase != corev1.PodRunning {
		t.Errorf("%s: %s after the agent's restart", nameA, podState(pa))
	}
	for _, cs := range pa.Status.ContainerStatuses {
		if cs.Name == gatewayCtr && cs.RestartCount != 0 {
			t.Errorf("%s: the gateway container restarted (%d)", nameA, cs.RestartCount)
		}
	}
	// The pod's Ready condition includes the native sidecar's readiness. The agent has no
	// readiness probe (checkInjected), so it is ready as soon as it runs again: the pod may be
	// NotReady only while the kubelet restarts the killed container. The bound is the moment
	// the new container started (its status's startedAt, whole seconds) plus 3s (the kubelet
	// sees a running container at its next relist), not the measured d: d runs until the
	// agent is Ready, so it would grow with a readiness probe's delay. (The restart itself
	// takes 0.2s on a quiet machine, 6s was seen while a benchmark ran beside it.)
	rw.stop()
	maxNotReady := newStart.Truncate(time.Second).Add(time.Second).Sub(killAt) + 3*time.Second
	notReady, windows := rw.notReady(killAt)
	switch {
	case len(windows) == 0:
		s.note("Step 5, %s: the pod stayed Ready while the agent was killed and restarted.", nameA)
	case notReady > maxNotReady:
		t.Errorf("pod %s was NotReady for %s (%s) after its agent was killed (restarted and Ready %s after the kill): more than %s, "+
			"(the new agent started at %s): the pod may be NotReady only while the kubelet restarts the agent, not until a readiness probe passes",
			nameA, notReady.Round(10*time.Millisecond), strings.Join(windows, ", "), d.Round(10*time.Millisecond),
			maxNotReady.Round(10*time.Millisecond), newStart.Format(time.TimeOnly))
	default:
		t.Logf("pod %s was NotReady for %s (%s): from the kill until the kubelet ran the agent again (a sidecar that is not running is not ready)",
			nameA, notReady.Round(10*time.Millisecond), strings.Join(windows, ", "))
		s.note("Step 5, %s: the pod's Ready condition was False for %s after the kill, until the kubelet ran the agent again (a native sidecar that is not running counts as not ready, probe or no probe); the gateway, reached on the pod IP, answered every request meanwhile.",
			nameA, notReady.Round(10*time.Millisecond))
	}
	s.waitEvent(t, pa, kwv1.ReasonKongDetected, corev1.EventTypeNormal, killAt, waitShort)
	s.waitEvent(t, pa, kwv1.ReasonProbesAttached, corev1.EventTypeNormal, killAt, waitShort)

	// After the restart the agent counts from zero (Stats.since is its start); the new
	// traffic is counted exactly.
	after := afterRestartPlan()
	snd := newSender(pa.Status.PodIP)
	defer snd.close() // also on t.Fatalf
	batchStart := time.Now()
	snd.sendAll(t, after)
	snd.close()
	entries = s.accessLog(t, nameA)
	batch := logTally(t, entries, nm, func(e fixture.LogEntry) bool {
		return float64(batchStart.UnixMilli())/1000 <= e.Msec+0.001 && e.RequestURI != restartBgReq().uri
	})
	if d := diffTally(batch, expected(after)); len(d) > 0 {
		t.Fatalf("%s: the access log does not hold the batch sent after the restart: %s", nameA, strings.Join(d, "; "))
	}
	bgLogged := logTally(t, entries, nm, func(e fixture.LogEntry) bool { return e.RequestURI == restartBgReq().uri })
	var final kwv1.Stats
	waitFor(t, "the annotations of "+nameA+" to count the new agent's traffic", 2*statsInterval+30*time.Second, 250*time.Millisecond,
		func(ctx context.Context) (bool, string, error) {
			p, err := s.cs.CoreV1().Pods(kongNS).Get(ctx, nameA, metav1.GetOptions{})
			if err != nil {
				return false, "", err
			}
			st, err := podStats(p.Annotations)
			if err != nil {
				return false, err.Error(), nil
			}
			var diff []string
			if !st.Since.After(killAt.Add(-time.Second)) {
				diff = append(diff, fmt.Sprintf("since %s is not after the kill (%s)", st.Since.Format(time.TimeOnly), killAt.Format(time.TimeOnly)))
			}
			got := statsTally(st.Total)
			for k, v := range expected(after).Paths {
				if got.Paths[k] != v {
					diff = append(diff, fmt.Sprintf("path %s: %d, want %d", k, got.Paths[k], v))
				}
			}
			bgRow := "GET " + restartBgReq().uri
			if got.Paths[bgRow] > bgLogged.Paths[bgRow] {
				diff = append(diff, fmt.Sprintf("path %s: %d, more than the access log's %d", bgRow, got.Paths[bgRow], bgLogged.Paths[bgRow]))
			}
			var sum uint64
			for k, v := range got.Paths {
				if k != bgRow && k != "GET "+probePath && expected(after).Paths[k] == 0 {
					diff = append(diff, fmt.Sprintf("path %s: %d requests the new agent cannot have seen", k, v))
				}
				sum += v
			}
			if sum != st.Total.Requests {
				diff = append(diff, fmt.Sprintf("the path rows sum to %d, the total is %d", sum, st.Total.Requests))
			}
			if st.Total.Requests >= prev.Total.Requests {
				diff = append(diff, fmt.Sprintf("total %d not below the previous agent's %d", st.Total.Requests, prev.Total.Requests))
			}
			diff = append(diff, checkShortAnnotations(p.Annotations, st.Total)...)
			if len(diff) > 0 {
				return false, strings.Join(diff, "; "), nil
			}
			final = st
			return true, "", nil
		})
	s.note("Step 5, %s: the agent killed with SIGKILL was restarted by the kubelet in %s (started %s); %d requests answered meanwhile, %d failed; the new agent counts from its start (since %s): %d requests (the previous agent had counted %d), the %d sent after the restart exactly.",
		nameA, d.Round(100*time.Millisecond), newStart.Format(time.TimeOnly), ok, len(failed), final.Since.Format(time.TimeOnly),
		final.Total.Requests, prev.Total.Requests, expected(after).Requests)

	// The new agent records its own first TrafficStats once a stats window holds at least 20
	// requests (the background traffic during the restart, or the batch after it).
	ev := s.waitEvent(t, pa, kwv1.ReasonTrafficStats, corev1.EventTypeNormal, killAt, 2*statsInterval+30*time.Second)
	checkTrafficStats(t, nameA, ev, killAt)

	for _, name := range s.gatewayPods {
		desc := s.mustKubectl(t, time.Minute, "describe", "pod", "-n", kongNS, name)
		t.Logf("kubectl describe pod %s:\n%s", name, desc)
		s.describe["after step 5 ("+name+")"] = desc
	}
	s.describePod = nameB
	s.eventsOut = s.mustKubectl(t, time.Minute, "get", "events", "-n", kongNS, "--field-selector", "involvedObject.name="+nameB)
}

// gatewaysServeAfterUninstall checks that an uninstall left the gateway pods as they were
// (same pods, agent and all) and serving, and returns them.
func (s *suite) gatewaysServeAfterUninstall(t *testing.T, before []corev1.Pod) []corev1.Pod {
	t.Helper()
	pods := s.waitGatewayPods(t, len(before), waitShort)
	if !slices.Equal(podNames(pods), podNames(before)) {
		t.Errorf("gateway pods changed by the uninstall: %v, were %v", podNames(pods), podNames(before))
	}
	for _, p := range pods {
		func() {
			snd := newSender(p.Status.PodIP)
			defer snd.close() // also on t.Fatalf
			snd.sendAll(t, []req{{proto: protoH1, method: "GET", host: "api.kong.test", uri: "/fast", status: 200, count: 10, norm: "GET /fast"}})
		}()
	}
	return pods
}

// checkDescribeCounts reads the numbers as a person does, from kubectl describe's annotation
// lines, and checks those the kubelet's probes cannot move: every status class but 2xx and
// every method but GET must equal the access log (want, without probes).
func checkDescribeCounts(t *testing.T, pod, desc string, want *tally) {
	t.Helper()
	ann := map[string]string{}
	for _, line := range strings.Split(desc, "\n") {
		line = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(line), "Annotations:"))
		if k, v, ok := strings.Cut(line, ": "); ok && strings.HasPrefix(k, kwv1.Domain+"/") {
			ann[k] = strings.TrimSpace(v)
		}
	}
	classes := map[string]uint64{}
	for code, n := range want.Status {
		classes[code[:1]+"xx"] += n
	}
	status := pairs(ann[kwv1.AnnotationStatus], " ")
	methods := pairs(ann[kwv1.AnnotationMethods], " ")
	var bad []string
	checked := 0
	for class, n := range classes {
		if class != "2xx" {
			checked++
			if status[class] != n {
				bad = append(bad, fmt.Sprintf("%s=%d, the access log %d", class, status[class], n))
			}
		}
	}
	for m, n := range want.Methods {
		if m != "GET" {
			checked++
			if methods[m] != n {
				bad = append(bad, fmt.Sprintf("%s=%d, the access log %d", m, methods[m], n))
			}
		}
	}
	if checked == 0 || len(bad) > 0 {
		t.Errorf("kubectl describe pod %s: %s %q, %s %q: %s (checked %d numbers)", pod, kwv1.AnnotationStatus,
			ann[kwv1.AnnotationStatus], kwv1.AnnotationMethods, ann[kwv1.AnnotationMethods], strings.Join(bad, "; "), checked)
		return
	}
	t.Logf("kubectl describe pod %s shows %s: %s and %s: %s, as the access log says", pod,
		kwv1.AnnotationStatus, ann[kwv1.AnnotationStatus], kwv1.AnnotationMethods, ann[kwv1.AnnotationMethods])
}

func pidList(m map[int]int) []int {
	var l []int
	for k := range m {
		l = append(l, k)
	}
	slices.Sort(l)
	return l
}

// ---------------------------------------------------------------------------------------
// Step 6: kubectl delete -k removes the install; the gateway keeps running; new pods start
// without the agent.

func (s *suite) stepUninstall(t *testing.T) {
	ctx, cancel := ctx30()
	before, err := s.gatewayPodList(ctx)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	out := s.mustKubectl(t, waitLong, "delete", "-k", overlayDir, "--wait=true", "--timeout=150s")
	t.Logf("delete:\n%s", out)
	s.installed = false

	rendered := s.mustKubectl(t, time.Minute, "kustomize", overlayDir)
	objs, err := clusterScoped(rendered)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "every object of the install gone (namespace "+systemNS+" included)", waitLong, time.Second, func(ctx context.Context) (bool, string, error) {
		var left []string
		for _, o := range objs {
			var err error
			switch o.kind {
			case "Namespace":
				_, err = s.cs.CoreV1().Namespaces().Get(ctx, o.name, metav1.GetOptions{})
			case "ClusterRole":
				_, err = s.cs.RbacV1().ClusterRoles().Get(ctx, o.name, metav1.GetOptions{})
			case "ClusterRoleBinding":
				_, err = s.cs.RbacV1().ClusterRoleBindings().Get(ctx, o.name, metav1.GetOptions{})
			case "MutatingWebhookConfiguration":
				_, err = s.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, o.name, metav1.GetOptions{})
			case "ValidatingAdmissionPolicy":
				_, err = s.cs.AdmissionregistrationV1().ValidatingAdmissionPolicies().Get(ctx, o.name, metav1.GetOptions{})
			case "ValidatingAdmissionPolicyBinding":
				_, err = s.cs.AdmissionregistrationV1().ValidatingAdmissionPolicyBindings().Get(ctx, o.name, metav1.GetOptions{})
			default:
				return false, "", fmt.Errorf("the test does not know how to check a %s", o.kind)
			}
			if err == nil {
				left = append(left, o.kind+"/"+o.name)
			} else if !apierrors.IsNotFound(err) {
				return false, "", err
			}
		}
		return len(left) == 0, "still there: " + strings.Join(left, ", "), nil
	})
	t.Logf("gone: %v", objs)

	// The gateway pods keep running, agent and all.
	pods := s.gatewaysServeAfterUninstall(t, before)

	// New pods (a rollout restart) start without the agent, label or not: no webhook.
	s.mustKubectl(t, time.Minute, "rollout", "restart", "deployment/"+gatewayDeploy, "-n", kongNS)
	t.Logf("%s", s.mustKubectl(t, waitLong+30*time.Second, "rollout", "status", "deployment/"+gatewayDeploy, "-n", kongNS, "--timeout=180s"))
	s.waitDeploymentRolledOut(t, kongNS, gatewayDeploy, waitLong)
	pods = s.waitGatewayPods(t, 2, waitLong)
	old := map[string]bool{}
	for _, p := range before {
		old[p.Name] = true
	}
	for _, p := range pods {
		if old[p.Name] {
			t.Errorf("pod %s survived the rollout restart", p.Name)
		}
		if p.Labels[kwv1.LabelInject] != kwv1.LabelInjectValue {
			t.Errorf("pod %s lost the label %s", p.Name, kwv1.LabelInject)
		}
		if hasAgent(&p) || p.Annotations[kwv1.AnnotationInjected] != "" {
			t.Errorf("pod %s, created after the uninstall, has the agent (%s)", p.Name, containerNames(&p))
		}
	}
	t.Logf("new pods without the agent: %s", strings.Join(podNames(pods), ", "))
}

type objRef struct{ kind, name string }

// clusterScoped lists the cluster-scoped objects of a rendered kustomization (the namespaced
// ones go with their namespace).
func clusterScoped(rendered string) ([]objRef, error) {
	var out []objRef
	for _, doc := range strings.Split(rendered, "\n---\n") {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		var o struct {
			Kind     string `json:"kind"`
			Metadata struct {
				Name      string `json:"name"`
				Namespace string `json:"namespace"`
			} `json:"metadata"`
		}
		if err := yaml.Unmarshal([]byte(doc), &o); err != nil {
			return nil, err
		}
		if o.Metadata.Namespace == "" {
			out = append(out, objRef{o.Kind, o.Metadata.Name})
		}
	}
	return out, nil
}

// reinstallForExploration (KEEP=1) installs kong-watcher again and rolls the gateway, so
// the kept cluster shows a monitored Kong.
func (s *suite) reinstallForExploration(t *testing.T) {
	s.mustKubectl(t, 2*time.Minute, "apply", "-k", overlayDir)
	s.waitDeploymentRolledOut(t, systemNS, webhookDeploy, waitLong)
	probe := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "kw-e2e-dry-run-", Namespace: "default",
			Labels: map[string]string{kwv1.LabelInject: kwv1.LabelInjectValue}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "proxy", Image: gatewayImage, ImagePullPolicy: corev1.PullNever}}},
	}
	waitFor(t, "the webhook answering again", waitLong, time.Second, func(ctx context.Context) (bool, string, error) {
		p, err := s.cs.CoreV1().Pods("default").Create(ctx, probe.DeepCopy(), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			return false, "", err
		}
		return hasAgent(p), "not mutated", nil
	})
	ctx, cancel := ctx30()
	_, err := s.cs.AppsV1().Deployments(kongNS).Get(ctx, gatewayDeploy, metav1.GetOptions{})
	cancel()
	if err != nil {
		s.mustKubectl(t, time.Minute, "apply", "-k", manifestsDir)
		patch := fmt.Sprintf(`{"spec":{"template":{"metadata":{"labels":{%q:%q}}}}}`, kwv1.LabelInject, kwv1.LabelInjectValue)
		s.mustKubectl(t, time.Minute, "patch", "deployment", gatewayDeploy, "-n", kongNS, "--type=merge", "-p", patch)
	} else {
		s.mustKubectl(t, time.Minute, "rollout", "restart", "deployment/"+gatewayDeploy, "-n", kongNS)
	}
	s.mustKubectl(t, waitLong+30*time.Second, "rollout", "status", "deployment/"+gatewayDeploy, "-n", kongNS, "--timeout=180s")
	t.Logf("KEEP: kong-watcher is installed again and the gateway pods in namespace %s have the agent; explore with\n  export KUBECONFIG=%s\n  kubectl get pods -n %s\n  kubectl describe pod -n %s -l %s",
		kongNS, s.kubeconfig, kongNS, kongNS, gatewaySelector)
}

// readyWatch records the pod's Ready condition as a watch delivers it.
type readyWatch struct {
	mu      sync.Mutex
	changes []readyChange
	cancel  context.CancelFunc
	done    chan struct{}
}

type readyChange struct {
	at    time.Time
	ready bool
}

// watchReady starts watching p's Ready condition (from p's resourceVersion).
func (s *suite) watchReady(t *testing.T, p *corev1.Pod) *readyWatch {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	w, err := s.cs.CoreV1().Pods(p.Namespace).Watch(ctx, metav1.ListOptions{
		FieldSelector: "metadata.name=" + p.Name, ResourceVersion: p.ResourceVersion})
	if err != nil {
		cancel()
		t.Fatalf("watching pod %s: %v", p.Name, err)
	}
	rw := &readyWatch{cancel: cancel, done: make(chan struct{}), changes: []readyChange{{time.Now(), podReady(p)}}}
	go func() {
		defer close(rw.done)
		defer w.Stop()
		for ev := range w.ResultChan() {
			np, ok := ev.Object.(*corev1.Pod)
			if !ok {
				continue
			}
			r := podReady(np)
			rw.mu.Lock()
			if r != rw.changes[len(rw.changes)-1].ready {
				rw.changes = append(rw.changes, readyChange{time.Now(), r})
			}
			rw.mu.Unlock()
		}
	}()
	return rw
}

func (rw *readyWatch) stop() {
	rw.cancel()
	<-rw.done
}

// notReady sums the NotReady windows after from, and describes them.
func (rw *readyWatch) notReady(from time.Time) (time.Duration, []string) {
	rw.mu.Lock()
	defer rw.mu.Unlock()
	var total time.Duration
	var windows []string
	var start time.Time
	for _, c := range rw.changes {
		switch {
		case !c.ready && start.IsZero():
			start = c.at
		case c.ready && !start.IsZero():
			total += c.at.Sub(start)
			windows = append(windows, fmt.Sprintf("NotReady %s after the kill, Ready again %s later",
				start.Sub(from).Round(10*time.Millisecond), c.at.Sub(start).Round(10*time.Millisecond)))
			start = time.Time{}
		}
	}
	if !start.IsZero() {
		total += time.Since(start)
		windows = append(windows, fmt.Sprintf("NotReady %s after the kill, still NotReady", start.Sub(from).Round(10*time.Millisecond)))
	}
	return total, windows
}
