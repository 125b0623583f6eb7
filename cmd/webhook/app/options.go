package app

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/kong-watcher/kong-watcher/api/agentenv"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
	"github.com/kong-watcher/kong-watcher/webhook/ingest"
	"github.com/kong-watcher/kong-watcher/webhook/inject"
)

// Names the binary refers to by string. They are what config/default renders (namespace
// kong-watcher-system, namePrefix kong-watcher-); test/envtest/kustomize_test.go checks it.
const (
	DefaultNamespace         = "kong-watcher-system"
	DefaultServiceName       = "kong-watcher-webhook-service"
	DefaultSecretName        = "kong-watcher-webhook-cert"
	DefaultWebhookConfigName = "kong-watcher-mutating-webhook-configuration"
	DefaultCertDir           = "/tmp/k8s-webhook-server/serving-certs" // kubebuilder's default
	LeaderElectionID         = "kong-watcher-webhook.kong-watcher.io"
	// EventSource is the component name on the Events the webhook records.
	EventSource = "kong-watcher-webhook"
	// EnvAgentImage is the default of --agent-image: a Deployment env var, so that kustomize's
	// image transformer can rewrite it (config/default/kustomizeconfig.yaml).
	EnvAgentImage = "AGENT_IMAGE"
	// EnvPodNamespace is the webhook's own namespace (downward API).
	EnvPodNamespace = "POD_NAMESPACE"
)

// Options are the webhook's command-line settings. The first block follows kubebuilder v4's
// scaffolded main.go; the agent block is what gets injected into Kong pods.
type Options struct {
	MetricsAddr   string
	SecureMetrics bool
	ProbeAddr     string
	LeaderElect   bool
	EnableHTTP2   bool

	WebhookHost     string
	WebhookPort     int
	WebhookCertPath string
	WebhookCertName string
	WebhookCertKey  string

	// DisableCertRotation: certificates come from elsewhere (config/certmanager).
	DisableCertRotation bool
	// Namespace of the webhook (POD_NAMESPACE); holds the cert Secret and the Service.
	Namespace         string
	ServiceName       string
	SecretName        string
	WebhookConfigName string
	// ExtraDNSNames are added to the generated serving certificate.
	ExtraDNSNames []string

	Agent inject.Config
	// ManagerURL is the report endpoint injected into agents (KONG_WATCHER_MANAGER_URL); empty:
	// https://<ServiceName>.<Namespace>.svc:443 + v1alpha1.ReportPath.
	ManagerURL string
	// ReportAudience is the audience of the agents' projected tokens.
	ReportAudience string
	// ReportTokenTTL is the projected token's lifetime (the kubelet rotates it at 80%).
	ReportTokenTTL time.Duration
	// ReportMaxInFlight bounds the reports one replica handles at once.
	ReportMaxInFlight int
	// ReportReviewsPerAddress bounds the TokenReviews of new report tokens from one client
	// address, per second (0: only the overall bound).
	ReportReviewsPerAddress float64
	// RollupInterval is how often the workloads' combined stats are recomputed;
	// RollupTrafficStatsInterval how often a TrafficStats Event is recorded on a workload.
	RollupInterval, RollupTrafficStatsInterval time.Duration
	// VerifyInjectedPods: dry-run every injected pod against the API server and leave it
	// unchanged when it would be refused (inject.DryRunCreate).
	VerifyInjectedPods bool

	// Raw agent resource quantities, parsed into Agent.Resources by Complete.
	AgentCPURequest, AgentMemoryRequest, AgentCPULimit, AgentMemoryLimit string
	excludedNamespaces                                                   string
	extraDNSNames                                                        string
	pullPolicy                                                           string
}

// NewOptions returns the defaults, the same as running the binary without flags.
func NewOptions() *Options {
	agent := inject.DefaultConfig()
	if img := os.Getenv(EnvAgentImage); img != "" {
		agent.Image = img
	}
	return &Options{
		MetricsAddr:                "0",
		ProbeAddr:                  ":8081",
		WebhookPort:                9443,
		WebhookCertPath:            DefaultCertDir,
		WebhookCertName:            "tls.crt",
		WebhookCertKey:             "tls.key",
		Namespace:                  podNamespace(),
		ServiceName:                DefaultServiceName,
		SecretName:                 DefaultSecretName,
		WebhookConfigName:          DefaultWebhookConfigName,
		Agent:                      agent,
		VerifyInjectedPods:         true,
		LeaderElect:                true,
		ReportAudience:             v1alpha1.ReportAudience,
		ReportTokenTTL:             time.Hour,
		ReportMaxInFlight:          32,
		ReportReviewsPerAddress:    ingest.DefaultAuthOptions("").SourceReviewsPerSecond,
		RollupInterval:             30 * time.Second,
		RollupTrafficStatsInterval: 5 * time.Minute,
		AgentCPURequest:            quantity(agent.Resources.Requests, corev1.ResourceCPU),
		AgentMemoryRequest:         quantity(agent.Resources.Requests, corev1.ResourceMemory),
		AgentCPULimit:              quantity(agent.Resources.Limits, corev1.ResourceCPU),
		AgentMemoryLimit:           quantity(agent.Resources.Limits, corev1.ResourceMemory),
		excludedNamespaces:         strings.Join(agent.ExcludedNamespaces, ","),
		pullPolicy:                 string(agent.PullPolicy),
		DisableCertRotation:        false,
	}
}

// quantity is l's name as a flag value, "" when l has none.
func quantity(l corev1.ResourceList, name corev1.ResourceName) string {
	if q, ok := l[name]; ok {
		return q.String()
	}
	return ""
}

// podNamespace: POD_NAMESPACE (downward API), else the service account's namespace file
// (in a pod without the env var), else the namespace config/default installs into.
func podNamespace() string {
	if ns := os.Getenv(EnvPodNamespace); ns != "" {
		return ns
	}
	if b, err := os.ReadFile("/var/run/secrets/kubernetes.io/serviceaccount/namespace"); err == nil {
		if ns := strings.TrimSpace(string(b)); ns != "" {
			return ns
		}
	}
	return DefaultNamespace
}

// serviceAddr is the cluster IP and port of the webhook's own Service, from the variables the
// kubelet sets for every Service of the namespace that existed when this pod started
// (enableServiceLinks, on by default); "" when they are absent. Agents dial it when the
// Service's name does not resolve in their pod. No API call and no right is needed for it.
func serviceAddr(service string) string {
	prefix := strings.ToUpper(strings.ReplaceAll(service, "-", "_")) + "_SERVICE_"
	host := os.Getenv(prefix + "HOST")
	port := os.Getenv(prefix + "PORT_HTTPS")
	if port == "" {
		port = os.Getenv(prefix + "PORT")
	}
	if host == "" || port == "" {
		return ""
	}
	return net.JoinHostPort(host, port)
}

// BindFlags registers every flag on fs.
func (o *Options) BindFlags(fs *flag.FlagSet) {
	fs.StringVar(&o.MetricsAddr, "metrics-bind-address", o.MetricsAddr,
		"The address the metrics endpoint binds to. Use :8443 for HTTPS or :8080 for HTTP, or leave as 0 to disable the metrics service.")
	fs.BoolVar(&o.SecureMetrics, "metrics-secure", o.SecureMetrics,
		"If set, the metrics endpoint is served over HTTPS (self-signed certificate). It carries only the webhook's own "+
			"request metrics, so it is plain HTTP by default.")
	fs.StringVar(&o.ProbeAddr, "health-probe-bind-address", o.ProbeAddr, "The address the probe endpoint binds to.")
	fs.BoolVar(&o.LeaderElect, "leader-elect", o.LeaderElect,
		"Elect one replica (a Lease) to combine the pods' stats into their Deployments', StatefulSets' and "+
			"DaemonSets' annotations. Every replica serves admission and reports either way, and losing the Lease "+
			"only stops the combining. Off: every replica combines and writes.")
	fs.StringVar(&o.ManagerURL, "manager-url", o.ManagerURL,
		"The report endpoint injected into agents (default https://<webhook-service-name>.<namespace>.svc:443"+
			v1alpha1.ReportPath+").")
	fs.StringVar(&o.ReportAudience, "report-token-audience", o.ReportAudience,
		"The audience of the projected service-account token agents report with; tokens for any other audience are refused.")
	fs.DurationVar(&o.ReportTokenTTL, "report-token-ttl", o.ReportTokenTTL,
		"The lifetime of the agents' projected report token (10m..24h); the kubelet rotates it at 80%.")
	fs.DurationVar(&o.RollupInterval, "rollup-interval", o.RollupInterval,
		"How often the elected replica recomputes each workload's combined stats from its pods' (5s..1h).")
	fs.DurationVar(&o.RollupTrafficStatsInterval, "rollup-traffic-stats-interval", o.RollupTrafficStatsInterval,
		"How often a TrafficStats Event is recorded on a workload (0: never).")
	fs.IntVar(&o.ReportMaxInFlight, "report-max-in-flight", o.ReportMaxInFlight,
		"Reports one replica handles at once; more are answered 429 and retried by the agent.")
	fs.Float64Var(&o.ReportReviewsPerAddress, "report-reviews-per-address", o.ReportReviewsPerAddress,
		"TokenReviews per second that new report tokens from one client address may cause (a burst of 5x), "+
			"so that forged tokens from one place cannot use up the 20 a second of all (0: no such bound).")
	fs.BoolVar(&o.VerifyInjectedPods, "verify-injected-pods", o.VerifyInjectedPods,
		"Dry-run every injected pod against the API server first and create it without the agent when it would be "+
			"refused (Pod Security, quotas, policy engines). Needs the create-pods right the ValidatingAdmissionPolicy "+
			"in config/webhook limits to dry runs.")
	fs.BoolVar(&o.EnableHTTP2, "enable-http2", o.EnableHTTP2,
		"If set, HTTP/2 will be enabled for the webhook server (off by default: HTTP/2 Stream Cancellation and Rapid Reset CVEs).")
	fs.StringVar(&o.WebhookHost, "webhook-host", o.WebhookHost, "The address the webhook server binds to (empty: all).")
	fs.IntVar(&o.WebhookPort, "webhook-port", o.WebhookPort, "The port the webhook server listens on.")
	fs.StringVar(&o.WebhookCertPath, "webhook-cert-path", o.WebhookCertPath,
		"The directory that contains the webhook certificate (written by the rotator, or mounted by cert-manager).")
	fs.StringVar(&o.WebhookCertName, "webhook-cert-name", o.WebhookCertName, "The name of the webhook certificate file.")
	fs.StringVar(&o.WebhookCertKey, "webhook-cert-key", o.WebhookCertKey, "The name of the webhook key file.")

	fs.BoolVar(&o.DisableCertRotation, "disable-cert-rotation", o.DisableCertRotation,
		"Do not generate and rotate the webhook certificate; use the files in --webhook-cert-path as they are "+
			"(e.g. cert-manager, config/certmanager).")
	fs.StringVar(&o.ServiceName, "webhook-service-name", o.ServiceName,
		"The webhook Service; the generated certificate is issued for <name>.<namespace>.svc.")
	fs.StringVar(&o.SecretName, "webhook-secret-name", o.SecretName,
		"The Secret, in the webhook's namespace ("+EnvPodNamespace+"), that holds the generated CA and certificate.")
	fs.StringVar(&o.WebhookConfigName, "webhook-config-name", o.WebhookConfigName,
		"The MutatingWebhookConfiguration whose caBundle the rotator keeps current.")
	fs.StringVar(&o.extraDNSNames, "webhook-extra-dns-names", o.extraDNSNames,
		"Comma-separated extra DNS names for the generated certificate.")

	fs.StringVar(&o.Agent.Image, "agent-image", o.Agent.Image,
		"The agent image injected into Kong pods (default: $"+EnvAgentImage+"). Not overridable per pod.")
	fs.StringVar(&o.pullPolicy, "agent-image-pull-policy", o.pullPolicy, "The agent's imagePullPolicy: Always, IfNotPresent or Never.")
	fs.StringVar(&o.AgentCPURequest, "agent-cpu-request", o.AgentCPURequest, "The agent container's CPU request.")
	fs.StringVar(&o.AgentMemoryRequest, "agent-memory-request", o.AgentMemoryRequest, "The agent container's memory request.")
	fs.StringVar(&o.AgentCPULimit, "agent-cpu-limit", o.AgentCPULimit, "The agent container's CPU limit.")
	fs.StringVar(&o.AgentMemoryLimit, "agent-memory-limit", o.AgentMemoryLimit, "The agent container's memory limit.")
	fs.StringVar(&o.Agent.LogLevel, "agent-log-level", o.Agent.LogLevel,
		agentFlag(&agentenv.LogLevel, v1alpha1.AnnotationLogLevel, "", false))
	fs.BoolVar(&o.Agent.JSONLog, "agent-json-log", o.Agent.JSONLog,
		agentFlag(&agentenv.JSONLog, v1alpha1.AnnotationJSONLog, "", false))
	fs.StringVar(&o.Agent.ProcessName, "agent-process-name", o.Agent.ProcessName,
		agentFlag(&agentenv.ProcessName, v1alpha1.AnnotationProcessName, "the process to trace", false))
	fs.DurationVar(&o.Agent.StatsInterval, "agent-stats-interval", o.Agent.StatsInterval,
		agentFlag(&agentenv.StatsInterval, v1alpha1.AnnotationStatsInterval, "", false))
	fs.BoolVar(&o.Agent.NativeSidecar, "agent-native-sidecar", o.Agent.NativeSidecar,
		"Inject the agent as a native sidecar (init container with restartPolicy Always, Kubernetes >= 1.29; "+
			"turned off at start when the API server is older); false: a plain container. Per pod: annotation "+
			v1alpha1.AnnotationNativeSidecar+".")
	fs.BoolVar(&o.Agent.Privileged, "agent-privileged", o.Agent.Privileged,
		"Escape hatch: run the agent privileged (kernels without uprobe_multi, < 6.6). Default: capabilities BPF, PERFMON, SYS_PTRACE only.")
	fs.StringVar(&o.Agent.HighErrorRateThreshold, "agent-high-error-rate-threshold", o.Agent.HighErrorRateThreshold,
		agentFlag(&agentenv.HighErrorRateThreshold, v1alpha1.AnnotationHighErrorRateThreshold,
			"for its HighErrorRate Event, a percentage or a fraction", true))
	fs.StringVar(&o.Agent.HighLatencyP99Ms, "agent-high-latency-p99-ms", o.Agent.HighLatencyP99Ms,
		agentFlag(&agentenv.HighLatencyP99Ms, v1alpha1.AnnotationHighLatencyP99Ms, "for its HighLatency Event", true))
	fs.StringVar(&o.Agent.AlertMinRequests, "agent-alert-min-requests", o.Agent.AlertMinRequests,
		agentFlag(&agentenv.AlertMinRequests, "", "a window with fewer requests never alerts", true))
	fs.StringVar(&o.excludedNamespaces, "excluded-namespaces", o.excludedNamespaces,
		"Comma-separated namespaces never injected (the webhook's own namespace is always added). The "+
			"MutatingWebhookConfiguration's namespaceSelector should exclude them too.")
}

// agentFlag is the help of a flag that sets one of the agent's settings: its variable, what
// it is for, the pod annotation that overrides it and, for a flag empty by default (the
// variable is then not rendered at all), the agent's own default.
func agentFlag[T any](s *agentenv.Setting[T], annotation, what string, optional bool) string {
	h := "The agent's " + s.Env
	if what != "" {
		h += " (" + what + ")"
	}
	if optional {
		h += "; empty: the agent's default, " + s.Default
	}
	if annotation != "" {
		h += "; per pod: annotation " + annotation
	}
	return h + "."
}

// Complete parses the raw flag values into Agent and validates everything.
func (o *Options) Complete() error {
	var errs []error
	o.Agent.PullPolicy = corev1.PullPolicy(o.pullPolicy)
	q := func(flagName, v string) resource.Quantity {
		if v == "" {
			return resource.Quantity{}
		}
		r, err := resource.ParseQuantity(v)
		if err != nil {
			errs = append(errs, fmt.Errorf("--%s=%q: %w", flagName, v, err))
		}
		return r
	}
	res := corev1.ResourceRequirements{Requests: corev1.ResourceList{}, Limits: corev1.ResourceList{}}
	for _, x := range []struct {
		list corev1.ResourceList
		name corev1.ResourceName
		flag string
		val  string
	}{
		{res.Requests, corev1.ResourceCPU, "agent-cpu-request", o.AgentCPURequest},
		{res.Requests, corev1.ResourceMemory, "agent-memory-request", o.AgentMemoryRequest},
		{res.Limits, corev1.ResourceCPU, "agent-cpu-limit", o.AgentCPULimit},
		{res.Limits, corev1.ResourceMemory, "agent-memory-limit", o.AgentMemoryLimit},
	} {
		if x.val != "" {
			x.list[x.name] = q(x.flag, x.val)
		}
	}
	o.Agent.Resources = res

	o.Agent.ExcludedNamespaces = splitList(o.excludedNamespaces)
	if o.Namespace != "" && !contains(o.Agent.ExcludedNamespaces, o.Namespace) {
		o.Agent.ExcludedNamespaces = append(o.Agent.ExcludedNamespaces, o.Namespace)
	}
	if extra := splitList(o.extraDNSNames); len(extra) > 0 {
		o.ExtraDNSNames = append(o.ExtraDNSNames, extra...)
	}
	if o.WebhookPort < 1 || o.WebhookPort > 65535 {
		errs = append(errs, fmt.Errorf("--webhook-port=%d must be in 1..65535", o.WebhookPort))
	}
	if !o.DisableCertRotation {
		if o.Namespace == "" || o.ServiceName == "" || o.SecretName == "" || o.WebhookConfigName == "" {
			errs = append(errs, errors.New("cert rotation needs the namespace, --webhook-service-name, --webhook-secret-name and --webhook-config-name"))
		}
	}
	if o.ManagerURL == "" {
		o.ManagerURL = fmt.Sprintf("https://%s.%s.svc:443%s", o.ServiceName, o.Namespace, v1alpha1.ReportPath)
		o.Agent.Report.FallbackAddr = serviceAddr(o.ServiceName)
	}
	if u, err := url.Parse(o.ManagerURL); err != nil || u.Scheme != "https" || u.Host == "" {
		errs = append(errs, fmt.Errorf("--manager-url=%q: want an https:// URL", o.ManagerURL))
	}
	if o.ReportReviewsPerAddress < 0 {
		errs = append(errs, fmt.Errorf("--report-reviews-per-address=%v must not be negative", o.ReportReviewsPerAddress))
	}
	if o.ReportAudience == "" {
		errs = append(errs, errors.New("--report-token-audience must not be empty"))
	}
	if o.ReportTokenTTL < 10*time.Minute || o.ReportTokenTTL > 24*time.Hour {
		errs = append(errs, fmt.Errorf("--report-token-ttl=%s must be between 10m and 24h", o.ReportTokenTTL))
	}
	if o.ReportMaxInFlight < 1 {
		errs = append(errs, fmt.Errorf("--report-max-in-flight=%d must be at least 1", o.ReportMaxInFlight))
	}
	if o.RollupInterval < 5*time.Second || o.RollupInterval > time.Hour {
		errs = append(errs, fmt.Errorf("--rollup-interval=%s must be between 5s and 1h", o.RollupInterval))
	}
	if o.RollupTrafficStatsInterval < 0 {
		errs = append(errs, fmt.Errorf("--rollup-traffic-stats-interval=%s must not be negative", o.RollupTrafficStatsInterval))
	}
	o.Agent.Report.URL = o.ManagerURL
	o.Agent.Report.Audience = o.ReportAudience
	o.Agent.Report.TokenExpirationSeconds = int64(o.ReportTokenTTL / time.Second)
	if err := o.Agent.Validate(); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func splitList(s string) []string {
	var out []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p != "" {
			out = append(out, p)
		}
	}
	return out
}

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}
