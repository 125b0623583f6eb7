//go:build e2e

package e2e

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

const (
	chartDir       = "charts/kong-watcher"
	helmRelease    = "kong-watcher"
	helmValues     = "test/e2e/helm-values.yaml"
	helmUpgradeSet = "agent.logLevel=debug"
	// upgradedLogLevel is what helmUpgradeSet must make the newly injected agents' LOG_LEVEL
	// (the gateway's pods carry no kong-watcher.io/log-level annotation that would override it).
	upgradedLogLevel = "debug"
)

// helmBin: $KW_HELM, else hack/helm.sh's binary (built once into the cache outside the clone).
func (s *suite) helmBin(t *testing.T) string {
	t.Helper()
	if h := os.Getenv("KW_HELM"); h != "" {
		return h
	}
	out, err := exec.Command(filepath.Join(s.root, "hack/helm.sh")).Output()
	if err != nil {
		t.Fatalf("hack/helm.sh: %v", err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	return lines[len(lines)-1]
}

// helm runs the helm CLI like kubectl above (logged and recorded in the story's commands).
func (s *suite) helm(t *testing.T, timeout time.Duration, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	line := "helm " + shellJoin(args)
	begin := time.Now()
	cmd := exec.CommandContext(ctx, s.helmBin(t), args...)
	cmd.Dir = s.root
	cmd.Env = append(os.Environ(), "KUBECONFIG="+s.kubeconfig)
	out, err := cmd.CombinedOutput()
	t.Logf("$ %s  (%s)", line, time.Since(begin).Round(time.Millisecond))
	s.commands = append(s.commands, line)
	if err != nil {
		t.Fatalf("%s: %v\n%s", line, err, out)
	}
	return string(out)
}

// rollGateway restarts the gateway Deployment and returns its new pods, Running and Ready.
func (s *suite) rollGateway(t *testing.T) []corev1.Pod {
	t.Helper()
	ctx, cancel := ctx30()
	before, err := s.gatewayPodList(ctx)
	cancel()
	if err != nil {
		t.Fatal(err)
	}
	s.mustKubectl(t, time.Minute, "rollout", "restart", "deployment/"+gatewayDeploy, "-n", kongNS)
	t.Logf("%s", s.mustKubectl(t, waitLong+30*time.Second, "rollout", "status", "deployment/"+gatewayDeploy, "-n", kongNS, "--timeout=180s"))
	s.waitDeploymentRolledOut(t, kongNS, gatewayDeploy, waitLong)
	pods := s.waitGatewayPods(t, 2, waitLong)
	for _, p := range pods {
		for _, o := range before {
			if p.Name == o.Name {
				t.Fatalf("pod %s survived the rollout restart", p.Name)
			}
		}
	}
	return pods
}

// waitWebhookInjects waits until a dry-run create of a labelled pod comes back with the agent
// and check(agent) holds: the API server reaches a webhook with the wanted settings.
func (s *suite) waitWebhookInjects(t *testing.T, what string, check func(c corev1.Container) string) {
	t.Helper()
	probe := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "kw-e2e-dry-run-", Namespace: "default",
			Labels: map[string]string{kwv1.LabelInject: kwv1.LabelInjectValue}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "proxy", Image: gatewayImage, ImagePullPolicy: corev1.PullNever}}},
	}
	waitFor(t, what, waitLong, time.Second, func(ctx context.Context) (bool, string, error) {
		p, err := s.cs.CoreV1().Pods("default").Create(ctx, probe.DeepCopy(), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		if err != nil {
			return false, "", err
		}
		if !hasAgent(p) {
			return false, "dry-run pod not mutated (containers: " + containerNames(p) + ")", nil
		}
		msg := check(findContainer(p, kwv1.AgentContainerName))
		return msg == "", msg, nil
	})
}

func agentEnv(c corev1.Container, name string) string {
	for _, e := range c.Env {
		if e.Name == name {
			return e.Value
		}
	}
	return ""
}

// ---------------------------------------------------------------------------------------
// Step 8: the same install with Helm: helm install, roll the labelled gateway (injected),
// helm upgrade with another agent log level (reaches the newly injected pods), helm uninstall
// (Kong keeps running; new pods get no agent).

func (s *suite) stepHelm(t *testing.T) {
	begin := time.Now()
	ns := []string{"--namespace", systemNS}
	t.Logf("%s", s.helm(t, 4*time.Minute, append([]string{"install", helmRelease, chartDir, "--create-namespace",
		"-f", helmValues, "--wait", "--timeout", "3m"}, ns...)...))
	s.installed = true
	s.waitDeploymentRolledOut(t, systemNS, webhookDeploy, waitLong)
	s.waitWebhookInjects(t, "the Helm-installed webhook injecting the e2e agent image", func(c corev1.Container) string {
		if c.Image != agentImage || c.ImagePullPolicy != corev1.PullNever {
			return "agent image " + c.Image + " pull policy " + string(c.ImagePullPolicy)
		}
		return ""
	})
	s.note("Step 8: `helm install` to a webhook injecting took %s.", time.Since(begin).Round(100*time.Millisecond))

	pods := s.rollGateway(t)
	var logLevel string
	for _, p := range pods {
		np := s.pod(t, p.Name)
		checkInjected(t, np)
		logLevel = agentEnv(findContainer(np, kwv1.AgentContainerName), kwv1.EnvLogLevel)
	}
	if logLevel == upgradedLogLevel {
		t.Fatalf("the agent's %s is already %q before the upgrade: the upgrade would prove nothing", kwv1.EnvLogLevel, logLevel)
	}
	if t.Failed() {
		t.FailNow()
	}
	t.Logf("Helm install: injected pods %s (agent %s=%s)", strings.Join(podNames(pods), ", "), kwv1.EnvLogLevel, logLevel)

	upgraded := time.Now()
	t.Logf("%s", s.helm(t, 4*time.Minute, append([]string{"upgrade", helmRelease, chartDir,
		"-f", helmValues, "--set", helmUpgradeSet, "--wait", "--timeout", "3m"}, ns...)...))
	s.waitDeploymentRolledOut(t, systemNS, webhookDeploy, waitLong)
	// The old replicas may still answer for a moment while they terminate.
	s.waitWebhookInjects(t, "the upgraded webhook injecting "+kwv1.EnvLogLevel+"="+upgradedLogLevel, func(c corev1.Container) string {
		if v := agentEnv(c, kwv1.EnvLogLevel); v != upgradedLogLevel {
			return kwv1.EnvLogLevel + "=" + v
		}
		return ""
	})
	pods = s.rollGateway(t)
	for _, p := range pods {
		np := s.pod(t, p.Name)
		checkInjected(t, np)
		if v := agentEnv(findContainer(np, kwv1.AgentContainerName), kwv1.EnvLogLevel); v != upgradedLogLevel {
			t.Errorf("pod %s injected after `helm upgrade --set %s`: agent %s=%q", np.Name, helmUpgradeSet, kwv1.EnvLogLevel, v)
		}
	}
	if t.Failed() {
		t.FailNow()
	}
	s.note("Step 8: `helm upgrade --set %s` to rolled gateway pods whose agent has %s=%s took %s.",
		helmUpgradeSet, kwv1.EnvLogLevel, upgradedLogLevel, time.Since(upgraded).Round(100*time.Millisecond))

	// What the release installed, to check that it is gone after the uninstall.
	rendered := s.helm(t, time.Minute, append([]string{"get", "manifest", helmRelease}, ns...)...)
	manifest := filepath.Join(t.TempDir(), "manifest.yaml")
	if err := os.WriteFile(manifest, []byte(rendered), 0o600); err != nil {
		t.Fatal(err)
	}

	t.Logf("%s", s.helm(t, 4*time.Minute, append([]string{"uninstall", helmRelease, "--wait", "--timeout", "3m"}, ns...)...))
	s.installed = false
	waitFor(t, "every object of the Helm release gone", waitLong, time.Second, func(ctx context.Context) (bool, string, error) {
		out, err := s.pollKubectl(time.Minute, "get", "-f", manifest, "--ignore-not-found", "-o", "name")
		out = strings.TrimSpace(out)
		return err == nil && out == "", "still there: " + strings.ReplaceAll(out, "\n", ", "), err
	})

	// Kong keeps running, agent and all, and keeps serving.
	s.gatewaysServeAfterUninstall(t, pods)

	// New pods start without the agent.
	for _, p := range s.rollGateway(t) {
		if p.Labels[kwv1.LabelInject] != kwv1.LabelInjectValue {
			t.Errorf("pod %s lost the label %s", p.Name, kwv1.LabelInject)
		}
		if hasAgent(&p) || p.Annotations[kwv1.AnnotationInjected] != "" {
			t.Errorf("pod %s, created after `helm uninstall`, has the agent (%s)", p.Name, containerNames(&p))
		}
	}

	// The namespace --create-namespace made is not part of the release.
	s.mustKubectl(t, waitLong, "delete", "namespace", systemNS, "--wait=true", "--timeout=150s")
	waitFor(t, "namespace "+systemNS+" gone", waitLong, time.Second, func(ctx context.Context) (bool, string, error) {
		_, err := s.cs.CoreV1().Namespaces().Get(ctx, systemNS, metav1.GetOptions{})
		if apierrors.IsNotFound(err) {
			return true, "", nil
		}
		return false, "still there", err
	})
}
