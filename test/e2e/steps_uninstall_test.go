//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

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
