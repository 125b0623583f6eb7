// Package certs gives the admission webhook self-managed TLS, so that `kubectl apply -k
// config/default` works without cert-manager.
//
// It wires open-policy-agent/cert-controller's rotator (the one Gatekeeper uses): the rotator
// keeps a CA and a serving certificate in a Secret of the webhook's namespace, renews them
// before they expire and writes the CA into the caBundle of the MutatingWebhookConfiguration.
// The rotator does not write the serving pair to disk (Gatekeeper mounts the Secret as a
// volume); this package adds a small syncer that copies it from the Secret into the cert dir
// as soon as it changes, so a replica serves a new certificate immediately instead of after
// the kubelet's next Secret sync (up to a minute or more), and the cert dir can be an emptyDir.
//
// Every replica runs the rotator without leader election: each needs the files in its own
// cert dir, and concurrent writers are safe because the Secret and the webhook
// configuration are updated with optimistic concurrency (a loser re-reads and finds valid
// certificates).
package certs

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/go-logr/logr"
	"github.com/open-policy-agent/cert-controller/pkg/rotator"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/manager"
)

// Options says where the certificates live and what they are for.
type Options struct {
	// Namespace of the webhook: holds the Secret and the Service.
	Namespace string
	// SecretName is the Secret holding ca.crt, ca.key and the serving pair.
	SecretName string
	// ServiceName is the webhook Service; the certificate is issued for
	// <ServiceName>.<Namespace>.svc (what the API server dials) and its .cluster.local form.
	ServiceName string
	// ExtraDNSNames are added to the serving certificate (e.g. "localhost" in tests).
	ExtraDNSNames []string
	// WebhookConfigName is the MutatingWebhookConfiguration whose caBundle is kept current.
	WebhookConfigName string
	// CertDir, CertName and KeyName: where the webhook server reads its serving pair.
	CertDir  string
	CertName string
	KeyName  string
}

// Setup adds the rotator and the cert-dir syncer to mgr. It must run before mgr.Start. The
// returned channel is closed once the serving pair is in CertDir and the CA is in the
// webhook configuration: only then may the webhook server start and readiness pass.
func Setup(ctx context.Context, mgr manager.Manager, o Options, log logr.Logger) (<-chan struct{}, error) {
	if o.Namespace == "" || o.SecretName == "" || o.ServiceName == "" || o.WebhookConfigName == "" || o.CertDir == "" {
		return nil, errors.New("certs: namespace, secret, service, webhook configuration name and cert dir are required")
	}
	if o.CertName == "" {
		o.CertName = "tls.crt"
	}
	if o.KeyName == "" {
		o.KeyName = "tls.key"
	}
	if err := os.MkdirAll(o.CertDir, 0o700); err != nil {
		return nil, fmt.Errorf("certs: cert dir: %w", err)
	}
	// The rotator only updates the Secret; config/webhook ships it empty. Recreate it if it is
	// gone (deleted by hand, or the webhook runs without those manifests).
	if err := ensureSecret(ctx, mgr, o); err != nil {
		return nil, err
	}

	ready := make(chan struct{})
	svc := o.ServiceName + "." + o.Namespace + ".svc"
	cr := &rotator.CertRotator{
		SecretKey:      types.NamespacedName{Namespace: o.Namespace, Name: o.SecretName},
		CertDir:        o.CertDir,
		CertName:       o.CertName,
		KeyName:        o.KeyName,
		CAName:         "kong-watcher-ca",
		CAOrganization: "kong-watcher",
		DNSName:        svc,
		ExtraDNSNames:  append([]string{svc + ".cluster.local"}, o.ExtraDNSNames...),
		IsReady:        ready,
		Webhooks:       []rotator.WebhookInfo{{Name: o.WebhookConfigName, Type: rotator.Mutating}},
		// See the package comment: every replica rotates and serves.
		RequireLeaderElection: false,
		// Reconcile the caBundle only once the files are there, so readiness means both.
		EnableReadinessCheck: true,
		FieldOwner:           "kong-watcher-webhook",
	}
	if err := rotator.AddRotator(mgr, cr); err != nil {
		return nil, fmt.Errorf("certs: adding rotator: %w", err)
	}
	s, err := newSyncer(mgr, o, log)
	if err != nil {
		return nil, err
	}
	if err := mgr.Add(s); err != nil {
		return nil, fmt.Errorf("certs: adding syncer: %w", err)
	}
	return ready, nil
}

func ensureSecret(ctx context.Context, mgr manager.Manager, o Options) error {
	key := types.NamespacedName{Namespace: o.Namespace, Name: o.SecretName}
	err := mgr.GetAPIReader().Get(ctx, key, &corev1.Secret{})
	if err == nil {
		return nil
	}
	if !apierrors.IsNotFound(err) {
		return fmt.Errorf("certs: reading secret %s: %w", key, err)
	}
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: o.Namespace,
			Name:      o.SecretName,
			Labels:    map[string]string{"app.kubernetes.io/name": "kong-watcher", "app.kubernetes.io/component": "webhook"},
		},
		Type: corev1.SecretTypeOpaque,
	}
	if err := mgr.GetClient().Create(ctx, sec); err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("certs: creating secret %s: %w", key, err)
	}
	return nil
}

// syncer copies the serving pair from the Secret into the cert dir whenever it changes.
// controller-runtime's certwatcher then reloads the files (fsnotify, and a 10 s poll).
type syncer struct {
	cache cache.Cache
	o     Options
	log   logr.Logger
}

func newSyncer(mgr manager.Manager, o Options, log logr.Logger) (*syncer, error) {
	// A cache that sees only this one Secret: list/watch with a metadata.name field selector.
	c, err := cache.New(mgr.GetConfig(), cache.Options{
		Scheme: mgr.GetScheme(),
		Mapper: mgr.GetRESTMapper(),
		ByObject: map[client.Object]cache.ByObject{
			&corev1.Secret{}: {
				Namespaces: map[string]cache.Config{o.Namespace: {}},
				Field:      fields.OneTermEqualSelector("metadata.name", o.SecretName),
			},
		},
	})
	if err != nil {
		return nil, fmt.Errorf("certs: syncer cache: %w", err)
	}
	return &syncer{cache: c, o: o, log: log.WithName("cert-syncer")}, nil
}

// NeedLeaderElection is false: every replica serves, so every replica needs the files.
func (s *syncer) NeedLeaderElection() bool { return false }

func (s *syncer) Start(ctx context.Context) error {
	inf, err := s.cache.GetInformer(ctx, &corev1.Secret{})
	if err != nil {
		return fmt.Errorf("certs: secret informer: %w", err)
	}
	onSecret := func(obj any) {
		sec, ok := obj.(*corev1.Secret)
		if !ok || sec.Name != s.o.SecretName {
			return
		}
		if err := s.write(sec); err != nil {
			s.log.Error(err, "writing serving certificate to cert dir", "dir", s.o.CertDir)
		}
	}
	if _, err := inf.AddEventHandler(toolscache.ResourceEventHandlerFuncs{
		AddFunc:    onSecret,
		UpdateFunc: func(_, obj any) { onSecret(obj) },
	}); err != nil {
		return fmt.Errorf("certs: secret handler: %w", err)
	}
	return s.cache.Start(ctx)
}

// write puts the pair on disk if it changed. Each file is replaced atomically (temp file +
// rename), so a reader never sees half a PEM; the key goes first so that a certwatcher
// reading between the two renames at worst pairs a new key with the old cert, which fails to
// load and keeps the previous pair until its next read.
func (s *syncer) write(sec *corev1.Secret) error {
	crt, key := sec.Data[s.o.CertName], sec.Data[s.o.KeyName]
	if len(crt) == 0 || len(key) == 0 {
		return nil // the rotator has not filled the Secret yet
	}
	changed := false
	// ca.crt goes too: the webhook hands it to every agent it injects, to verify the manager.
	files := []struct {
		name string
		data []byte
	}{{s.o.KeyName, key}, {s.o.CertName, crt}}
	if ca := sec.Data[CAFileName]; len(ca) > 0 {
		files = append(files, struct {
			name string
			data []byte
		}{CAFileName, ca})
	}
	for _, f := range files {
		path := filepath.Join(s.o.CertDir, f.name)
		if old, err := os.ReadFile(path); err == nil && bytes.Equal(old, f.data) {
			continue
		}
		if err := writeAtomic(path, f.data); err != nil {
			return err
		}
		changed = true
	}
	if changed {
		s.log.Info("serving certificate written", "dir", s.o.CertDir, "resourceVersion", sec.ResourceVersion)
	}
	return nil
}

// CAFileName is the CA bundle's name in the Secret and in the cert dir (as cert-manager names it too).
const CAFileName = "ca.crt"

func writeAtomic(path string, data []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name()) // no-op after a successful rename
	if _, err := tmp.Write(data); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}
