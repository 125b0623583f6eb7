package inject

import (
	"context"
	"fmt"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// DryRunCreate is the AdmissionCheck that asks the API server itself: a server-side dry-run
// create of the injected pod runs every admission step the real create will (Pod Security
// with the namespace's labels or the cluster's default level, quotas and limit ranges,
// validating webhooks and policies, validation), and stores nothing. Its own call to this
// webhook finds the agent already there and changes nothing.
//
// It needs `create pods` (RBAC has no dry-run-only verb); config/webhook's
// ValidatingAdmissionPolicy refuses any pod create of the webhook's identity that is not a
// dry run, so the right can only ever be used to ask.
//
// The pod is sent without blockOwnerDeletion on its owner references (see dryRunPod).
func DryRunCreate(c kubernetes.Interface) AdmissionCheck {
	return func(ctx context.Context, pod *corev1.Pod, namespace string) error {
		_, err := c.CoreV1().Pods(namespace).Create(ctx, dryRunPod(pod), metav1.CreateOptions{
			DryRun:       []string{metav1.DryRunAll},
			FieldManager: "kong-watcher-webhook",
		})
		if err == nil {
			return nil
		}
		if status, ok := err.(apierrors.APIStatus); ok {
			return fmt.Errorf("dry-run create: %s", status.Status().Message)
		}
		return fmt.Errorf("dry-run create: %w", err)
	}
}

// dryRunPod is the pod the dry run creates: a copy of pod whose owner references do not set
// blockOwnerDeletion. With the OwnerReferencesPermissionEnforcement admission plugin
// (OpenShift, hardened clusters) only a user who may update the owner's finalizers may set
// it: the ReplicaSet controller creating the pod may, the webhook's identity may not and must
// not be given that right. Asked with the flag, the API server would refuse every owned pod
// for a reason the real create does not have. The flag only orders garbage collection, so
// nothing else the dry run checks depends on it. pod itself, which the patch is built from,
// is left as it is.
func dryRunPod(pod *corev1.Pod) *corev1.Pod {
	out := pod.DeepCopy()
	for i := range out.OwnerReferences {
		out.OwnerReferences[i].BlockOwnerDeletion = nil
	}
	return out
}
