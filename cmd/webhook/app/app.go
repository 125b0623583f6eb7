// Package app is the kong-watcher webhook's manager: flags, TLS, health checks, and the
// injection handler mounted on controller-runtime's webhook server. cmd/webhook only parses
// flags and calls Run; the envtest suite and the benchmark run this same code.
package app

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"

	"github.com/go-logr/logr"
	"k8s.io/apimachinery/pkg/runtime"
	utilruntime "k8s.io/apimachinery/pkg/util/runtime"
	"k8s.io/client-go/kubernetes"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	"k8s.io/client-go/rest"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/healthz"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"
	"sigs.k8s.io/controller-runtime/pkg/webhook"

	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/internal/version"
	"github.com/kong-watcher/kong-watcher/webhook/certs"
	"github.com/kong-watcher/kong-watcher/webhook/ingest"
	"github.com/kong-watcher/kong-watcher/webhook/inject"
)

// Scheme holds the built-in types only: the webhook has no CRDs.
func Scheme() *runtime.Scheme {
	s := runtime.NewScheme()
	utilruntime.Must(clientgoscheme.AddToScheme(s))
	return s
}

// Run starts the webhook and blocks until ctx is cancelled or a component fails. o must
// have been Completed.
func Run(ctx context.Context, cfg *rest.Config, o *Options, log logr.Logger) error {
	// HTTP/2 is off unless asked for (kubebuilder's default): the API server speaks HTTP/1.1
	// to webhooks fine, and it sidesteps the HTTP/2 Rapid Reset / Stream Cancellation CVEs.
	var tlsOpts []func(*tls.Config)
	if !o.EnableHTTP2 {
		tlsOpts = append(tlsOpts, func(c *tls.Config) { c.NextProtos = []string{"http/1.1"} })
	}
	tlsOpts = append(tlsOpts, func(c *tls.Config) { c.MinVersion = tls.VersionTLS12 })

	webhookServer := webhook.NewServer(webhook.Options{
		Host:     o.WebhookHost,
		Port:     o.WebhookPort,
		CertDir:  o.WebhookCertPath,
		CertName: o.WebhookCertName,
		KeyName:  o.WebhookCertKey,
		TLSOpts:  tlsOpts,
	})

	mgr, err := ctrl.NewManager(cfg, ctrl.Options{
		Scheme: Scheme(),
		Logger: log,
		Metrics: metricsserver.Options{
			BindAddress:   o.MetricsAddr,
			SecureServing: o.SecureMetrics,
			TLSOpts:       tlsOpts,
		},
		HealthProbeBindAddress: o.ProbeAddr,
		// Admission and reports run on every replica; only the rollup is elected, and it holds
		// its own Lease (elected) so that losing it never stops the rest.
		LeaderElection: false,
	})
	if err != nil {
		return fmt.Errorf("creating manager: %w", err)
	}

	// certsReady closes once the serving pair is in the cert dir and the CA is in the
	// webhook configuration. Until then the webhook server is not even added to the manager
	// (it would fail to load the missing files) and /readyz fails, so a Service never
	// routes the API server to a replica that cannot complete a TLS handshake it trusts.
	var certsReady <-chan struct{}
	if o.DisableCertRotation {
		c := make(chan struct{})
		close(c)
		certsReady = c
	} else {
		certsReady, err = certs.Setup(ctx, mgr, certs.Options{
			Namespace:         o.Namespace,
			SecretName:        o.SecretName,
			ServiceName:       o.ServiceName,
			ExtraDNSNames:     o.ExtraDNSNames,
			WebhookConfigName: o.WebhookConfigName,
			CertDir:           o.WebhookCertPath,
			CertName:          o.WebhookCertName,
			KeyName:           o.WebhookCertKey,
		}, log.WithName("certs"))
		if err != nil {
			return err
		}
	}

	o.Agent.Report.CA = newFileCache(filepath.Join(o.WebhookCertPath, certs.CAFileName)).read
	fitSidecarMode(cfg, o, log)
	hook := inject.NewWebhook(o.Agent, mgr.GetEventRecorder(EventSource), log.WithName("inject"))
	if o.VerifyInjectedPods {
		// A client of its own: protobuf (pods are big, and this runs inside an admission's
		// deadline), and no client-side rate limit queuing an admission behind others.
		ccfg := rest.CopyConfig(cfg)
		ccfg.ContentType = "application/vnd.kubernetes.protobuf"
		ccfg.AcceptContentTypes = "application/vnd.kubernetes.protobuf,application/json"
		ccfg.QPS, ccfg.Burst = -1, 0
		cs, err := kubernetes.NewForConfig(ccfg)
		if err != nil {
			return fmt.Errorf("creating the dry-run client: %w", err)
		}
		hook.WithAdmissionCheck(inject.DryRunCreate(cs))
	}

	if err := mgr.AddHealthzCheck("healthz", healthz.Ping); err != nil {
		return fmt.Errorf("adding health check: %w", err)
	}
	webhookServer.Register(inject.Path, hook)
	agentEvents, stopAgentEvents, err := ingest.NewEventRecorder(cfg, kwv1.AgentContainerName)
	if err != nil {
		return err
	}
	defer stopAgentEvents()
	reports, err := newReportHandler(cfg, o, agentEvents, log.WithName("reports"))
	if err != nil {
		return err
	}
	webhookServer.Register(kwv1.ReportPath, reports)
	workloadEvents, stopWorkloadEvents, err := ingest.NewEventRecorder(cfg, RollupEventSource)
	if err != nil {
		return err
	}
	defer stopWorkloadEvents()
	newRoll := func() (manager.Runnable, error) { return newRollup(cfg, o, workloadEvents, log.WithName("rollup")) }
	var roll manager.Runnable = &elected{cfg: cfg, namespace: o.Namespace, name: LeaderElectionID, newRun: newRoll,
		log: log.WithName("election")}
	if !o.LeaderElect {
		// Every replica combines and writes (the writes are idempotent merge patches).
		if roll, err = newRoll(); err != nil {
			return err
		}
		roll = always{roll}
	}
	if err := mgr.Add(roll); err != nil {
		return fmt.Errorf("adding the rollup: %w", err)
	}
	if err := mgr.AddReadyzCheck("webhook", func(req *http.Request) error {
		select {
		case <-certsReady:
			return webhookServer.StartedChecker()(req)
		default:
			return errors.New("webhook certificates are not ready yet")
		}
	}); err != nil {
		return fmt.Errorf("adding ready check: %w", err)
	}
	// The webhook server starts only once the certificates exist (it loads them at start);
	// the pattern Gatekeeper uses with the same rotator. It is deliberately not the
	// manager's own webhook server (mgr.GetWebhookServer), which would start at once.
	if err := mgr.Add(&gatedServer{srv: webhookServer, ready: certsReady, log: log, port: o.WebhookPort}); err != nil {
		return fmt.Errorf("adding webhook server: %w", err)
	}

	log.Info("starting kong-watcher webhook", "version", version.Version, "namespace", o.Namespace,
		"certRotation", !o.DisableCertRotation, "agentImage", o.Agent.Image,
		"nativeSidecar", o.Agent.NativeSidecar, "privileged", o.Agent.Privileged,
		"excludedNamespaces", o.Agent.ExcludedNamespaces, "verifyInjectedPods", o.VerifyInjectedPods)
	if err := mgr.Start(ctx); err != nil {
		return fmt.Errorf("running manager: %w", err)
	}
	return nil
}

// always runs a runnable on every replica, whatever it says about leader election.
type always struct{ manager.Runnable }

func (always) NeedLeaderElection() bool { return false }

// gatedServer runs the webhook server once ready is closed.
type gatedServer struct {
	srv   webhook.Server
	ready <-chan struct{}
	log   logr.Logger
	port  int
}

// NeedLeaderElection is false: every replica serves admission requests.
func (g *gatedServer) NeedLeaderElection() bool { return false }

func (g *gatedServer) Start(ctx context.Context) error {
	select {
	case <-g.ready:
	case <-ctx.Done():
		return nil
	}
	g.log.Info("certificates ready, starting webhook server", "path", inject.Path, "port", g.port)
	return g.srv.Start(ctx)
}
