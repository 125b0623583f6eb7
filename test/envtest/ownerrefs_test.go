package envtest

import (
	"os"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	"github.com/kong-watcher/kong-watcher/webhook/inject"

	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// TestAdmissionCheckUnderOwnerReferencesPermissionEnforcement: where the API server enforces
// OwnerReferencesPermissionEnforcement (OpenShift, hardened clusters), only a user who may
// update an owner's finalizers may set blockOwnerDeletion on a reference to it, which every
// controller-created pod carries. The webhook's identity has no such right, and its admission
// check must still admit a ReplicaSet's injected pod rather than report AdmissionWouldReject.
//
// The plugin is an API server flag, so this test starts an API server of its own.
func TestAdmissionCheckUnderOwnerReferencesPermissionEnforcement(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a real API server (-short)")
	}
	if os.Getenv("KUBEBUILDER_ASSETS") == "" {
		fixture.Require(t, false, "KUBEBUILDER_ASSETS is not set (hack/k8s-binaries.sh prints the directory)")
	}
	e := &envtest.Environment{ControlPlaneStartTimeout: 90 * time.Second, ControlPlaneStopTimeout: 30 * time.Second}
	e.ControlPlane.GetAPIServer().Configure().Append("enable-admission-plugins", "OwnerReferencesPermissionEnforcement")
	cfg, err := e.Start()
	if err != nil {
		t.Fatalf("starting envtest: %v", err)
	}
	t.Cleanup(func() {
		if err := e.Stop(); err != nil {
			t.Errorf("stopping envtest: %v", err)
		}
	})

	ctx := t.Context()
	const ns = "kw-owner-refs"
	c, admin, webhook := webhookIdentity(t, cfg, ns)

	yes := true
	rs := &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "kong"},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: new(int32),
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "kong"}},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"app": "kong"}},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "proxy", Image: "kong:3.9"}}},
			},
		},
	}
	if err := c.Create(ctx, rs); err != nil {
		t.Fatal(err)
	}
	pod := kongPod(ns, "", true)
	pod.GenerateName = "kong-"
	pod.OwnerReferences = []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet",
		Name: rs.Name, UID: rs.UID, Controller: &yes, BlockOwnerDeletion: &yes}}
	cfgInject := inject.DefaultConfig()
	if d := inject.Decide(pod, ns, cfgInject); !d.Inject {
		t.Fatalf("Decide = %+v, want the pod injected", d)
	}
	inject.Inject(pod, cfgInject)

	// The plugin is on: the webhook's identity may not create this pod as it is, not even as a
	// dry run (retried until the API server's authorizer has the webhook's rights).
	eventually(t, "the webhook identity refused blockOwnerDeletion", func() (bool, error) {
		_, err := webhook.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
		return err != nil && strings.Contains(err.Error(), "blockOwnerDeletion"), err
	})

	if err := inject.DryRunCreate(webhook)(ctx, pod, ns); err != nil {
		t.Errorf("the admission check refuses a ReplicaSet's injected pod: %v", err)
	}
	if got := pod.OwnerReferences[0].BlockOwnerDeletion; got == nil || !*got {
		t.Errorf("the admission check changed the pod's blockOwnerDeletion to %v", got)
	}
	// The ReplicaSet controller, which may update its ReplicaSets' finalizers, creates the pod
	// as it is; the admin stands in for it.
	if _, err := admin.CoreV1().Pods(ns).Create(ctx, pod, metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}}); err != nil {
		t.Errorf("the injected pod as its controller creates it: %v", err)
	}
}
