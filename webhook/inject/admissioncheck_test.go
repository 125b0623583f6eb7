package inject

import (
	"slices"
	"testing"

	"github.com/go-logr/logr/testr"
	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/utils/ptr"
)

// TestDryRunOmitsBlockOwnerDeletion: the dry run asks about the injected pod without
// blockOwnerDeletion, which OwnerReferencesPermissionEnforcement only lets the owner's
// controller set, while the patch leaves the pod's owner references as its creator wrote them.
func TestDryRunOmitsBlockOwnerDeletion(t *testing.T) {
	var sent []*corev1.Pod
	var opts []metav1.CreateOptions
	cs := fake.NewClientset()
	cs.PrependReactor("create", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		create := a.(k8stesting.CreateActionImpl)
		sent = append(sent, create.GetObject().(*corev1.Pod))
		opts = append(opts, create.CreateOptions)
		return true, create.GetObject(), nil
	})
	w := NewWebhook(testConfig(), nil, testr.New(t)).WithAdmissionCheck(DryRunCreate(cs))

	raw := podJSON(t, "kong")
	request := decodeTestPod(t, raw)
	if len(request.OwnerReferences) == 0 || !ptr.Deref(request.OwnerReferences[0].BlockOwnerDeletion, false) {
		t.Fatal("testdata/pods/kong.yaml should have an owner reference with blockOwnerDeletion: true")
	}
	resp := admissionResponse(t, post(w, reviewBody(t, "u-owned", admissionv1.Create, "kong", raw)), "u-owned")

	if len(sent) != 1 {
		t.Fatalf("%d dry-run creates, want 1", len(sent))
	}
	if !slices.Equal(opts[0].DryRun, []string{metav1.DryRunAll}) {
		t.Errorf("create options %+v, want a dry run", opts[0])
	}
	checked := sent[0]
	if !hasAgent(checked) {
		t.Error("the dry run did not create the injected pod")
	}
	want := request.DeepCopy().OwnerReferences
	for i := range want {
		want[i].BlockOwnerDeletion = nil
	}
	if !apiequality.Semantic.DeepEqual(checked.OwnerReferences, want) {
		t.Errorf("dry-run owner references %+v, want %+v", checked.OwnerReferences, want)
	}

	if len(resp.Patch) == 0 {
		t.Fatal("the dry run admitted the pod but no patch was sent")
	}
	patched := decodeTestPod(t, applyPatch(t, raw, resp.Patch))
	if !hasAgent(patched) {
		t.Error("the patched pod has no agent")
	}
	if !apiequality.Semantic.DeepEqual(patched.OwnerReferences, request.OwnerReferences) {
		t.Errorf("patched pod's owner references %+v, want the request's %+v", patched.OwnerReferences, request.OwnerReferences)
	}
}

func TestDryRunPodLeavesPodAlone(t *testing.T) {
	yes, no := true, false
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{OwnerReferences: []metav1.OwnerReference{
		{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "a", UID: "1", Controller: &yes, BlockOwnerDeletion: &yes},
		{APIVersion: "v1", Kind: "ConfigMap", Name: "b", UID: "2", BlockOwnerDeletion: &no},
		{APIVersion: "v1", Kind: "ConfigMap", Name: "c", UID: "3"},
	}}}
	before := pod.DeepCopy()
	out := dryRunPod(pod)
	for _, ref := range out.OwnerReferences {
		if ref.BlockOwnerDeletion != nil {
			t.Errorf("owner %s/%s keeps blockOwnerDeletion %v", ref.Kind, ref.Name, *ref.BlockOwnerDeletion)
		}
	}
	if len(out.OwnerReferences) != 3 || !ptr.Deref(out.OwnerReferences[0].Controller, false) {
		t.Errorf("owner references %+v, want the same three with the controller kept", out.OwnerReferences)
	}
	if !apiequality.Semantic.DeepEqual(pod, before) {
		t.Errorf("dryRunPod changed its argument: %+v, was %+v", pod.OwnerReferences, before.OwnerReferences)
	}
}
