package inject

import (
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// TestReportingSettings: the agent gets the manager's URL, CA, token path and (when the webhook
// knows it) the Service's address; the token volume is projected for the manager's audience
// and mounted in the agent only.
func TestReportingSettings(t *testing.T) {
	cfg := testConfig()
	cfg.Report.FallbackAddr = "10.96.3.4:443"
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{kwv1.LabelInject: "true"}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "proxy", Image: "kong"}}}}
	Inject(pod, cfg)
	env := envOf(t, pod)
	if env[kwv1.EnvManagerURL] != cfg.Report.URL || env[kwv1.EnvManagerCA] != testCA ||
		env[kwv1.EnvTokenFile] != kwv1.TokenMountPath+"/"+kwv1.TokenFileName || env[kwv1.EnvManagerAddr] != "10.96.3.4:443" {
		t.Errorf("agent env %v", env)
	}
	var vol *corev1.Volume
	for i := range pod.Spec.Volumes {
		if pod.Spec.Volumes[i].Name == kwv1.TokenVolumeName {
			vol = &pod.Spec.Volumes[i]
		}
	}
	if vol == nil || vol.Projected == nil || len(vol.Projected.Sources) != 1 || vol.Projected.Sources[0].ServiceAccountToken == nil ||
		vol.Projected.Sources[0].ServiceAccountToken.Audience != kwv1.ReportAudience {
		t.Fatalf("token volume %+v", vol)
	}
	if len(pod.Spec.Containers[0].VolumeMounts) != 0 {
		t.Errorf("Kong's container got mounts: %v", pod.Spec.Containers[0].VolumeMounts)
	}

	cfg.Report.FallbackAddr = ""
	pod = &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "proxy", Image: "kong"}}}}
	Inject(pod, cfg)
	if _, ok := envOf(t, pod)[kwv1.EnvManagerAddr]; ok {
		t.Error("no Service address known, but one injected")
	}
}
