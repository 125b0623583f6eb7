package benchenv

import (
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/utils/ptr"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// KongServiceAccount is the ServiceAccount of the Kong pods (the Kong Helm chart's default).
const KongServiceAccount = "kong"

// KongPodTemplate is the pod template of a Kong Deployment (release instance) labelled for
// injection, roughly what the Kong Helm chart renders: Kong's env, ports, probes, volumes,
// security context and an init container. Its size and shape are what the webhook decodes and
// patches and what the manager's PATCHes rewrite, so the benchmarks use it rather than a
// minimal pod. Each call returns a fresh copy.
func KongPodTemplate(instance string) corev1.PodTemplateSpec {
	return corev1.PodTemplateSpec{
		ObjectMeta: metav1.ObjectMeta{
			Labels: map[string]string{"app.kubernetes.io/name": "kong", "app.kubernetes.io/instance": instance,
				kwv1.LabelInject: kwv1.LabelInjectValue},
			Annotations: map[string]string{"kuma.io/gateway": "enabled", "traffic.sidecar.istio.io/includeInboundPorts": ""},
		},
		Spec: corev1.PodSpec{
			ServiceAccountName: KongServiceAccount,
			InitContainers: []corev1.Container{{Name: "clear-stale-pid", Image: "kong:3.9",
				Command:      []string{"rm", "-vrf", "$KONG_PREFIX/pids"},
				VolumeMounts: []corev1.VolumeMount{{Name: "kong-prefix-dir", MountPath: "/kong_prefix/"}}}},
			Containers: []corev1.Container{{
				Name: "proxy", Image: "kong:3.9", ImagePullPolicy: corev1.PullIfNotPresent,
				Env: kongEnv(),
				Ports: []corev1.ContainerPort{{Name: "proxy", ContainerPort: 8000}, {Name: "proxy-tls", ContainerPort: 8443},
					{Name: "status", ContainerPort: 8100}},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
					Path: "/status/ready", Port: intstr.FromString("status")}}},
				LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{
					Path: "/status", Port: intstr.FromString("status")}}},
				Resources: corev1.ResourceRequirements{Requests: corev1.ResourceList{
					corev1.ResourceCPU: resource.MustParse("500m"), corev1.ResourceMemory: resource.MustParse("512Mi")}},
				VolumeMounts: []corev1.VolumeMount{{Name: "kong-prefix-dir", MountPath: "/kong_prefix/"},
					{Name: "kong-tmp", MountPath: "/tmp"}},
				SecurityContext: &corev1.SecurityContext{ReadOnlyRootFilesystem: ptr.To(true), RunAsNonRoot: ptr.To(true),
					RunAsUser: ptr.To[int64](1000), AllowPrivilegeEscalation: ptr.To(false),
					Capabilities: &corev1.Capabilities{Drop: []corev1.Capability{"ALL"}}},
			}},
			Volumes: []corev1.Volume{
				{Name: "kong-prefix-dir", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
				{Name: "kong-tmp", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
			},
		},
	}
}

// kongEnv is the proxy container's environment: DB-less Kong with the chart's listeners and
// logs, and POD_NAME from the downward API.
func kongEnv() []corev1.EnvVar {
	kv := [][2]string{
		{"KONG_DATABASE", "off"}, {"KONG_PROXY_LISTEN", "0.0.0.0:8000, 0.0.0.0:8443 http2 ssl"},
		{"KONG_ADMIN_LISTEN", "127.0.0.1:8444 http2 ssl"}, {"KONG_STATUS_LISTEN", "0.0.0.0:8100"},
		{"KONG_PROXY_ACCESS_LOG", "/dev/stdout"}, {"KONG_PROXY_ERROR_LOG", "/dev/stderr"},
		{"KONG_ADMIN_ACCESS_LOG", "/dev/stdout"}, {"KONG_ADMIN_ERROR_LOG", "/dev/stderr"},
		{"KONG_PREFIX", "/kong_prefix/"}, {"KONG_NGINX_WORKER_PROCESSES", "2"},
		{"KONG_PLUGINS", "bundled"}, {"KONG_ROUTER_FLAVOR", "traditional_compatible"},
	}
	out := make([]corev1.EnvVar, 0, len(kv)+1)
	for _, p := range kv {
		out = append(out, corev1.EnvVar{Name: p[0], Value: p[1]})
	}
	return append(out, corev1.EnvVar{Name: "POD_NAME", ValueFrom: &corev1.EnvVarSource{
		FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.name"}}})
}
