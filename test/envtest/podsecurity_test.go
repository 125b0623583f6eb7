package envtest

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/rand"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/webhook/inject"

	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// restrictedKongPod is a labelled Kong pod that the restricted Pod Security level admits by
// itself, owned by rs (so the webhook's Event has somewhere to go).
func restrictedKongPod(rs *appsv1.ReplicaSet) *corev1.Pod {
	yes, no, uid := true, false, int64(1000)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: rs.Namespace, GenerateName: rs.Name + "-",
			Labels: map[string]string{"app": "kong", kwv1.LabelInject: kwv1.LabelInjectValue},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet",
				Name: rs.Name, UID: rs.UID, Controller: &yes, BlockOwnerDeletion: &yes}}},
		Spec: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{RunAsNonRoot: &yes, RunAsUser: &uid,
				SeccompProfile: &corev1.SeccompProfile{Type: corev1.SeccompProfileTypeRuntimeDefault}},
			Containers: []corev1.Container{{Name: "proxy", Image: "kong:3.9",
				Ports: []corev1.ContainerPort{{Name: "proxy", ContainerPort: 8000}},
				SecurityContext: &corev1.SecurityContext{AllowPrivilegeEscalation: &no,
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}}}},
		},
	}
}

// createLabelledKong creates a ReplicaSet and one labelled pod of it in ns, the way the
// ReplicaSet controller would, and returns the stored pod, the warnings the creator saw and
// the webhook's Event on the ReplicaSet.
func createLabelledKong(t *testing.T, cfg *rest.Config, ns string) (*corev1.Pod, []string, *eventsv1.Event) {
	t.Helper()
	ctx := t.Context()
	c := newClient(t, cfg)
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "kong-" + rand.String(6)},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: new(int32),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "kong"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "kong", kwv1.LabelInject: "true"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "proxy", Image: "kong:3.9"}}},
			},
		},
	}
	if err := c.Create(ctx, rs); err != nil {
		t.Fatal(err)
	}
	wcfg := rest.CopyConfig(cfg)
	rec := &warningRecorder{}
	wcfg.WarningHandler = rec
	pod := restrictedKongPod(rs)
	if err := newClient(t, wcfg).Create(ctx, pod); err != nil {
		t.Fatalf("the labelled Kong pod was not created in namespace %s: %v", ns, err)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		var evs eventsv1.EventList
		if err := c.List(ctx, &evs, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		for i, ev := range evs.Items {
			if ev.Regarding.Kind == "ReplicaSet" && ev.Regarding.Name == rs.Name {
				return pod, rec.all(), &evs.Items[i]
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no webhook Event on ReplicaSet %s/%s after 30s", ns, rs.Name)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// checkPodSecurityOutcome checks one labelled Kong pod against what its namespace's
// enforced level allows: injected, or created without the agent with a Warning Event and a
// warning to its creator that quote the API server and say how to allow it.
func checkPodSecurityOutcome(t *testing.T, cfg *rest.Config, ns string, wantInjected bool) {
	t.Helper()
	pod, warnings, ev := createLabelledKong(t, cfg, ns)
	a, _ := agentOf(pod)
	t.Logf("%s: agent injected %v; event %s %s: %.300s; warnings %q", ns, a != nil, ev.Type, ev.Reason, ev.Note, warnings)
	if wantInjected {
		if a == nil || ev.Reason != kwv1.ReasonInjected {
			t.Errorf("%s: want the agent injected, got agent %v and event %s: %s", ns, a != nil, ev.Reason, ev.Note)
		}
		return
	}
	if a != nil || pod.Spec.ShareProcessNamespace != nil || pod.Annotations[kwv1.AnnotationInjected] != "" {
		t.Errorf("%s: the pod was mutated although the API server refuses the agent here", ns)
	}
	if ev.Type != corev1.EventTypeWarning || ev.Reason != kwv1.ReasonInjectionSkipped ||
		!strings.Contains(ev.Note, inject.ReasonAdmissionWouldReject) || !strings.Contains(ev.Note, "PodSecurity") ||
		!strings.Contains(ev.Note, "enforce=privileged") {
		t.Errorf("%s: event %s %s %q, want a Warning InjectionSkipped quoting Pod Security and how to allow it", ns, ev.Type, ev.Reason, ev.Note)
	}
	found := false
	for _, w := range warnings {
		found = found || (strings.Contains(w, "not injected") && strings.Contains(w, "PodSecurity"))
	}
	if !found {
		t.Errorf("%s: the pod's creator got no warning saying why: %q", ns, warnings)
	}
}

// TestInjectionUnderPodSecurity: a labelled Kong pod is created in every namespace whatever
// Pod Security level it enforces; it gets the agent where the level admits it.
func TestInjectionUnderPodSecurity(t *testing.T) {
	e, cfg := startEnv(t)
	c := newClient(t, cfg)
	startWebhookProvidedCerts(t, e, cfg, nil)

	for _, tc := range []struct {
		level        string
		wantInjected bool
	}{
		{"", true}, // the API server's default level: privileged
		{"privileged", true},
		{"baseline", false},
		{"restricted", false},
	} {
		name := tc.level
		if name == "" {
			name = "unlabelled"
		}
		t.Run(name, func(t *testing.T) {
			ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "psa-" + name + "-" + rand.String(4)}}
			if tc.level != "" {
				ns.Labels = map[string]string{"pod-security.kubernetes.io/enforce": tc.level}
			}
			if err := c.Create(t.Context(), ns); err != nil {
				t.Fatal(err)
			}
			checkPodSecurityOutcome(t, cfg, ns.Name, tc.wantInjected)
		})
	}
}

// TestInjectionUnderClusterDefaultPodSecurity: an API server whose AdmissionConfiguration
// enforces baseline by default (no namespace label anywhere) still creates labelled Kong
// pods, without the agent; a namespace labelled privileged gets it.
func TestInjectionUnderClusterDefaultPodSecurity(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a real API server (-short)")
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		fixture.Require(t, false, "KUBEBUILDER_ASSETS is not set (hack/k8s-binaries.sh prints the directory)")
	}
	admissionConfig := filepath.Join(t.TempDir(), "admission.yaml")
	writeFile(t, admissionConfig, `apiVersion: apiserver.config.k8s.io/v1
kind: AdmissionConfiguration
plugins:
- name: PodSecurity
  configuration:
    apiVersion: pod-security.admission.config.k8s.io/v1
    kind: PodSecurityConfiguration
    defaults:
      enforce: baseline
      enforce-version: latest
    exemptions: {}
`)
	e := &envtest.Environment{
		WebhookInstallOptions: envtest.WebhookInstallOptions{
			MutatingWebhooks:             []*admissionregistrationv1.MutatingWebhookConfiguration{renderedMWC(t)},
			LocalServingHost:             "127.0.0.1",
			LocalServingHostExternalName: "localhost",
		},
		ControlPlaneStartTimeout: 90 * time.Second,
		ControlPlaneStopTimeout:  30 * time.Second,
	}
	e.ControlPlane.GetAPIServer().Configure().Set("admission-control-config-file", admissionConfig)
	cfg, err := e.Start()
	if err != nil {
		t.Fatalf("starting an API server with a cluster-wide Pod Security default: %v", err)
	}
	// Cleanups run last-in first-out: the webhook (registered below) stops before this.
	t.Cleanup(func() {
		if err := e.Stop(); err != nil {
			t.Errorf("stopping the second API server: %v", err)
		}
	})
	c := newClient(t, cfg)
	startWebhookProvidedCerts(t, e, cfg, nil)

	ensureNamespace(t, c, "default-baseline")
	checkPodSecurityOutcome(t, cfg, "default-baseline", false)
	if err := c.Create(t.Context(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "opted-privileged",
		Labels: map[string]string{"pod-security.kubernetes.io/enforce": "privileged"}}}); err != nil {
		t.Fatal(err)
	}
	checkPodSecurityOutcome(t, cfg, "opted-privileged", true)
}

// TestInjectionUnderUnknownPolicy: a policy the webhook knows nothing about (here a
// ValidatingAdmissionPolicy, as a policy engine would install, refusing added capabilities in
// namespaces labelled no-caps) refuses the injected pod: the Kong pod is created without the
// agent, and the owner is told why in the policy's own words.
func TestInjectionUnderUnknownPolicy(t *testing.T) {
	e, cfg := startEnv(t)
	c := newClient(t, cfg)
	ctx := t.Context()
	fail := admissionregistrationv1.Fail
	policy := &admissionregistrationv1.ValidatingAdmissionPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "corp-no-added-capabilities"},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicySpec{
			FailurePolicy: &fail,
			MatchConstraints: &admissionregistrationv1.MatchResources{ResourceRules: []admissionregistrationv1.NamedRuleWithOperations{{
				RuleWithOperations: admissionregistrationv1.RuleWithOperations{
					Operations: []admissionregistrationv1.OperationType{admissionregistrationv1.Create},
					Rule:       admissionregistrationv1.Rule{APIGroups: []string{""}, APIVersions: []string{"v1"}, Resources: []string{"pods"}},
				}}}},
			Validations: []admissionregistrationv1.Validation{{
				Expression: "object.spec.?initContainers.orValue([]).all(c, size(c.?securityContext.?capabilities.?add.orValue([])) == 0) && " +
					"object.spec.containers.all(c, size(c.?securityContext.?capabilities.?add.orValue([])) == 0)",
				Message: "corp policy: no container may add Linux capabilities",
			}},
		},
	}
	binding := &admissionregistrationv1.ValidatingAdmissionPolicyBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "corp-no-added-capabilities"},
		Spec: admissionregistrationv1.ValidatingAdmissionPolicyBindingSpec{
			PolicyName:        policy.Name,
			ValidationActions: []admissionregistrationv1.ValidationAction{admissionregistrationv1.Deny},
			MatchResources: &admissionregistrationv1.MatchResources{NamespaceSelector: &metav1.LabelSelector{
				MatchLabels: map[string]string{"corp.example.com/no-caps": "true"}}},
		},
	}
	for _, o := range []client.Object{policy, binding} {
		if err := c.Create(ctx, o); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = c.Delete(context.Background(), o) })
	}
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "corp-" + rand.String(4),
		Labels: map[string]string{"corp.example.com/no-caps": "true"}}}
	if err := c.Create(ctx, ns); err != nil {
		t.Fatal(err)
	}
	// The policy is active once the API server refuses a pod that adds a capability.
	eventually(t, "the corp policy refusing a pod with capabilities", func() (bool, error) {
		p := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns.Name, GenerateName: "probe-"},
			Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x",
				SecurityContext: &corev1.SecurityContext{Capabilities: &corev1.Capabilities{Add: []corev1.Capability{"BPF"}}}}}}}
		err := c.Create(ctx, p, client.DryRunAll)
		return err != nil && strings.Contains(err.Error(), "corp policy"), err
	})
	startWebhookProvidedCerts(t, e, cfg, nil)
	pod, warnings, ev := createLabelledKong(t, cfg, ns.Name)
	if a, _ := agentOf(pod); a != nil {
		t.Fatalf("the agent was injected although the corp policy refuses it")
	}
	if ev.Type != corev1.EventTypeWarning || !strings.Contains(ev.Note, "corp policy: no container may add Linux capabilities") ||
		!strings.Contains(ev.Note, inject.ReasonAdmissionWouldReject) {
		t.Errorf("event %s %s %q, want a Warning quoting the policy", ev.Type, ev.Reason, ev.Note)
	}
	if len(warnings) == 0 {
		t.Errorf("the pod's creator got no warning")
	}
	t.Logf("%s: %s %s: %.300s", ns.Name, ev.Type, ev.Reason, ev.Note)
}

// TestInjectionKeepsQoSClass: the API server itself classifies the injected pod: a Guaranteed
// Kong pod stays Guaranteed, a Burstable one stays Burstable.
func TestInjectionKeepsQoSClass(t *testing.T) {
	e, cfg := startEnv(t)
	c := newClient(t, cfg)
	startWebhookProvidedCerts(t, e, cfg, nil)
	ns := "qos-" + rand.String(5)
	ensureNamespace(t, c, ns)
	guaranteed := corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("1Gi")},
		Limits:   corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("1"), corev1.ResourceMemory: resource.MustParse("1Gi")},
	}
	burstable := corev1.ResourceRequirements{
		Requests: corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("500m")},
	}
	for name, tc := range map[string]struct {
		res  corev1.ResourceRequirements
		want corev1.PodQOSClass
	}{
		"guaranteed": {guaranteed, corev1.PodQOSGuaranteed},
		"burstable":  {burstable, corev1.PodQOSBurstable},
	} {
		pod := kongPod(ns, name, true)
		pod.Spec.Containers[0].Resources = tc.res
		if err := c.Create(t.Context(), pod); err != nil {
			t.Fatal(err)
		}
		if a, _ := agentOf(pod); a == nil {
			t.Fatalf("%s: not injected", name)
		}
		if pod.Status.QOSClass != tc.want {
			t.Errorf("%s Kong pod: the API server classified the injected pod %q, want %q", name, pod.Status.QOSClass, tc.want)
		}
	}
}
