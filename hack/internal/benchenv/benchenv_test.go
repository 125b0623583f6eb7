package benchenv

import (
	"os/exec"
	"strings"
	"testing"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// TestKongPodTemplate: labelled for injection, and each call a copy the caller may change
// (the benchmarks add the pod-template-hash label to theirs).
func TestKongPodTemplate(t *testing.T) {
	a := KongPodTemplate("a")
	if a.Labels[kwv1.LabelInject] != kwv1.LabelInjectValue || a.Spec.ServiceAccountName != KongServiceAccount ||
		len(a.Spec.Containers) != 1 || len(a.Spec.InitContainers) != 1 {
		t.Fatalf("template: %+v", a)
	}
	a.Labels["pod-template-hash"] = "x"
	a.Spec.Containers[0].Env[0].Value = "changed"
	if b := KongPodTemplate("b"); b.Labels["pod-template-hash"] != "" || b.Spec.Containers[0].Env[0].Value != "off" ||
		b.Labels["app.kubernetes.io/instance"] != "b" {
		t.Fatalf("templates share state: %+v", b)
	}
}

func TestRenderConfigDefault(t *testing.T) {
	if _, err := exec.LookPath("kubectl"); err != nil {
		t.Skip("no kubectl")
	}
	docs, err := RenderConfigDefault()
	if err != nil {
		t.Fatal(err)
	}
	var mwc bool
	for _, d := range docs {
		if strings.TrimSpace(d) == "" {
			t.Fatal("blank document kept")
		}
		mwc = mwc || strings.Contains(d, "kind: MutatingWebhookConfiguration")
	}
	if !mwc {
		t.Fatalf("%d documents, no MutatingWebhookConfiguration", len(docs))
	}
}
