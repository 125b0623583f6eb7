//go:build e2e

package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

var listAll = metav1.ListOptions{}

// runKubectl runs kubectl (the user's tool, /usr/bin/kubectl) in the repository root with
// the cluster's KUBECONFIG and returns its stdout and stderr.
func (s *suite) runKubectl(timeout time.Duration, args ...string) (string, string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, "kubectl", args...)
	cmd.Dir = s.root
	cmd.Env = append(os.Environ(), "KUBECONFIG="+s.kubeconfig)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	return out.String(), errb.String(), err
}

// kubectl runs kubectl, logs and records the command line (the story's command list), and
// returns its stdout. A failure is returned, not fatal, with stderr in the error.
func (s *suite) kubectl(t *testing.T, timeout time.Duration, args ...string) (string, error) {
	t.Helper()
	line := "kubectl " + shellJoin(args)
	begin := time.Now()
	out, errOut, err := s.runKubectl(timeout, args...)
	t.Logf("$ %s  (%s)", line, time.Since(begin).Round(time.Millisecond))
	s.commands = append(s.commands, line)
	if err != nil {
		return out, fmt.Errorf("%s: %v\nstdout:\n%s\nstderr:\n%s", line, err, out, errOut)
	}
	return out, nil
}

// mustKubectl is kubectl that fails the test on error.
func (s *suite) mustKubectl(t *testing.T, timeout time.Duration, args ...string) string {
	t.Helper()
	out, err := s.kubectl(t, timeout, args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// pollKubectl runs kubectl inside a poll: not recorded (the story's command list shows the
// command once, where the test reads it on purpose) and not logged; a failure is returned
// with stderr in the error.
func (s *suite) pollKubectl(timeout time.Duration, args ...string) (string, error) {
	out, errOut, err := s.runKubectl(timeout, args...)
	if err != nil {
		return out, fmt.Errorf("kubectl %s: %v: %s", shellJoin(args), err, strings.TrimSpace(errOut))
	}
	return out, nil
}

// quietKubectl runs kubectl for diagnostics: not recorded, errors folded into the output.
func (s *suite) quietKubectl(timeout time.Duration, args ...string) string {
	out, errOut, err := s.runKubectl(timeout, args...)
	if err != nil {
		return out + errOut + "\n(" + err.Error() + ")"
	}
	return out + errOut
}

// waitFor polls cond every interval until it returns true, or fails the test after timeout
// with what cond last reported. cond's error is treated as "not yet" (the message is kept).
func waitFor(t *testing.T, what string, timeout, interval time.Duration, cond func(ctx context.Context) (bool, string, error)) time.Duration {
	t.Helper()
	begin := time.Now()
	deadline := begin.Add(timeout)
	last := "(not evaluated)"
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		ok, msg, err := cond(ctx)
		cancel()
		if err != nil {
			msg = strings.TrimSpace(msg + " error: " + err.Error())
		}
		if msg != "" {
			last = msg
		}
		if ok {
			d := time.Since(begin)
			t.Logf("ok after %s: %s", d.Round(10*time.Millisecond), what)
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s; last seen: %s", timeout, what, last)
		}
		time.Sleep(interval)
	}
}

// ctx is a bounded context for one API call.
func ctx30() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), 30*time.Second)
}

// cleanLeftovers deletes what an earlier run against a kept cluster may have left: the
// gateway's namespace, the policy test's namespace and the install.
func (s *suite) cleanLeftovers(t *testing.T) {
	t.Helper()
	ctx, cancel := ctx30()
	defer cancel()
	var found []string
	for _, ns := range []string{kongNS, otherNS, systemNS} {
		if _, err := s.cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{}); err == nil {
			found = append(found, "namespace/"+ns)
		}
	}
	if _, err := s.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, webhookConfig, metav1.GetOptions{}); err == nil {
		found = append(found, "mutatingwebhookconfiguration/"+webhookConfig)
	}
	if len(found) == 0 {
		return
	}
	t.Logf("leftovers of an earlier run: %s; deleting them", strings.Join(found, ", "))
	// The install first: no webhook may inject into what is deleted and re-created below.
	if _, err := s.kubectl(t, waitLong, "delete", "-k", overlayDir, "--ignore-not-found", "--wait=true", "--timeout=150s"); err != nil {
		t.Fatalf("cleaning the previous install: %v", err)
	}
	for _, ns := range []string{kongNS, otherNS} {
		if _, err := s.kubectl(t, waitLong, "delete", "namespace", ns, "--ignore-not-found", "--wait=true", "--timeout=150s"); err != nil {
			t.Fatalf("cleaning namespace %s: %v", ns, err)
		}
	}
	for _, ns := range []string{kongNS, otherNS, systemNS} {
		waitFor(t, "namespace "+ns+" gone", waitLong, time.Second, func(ctx context.Context) (bool, string, error) {
			n, err := s.cs.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return true, "", nil
			}
			if err != nil {
				return false, "", err
			}
			return false, "phase " + string(n.Status.Phase), nil
		})
	}
	s.commands = nil // the story's command list starts with step 1
}

// collectEnv records what the run ran on (for docs/e2e.md).
func (s *suite) collectEnv(t *testing.T) {
	t.Helper()
	add := func(k, v string) { s.env = append(s.env, envLine{k, strings.TrimSpace(v)}) }
	add("kubectl version", s.quietKubectl(30*time.Second, "version"))
	ctx, cancel := ctx30()
	defer cancel()
	nodes, err := s.cs.CoreV1().Nodes().List(ctx, listAll)
	if err == nil {
		for _, n := range nodes.Items {
			ni := n.Status.NodeInfo
			var ips []string
			for _, a := range n.Status.Addresses {
				ips = append(ips, string(a.Type)+"="+a.Address)
			}
			add("node "+n.Name, fmt.Sprintf("kubelet %s, %s, kernel %s, %s, %s/%s, %s cpu, %s memory, %s",
				ni.KubeletVersion, ni.ContainerRuntimeVersion, ni.KernelVersion, ni.OSImage, ni.OperatingSystem,
				ni.Architecture, n.Status.Capacity.Cpu().String(), n.Status.Capacity.Memory().String(), strings.Join(ips, " ")))
		}
	}
	add("kubectl get nodes -o wide", s.quietKubectl(30*time.Second, "get", "nodes", "-o", "wide"))
	add("go", runtime.Version()+" "+runtime.GOOS+"/"+runtime.GOARCH)
	for _, e := range s.env {
		t.Logf("env: %s: %s", e.Key, e.Value)
	}
}

// dumpState logs what helps to understand a failed step.
func (s *suite) dumpState(t *testing.T) {
	t.Helper()
	q := func(args ...string) {
		t.Logf("--- kubectl %s\n%s", strings.Join(args, " "), s.quietKubectl(60*time.Second, args...))
	}
	q("get", "pods", "-A", "-o", "wide")
	q("get", "events", "-n", kongNS, "--sort-by=.lastTimestamp")
	q("get", "events", "-n", systemNS, "--sort-by=.lastTimestamp")
	q("get", "deployments,replicasets", "-n", kongNS, "-o", "wide")
	q("get", "deployments,pods,secrets", "-n", systemNS, "-o", "wide")
	q("get", "mutatingwebhookconfigurations", "-o", "yaml")
	q("logs", "-n", systemNS, "-l", "app.kubernetes.io/component=webhook", "--all-containers", "--tail=80", "--prefix")
	ctx, cancel := ctx30()
	defer cancel()
	pods, err := s.cs.CoreV1().Pods(kongNS).List(ctx, metav1.ListOptions{LabelSelector: gatewaySelector})
	if err != nil {
		t.Logf("listing gateway pods: %v", err)
		return
	}
	for _, p := range pods.Items {
		q("get", "pod", "-n", kongNS, p.Name, "-o", "yaml")
		q("describe", "pod", "-n", kongNS, p.Name)
		if hasAgent(&p) {
			q("logs", "-n", kongNS, p.Name, "-c", kwv1.AgentContainerName, "--tail=120")
			q("logs", "-n", kongNS, p.Name, "-c", kwv1.AgentContainerName, "--previous", "--tail=60")
		}
		q("logs", "-n", kongNS, p.Name, "-c", gatewayCtr, "--tail=20")
	}
}

// gatewayPodList returns the gateway pods that are not being deleted, sorted by name.
func (s *suite) gatewayPodList(ctx context.Context) ([]corev1.Pod, error) {
	pods, err := s.cs.CoreV1().Pods(kongNS).List(ctx, metav1.ListOptions{LabelSelector: gatewaySelector})
	if err != nil {
		return nil, err
	}
	var live []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil {
			live = append(live, p)
		}
	}
	sort.Slice(live, func(i, j int) bool { return live[i].Name < live[j].Name })
	return live, nil
}

func (s *suite) pod(t *testing.T, name string) *corev1.Pod {
	t.Helper()
	ctx, cancel := ctx30()
	defer cancel()
	p, err := s.cs.CoreV1().Pods(kongNS).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		t.Fatalf("getting pod %s/%s: %v", kongNS, name, err)
	}
	return p
}

// waitDeploymentRolledOut waits until every replica of the Deployment runs its current
// template, is Ready, and no older pod is left.
func (s *suite) waitDeploymentRolledOut(t *testing.T, ns, name string, timeout time.Duration) {
	t.Helper()
	waitFor(t, "deployment "+ns+"/"+name+" rolled out and Available", timeout, time.Second, func(ctx context.Context) (bool, string, error) {
		d, err := s.cs.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return false, "", err
		}
		want := int32(1)
		if d.Spec.Replicas != nil {
			want = *d.Spec.Replicas
		}
		st := d.Status
		msg := fmt.Sprintf("generation %d observed %d, replicas %d updated %d ready %d available %d unavailable %d (want %d)",
			d.Generation, st.ObservedGeneration, st.Replicas, st.UpdatedReplicas, st.ReadyReplicas, st.AvailableReplicas, st.UnavailableReplicas, want)
		available := false
		for _, c := range st.Conditions {
			if c.Type == "Available" && c.Status == corev1.ConditionTrue {
				available = true
			}
			if c.Type == "Progressing" && c.Reason == "ProgressDeadlineExceeded" {
				return false, msg + "; " + c.Message, nil
			}
		}
		done := st.ObservedGeneration >= d.Generation && st.UpdatedReplicas == want && st.Replicas == want &&
			st.ReadyReplicas == want && st.AvailableReplicas == want && available
		return done, msg, nil
	})
}

// waitGatewayPods waits for exactly n live gateway pods, all Running and Ready, and returns them.
func (s *suite) waitGatewayPods(t *testing.T, n int, timeout time.Duration) []corev1.Pod {
	t.Helper()
	var pods []corev1.Pod
	waitFor(t, fmt.Sprintf("%d gateway pods Running and Ready (and no terminating one)", n), timeout, time.Second,
		func(ctx context.Context) (bool, string, error) {
			all, err := s.cs.CoreV1().Pods(kongNS).List(ctx, metav1.ListOptions{LabelSelector: gatewaySelector})
			if err != nil {
				return false, "", err
			}
			var states []string
			ok := len(all.Items) == n
			for _, p := range all.Items {
				states = append(states, p.Name+"="+podState(&p))
				if p.DeletionTimestamp != nil || p.Status.Phase != corev1.PodRunning || !podReady(&p) {
					ok = false
				}
			}
			if ok {
				pods, err = s.gatewayPodList(ctx)
				if err != nil {
					return false, "", err
				}
			}
			return ok, strings.Join(states, ", "), nil
		})
	return pods
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func podState(p *corev1.Pod) string {
	st := string(p.Status.Phase)
	if p.DeletionTimestamp != nil {
		st += "/Terminating"
	}
	if podReady(p) {
		st += "/Ready"
	}
	for _, cs := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		if w := cs.State.Waiting; w != nil {
			st += fmt.Sprintf(" [%s waiting: %s %s]", cs.Name, w.Reason, w.Message)
		}
		if x := cs.State.Terminated; x != nil {
			st += fmt.Sprintf(" [%s terminated: %s exit %d]", cs.Name, x.Reason, x.ExitCode)
		}
	}
	return st
}

func hasAgent(p *corev1.Pod) bool {
	for _, c := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
		if c.Name == kwv1.AgentContainerName {
			return true
		}
	}
	return false
}

// agentStatus returns the agent's container status (an init container status for a native
// sidecar).
func agentStatus(p *corev1.Pod) *corev1.ContainerStatus {
	for _, cs := range append(append([]corev1.ContainerStatus{}, p.Status.InitContainerStatuses...), p.Status.ContainerStatuses...) {
		if cs.Name == kwv1.AgentContainerName {
			c := cs
			return &c
		}
	}
	return nil
}

// podEvents lists the Events about the pod (by name and UID).
func (s *suite) podEvents(ctx context.Context, p *corev1.Pod) ([]corev1.Event, error) {
	sel := fields.AndSelectors(
		fields.OneTermEqualSelector("involvedObject.kind", "Pod"),
		fields.OneTermEqualSelector("involvedObject.name", p.Name),
	).String()
	evs, err := s.cs.CoreV1().Events(p.Namespace).List(ctx, metav1.ListOptions{FieldSelector: sel})
	if err != nil {
		return nil, err
	}
	var out []corev1.Event
	for _, e := range evs.Items {
		if e.InvolvedObject.UID == "" || e.InvolvedObject.UID == p.UID {
			out = append(out, e)
		}
	}
	return out, nil
}

// eventTime is the Event's latest occurrence.
func eventTime(e corev1.Event) time.Time {
	switch {
	case e.Series != nil && !e.Series.LastObservedTime.IsZero():
		return e.Series.LastObservedTime.Time
	case !e.LastTimestamp.IsZero():
		return e.LastTimestamp.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	}
	return e.CreationTimestamp.Time
}

// eventFirstTime is the Event's first occurrence.
func eventFirstTime(e corev1.Event) time.Time {
	switch {
	case !e.FirstTimestamp.IsZero():
		return e.FirstTimestamp.Time
	case !e.EventTime.IsZero():
		return e.EventTime.Time
	}
	return e.CreationTimestamp.Time
}

// trafficStatsTotal matches the end of a TrafficStats message (agent/kube/reporter.go):
// "...; since start: %d requests, %d errors".
var trafficStatsTotal = regexp.MustCompile(`; since start: (\d+) requests, (\d+) errors$`)

// checkTrafficStats checks that the pod's first TrafficStats Event came with the traffic
// that began at begin, not before, and counts at least ALERT_MIN_REQUESTS (20) requests.
func checkTrafficStats(t *testing.T, pod string, e corev1.Event, begin time.Time) {
	t.Helper()
	// Event timestamps have second precision.
	if first := eventFirstTime(e); first.Before(begin.Truncate(time.Second)) {
		t.Errorf("%s: TrafficStats first recorded at %s, before the traffic began (%s): %q",
			pod, first.Format(time.TimeOnly), begin.Format("15:04:05.000"), e.Message)
	}
	m := trafficStatsTotal.FindStringSubmatch(e.Message)
	if m == nil {
		t.Errorf("%s: TrafficStats message %q does not end with \"; since start: N requests, M errors\"", pod, e.Message)
		return
	}
	if n, err := strconv.ParseUint(m[1], 10, 64); err != nil || n < 20 {
		t.Errorf("%s: TrafficStats counts %s requests since start, want at least 20 (ALERT_MIN_REQUESTS): %q", pod, m[1], e.Message)
	}
}

// waitEvent waits for an Event with reason about the pod, from the agent, seen at or after
// since; it returns the Event.
func (s *suite) waitEvent(t *testing.T, p *corev1.Pod, reason, eventType string, since time.Time, timeout time.Duration) corev1.Event {
	t.Helper()
	var found corev1.Event
	waitFor(t, fmt.Sprintf("%s Event %s on pod %s (at or after %s)", eventType, reason, p.Name, since.Format(time.TimeOnly)), timeout, time.Second,
		func(ctx context.Context) (bool, string, error) {
			evs, err := s.podEvents(ctx, p)
			if err != nil {
				return false, "", err
			}
			var seen []string
			for _, e := range evs {
				seen = append(seen, fmt.Sprintf("%s(%s x%d %s)", e.Reason, eventFrom(e), e.Count, eventTime(e).Format(time.TimeOnly)))
				// Event timestamps have second precision.
				if e.Reason == reason && e.Type == eventType && !eventTime(e).Before(since.Truncate(time.Second)) {
					found = e
					return true, "", nil
				}
			}
			return false, "events: " + strings.Join(seen, ", "), nil
		})
	if eventFrom(found) != kwv1.AgentContainerName {
		t.Errorf("Event %s on %s comes from %q, want the agent (%q)", reason, p.Name, eventFrom(found), kwv1.AgentContainerName)
	}
	t.Logf("Event %s %s on %s: %s", found.Type, found.Reason, p.Name, found.Message)
	return found
}

// eventFrom is who an Event says it is from, as `kubectl describe` shows it: the manager
// records the agents' Events through events.k8s.io with reportingController kong-watcher-agent.
func eventFrom(e corev1.Event) string {
	if e.Source.Component != "" {
		return e.Source.Component
	}
	return e.ReportingController
}

// shellJoin renders args as a shell command line a person can paste.
func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		safe := a != ""
		for _, c := range a {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.ContainsRune("-_./:=,@+", c)) {
				safe = false
				break
			}
		}
		if safe {
			q[i] = a
		} else {
			q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
		}
	}
	return strings.Join(q, " ")
}
