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
func DryRunCreate(c kubernetes.Interface) AdmissionCheck {
	return func(ctx context.Context, pod *corev1.Pod, namespace string) error {
		_, err := c.CoreV1().Pods(namespace).Create(ctx, pod, metav1.CreateOptions{
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
