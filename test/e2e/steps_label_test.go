//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

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
