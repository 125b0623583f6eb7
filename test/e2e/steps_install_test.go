//go:build e2e

package e2e

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"strings"
	"testing"
	"time"

	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// Step 1: kubectl apply -k test/e2e/overlay; the webhook becomes ready, issues its own
// certificate, patches the caBundle, and the API server reaches it.

func (s *suite) stepInstall(t *testing.T) {
	applied := time.Now()
	out := s.mustKubectl(t, 2*time.Minute, "apply", "-k", overlayDir)
	t.Logf("apply:\n%s", out)
	s.installed = true

	s.waitDeploymentRolledOut(t, systemNS, webhookDeploy, waitLong)

	var secret *corev1.Secret
	waitFor(t, "Secret "+systemNS+"/"+webhookSecret+" holding the CA and the serving certificate", waitShort, time.Second,
		func(ctx context.Context) (bool, string, error) {
			sec, err := s.cs.CoreV1().Secrets(systemNS).Get(ctx, webhookSecret, metav1.GetOptions{})
			if err != nil {
				return false, "", err
			}
			var missing []string
			for _, k := range []string{"ca.crt", "tls.crt", "tls.key"} {
				if len(sec.Data[k]) == 0 {
					missing = append(missing, k)
				}
			}
			secret = sec
			return len(missing) == 0, "missing keys: " + strings.Join(missing, ","), nil
		})

	dnsName := webhookService + "." + systemNS + ".svc"
	waitFor(t, "the caBundle of "+webhookConfig+" verifying the serving certificate for "+dnsName, waitShort, time.Second,
		func(ctx context.Context) (bool, string, error) {
			mwc, err := s.cs.AdmissionregistrationV1().MutatingWebhookConfigurations().Get(ctx, webhookConfig, metav1.GetOptions{})
			if err != nil {
				return false, "", err
			}
			if len(mwc.Webhooks) == 0 {
				return false, "no webhooks in the configuration", nil
			}
			for _, wh := range mwc.Webhooks {
				if len(wh.ClientConfig.CABundle) == 0 {
					return false, "webhook " + wh.Name + " has an empty caBundle", nil
				}
				if wh.FailurePolicy == nil || *wh.FailurePolicy != admissionregistrationv1.Ignore {
					return false, "", fmt.Errorf("webhook %s failurePolicy %v, want Ignore", wh.Name, wh.FailurePolicy)
				}
				// The Secret may have been re-read by the rotator since: take the latest.
				sec, err := s.cs.CoreV1().Secrets(systemNS).Get(ctx, webhookSecret, metav1.GetOptions{})
				if err == nil {
					secret = sec
				}
				if err := verifyServing(wh.ClientConfig.CABundle, secret.Data["tls.crt"], dnsName); err != nil {
					return false, "webhook " + wh.Name + ": " + err.Error(), nil
				}
			}
			return true, "", nil
		})

	// The API server calls the webhook through the Service's endpoints (--enable-aggregator-routing):
	// a dry-run create of a labelled pod comes back with the agent.
	probe := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{GenerateName: "kw-e2e-dry-run-", Namespace: "default",
			Labels: map[string]string{kwv1.LabelInject: kwv1.LabelInjectValue}},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "proxy", Image: gatewayImage, ImagePullPolicy: corev1.PullNever}}},
	}
	var mutated *corev1.Pod
	waitFor(t, "a dry-run create of a labelled pod coming back with the agent (the API server reaches the webhook)", waitLong, time.Second,
		func(ctx context.Context) (bool, string, error) {
			p, err := s.cs.CoreV1().Pods("default").Create(ctx, probe.DeepCopy(), metav1.CreateOptions{DryRun: []string{metav1.DryRunAll}})
			if err != nil {
				return false, "", err
			}
			if !hasAgent(p) {
				return false, "dry-run pod not mutated (containers: " + containerNames(p) + ")", nil
			}
			mutated = p
			return true, "", nil
		})
	s.note("Step 1: %s after `kubectl apply -k`, both webhook replicas were Ready with their self-issued certificate, the caBundle was patched, and a dry-run pod came back with the agent.",
		time.Since(applied).Round(100*time.Millisecond))
	agent := findContainer(mutated, kwv1.AgentContainerName)
	if agent.Image != agentImage {
		t.Errorf("injected agent image %q, want %q (kustomize images: must rewrite AGENT_IMAGE)", agent.Image, agentImage)
	}
	if agent.ImagePullPolicy != corev1.PullNever {
		t.Errorf("injected agent imagePullPolicy %q, want Never (--agent-image-pull-policy from the overlay)", agent.ImagePullPolicy)
	}
}

// verifyServing checks that the serving certificate chains to the caBundle for dnsName.
func verifyServing(caBundle, servingPEM []byte, dnsName string) error {
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caBundle) {
		return fmt.Errorf("the caBundle holds no PEM certificate")
	}
	var leaf *x509.Certificate
	inter := x509.NewCertPool()
	rest := servingPEM
	for {
		var b *pem.Block
		b, rest = pem.Decode(rest)
		if b == nil {
			break
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			return fmt.Errorf("tls.crt: %v", err)
		}
		if leaf == nil {
			leaf = c
		} else {
			inter.AddCert(c)
		}
	}
	if leaf == nil {
		return fmt.Errorf("tls.crt holds no certificate")
	}
	_, err := leaf.Verify(x509.VerifyOptions{DNSName: dnsName, Roots: pool, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	if err != nil {
		return fmt.Errorf("the serving certificate does not verify against the caBundle: %v", err)
	}
	return nil
}

func containerNames(p *corev1.Pod) string {
	var n []string
	for _, c := range p.Spec.InitContainers {
		n = append(n, "init:"+c.Name)
	}
	for _, c := range p.Spec.Containers {
		n = append(n, c.Name)
	}
	return strings.Join(n, ",")
}

func findContainer(p *corev1.Pod, name string) corev1.Container {
	for _, c := range append(append([]corev1.Container{}, p.Spec.InitContainers...), p.Spec.Containers...) {
		if c.Name == name {
			return c
		}
	}
	return corev1.Container{}
}
