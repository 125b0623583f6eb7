package inject

import (
	"fmt"
	"strconv"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kong-watcher/kong-watcher/agent/listeners"
	kwv1 "github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// settings are the per-pod agent settings: Config's defaults with the pod's valid
// kong-watcher.io/* override annotations applied.
type settings struct {
	logLevel      string
	jsonLog       bool
	processName   string
	statsInterval time.Duration
	nativeSidecar bool
	// listeners is KONG_WATCHER_LISTENERS in its canonical form; "": the agent learns the
	// names from the gateway.
	listeners string
}

// podSettings applies the pod's override annotations to cfg. An invalid value is ignored and
// reported as a warning, never as an error: a typo in an annotation must not cost the user
// the pod. The image is deliberately not overridable: the agent runs with BPF
// rights, so which binary gets them is the cluster operator's choice, not the pod author's.
func podSettings(pod *corev1.Pod, cfg Config) (settings, []string) {
	s := settings{
		logLevel:      cfg.LogLevel,
		jsonLog:       cfg.JSONLog,
		processName:   cfg.ProcessName,
		statsInterval: cfg.StatsInterval,
		nativeSidecar: cfg.NativeSidecar,
	}
	// Config.Validate already accepted cfg, but keep the env canonical if the caller skipped it.
	if l, err := parseLogLevel(cfg.LogLevel); err == nil {
		s.logLevel = l
	}
	var warnings []string
	// err quotes the (truncated) value already.
	invalid := func(key, _ string, err error, kept string) {
		warnings = append(warnings, fmt.Sprintf("annotation %s ignored: %v; using %s", key, err, kept))
	}
	ann := pod.Annotations

	if v, ok := ann[kwv1.AnnotationLogLevel]; ok {
		if l, err := parseLogLevel(v); err != nil {
			invalid(kwv1.AnnotationLogLevel, v, err, s.logLevel)
		} else {
			s.logLevel = l
		}
	}
	if v, ok := ann[kwv1.AnnotationJSONLog]; ok {
		if b, err := parseBool(v); err != nil {
			invalid(kwv1.AnnotationJSONLog, v, err, strconv.FormatBool(s.jsonLog))
		} else {
			s.jsonLog = b
		}
	}
	if v, ok := ann[kwv1.AnnotationProcessName]; ok {
		if err := validateProcessName(v); err != nil {
			invalid(kwv1.AnnotationProcessName, v, err, strconv.Quote(s.processName))
		} else {
			s.processName = v
		}
	}
	if v, ok := ann[kwv1.AnnotationStatsInterval]; ok {
		if d, err := parseStatsInterval(v); err != nil {
			invalid(kwv1.AnnotationStatsInterval, v, err, s.statsInterval.String())
		} else {
			s.statsInterval = d
		}
	}
	if v, ok := ann[kwv1.AnnotationNativeSidecar]; ok {
		if b, err := parseBool(v); err != nil {
			invalid(kwv1.AnnotationNativeSidecar, v, err, strconv.FormatBool(s.nativeSidecar))
		} else {
			s.nativeSidecar = b
		}
	}
	if v, ok := ann[kwv1.AnnotationListeners]; ok {
		if l, err := listeners.ParseOverride(v); err != nil {
			invalid(kwv1.AnnotationListeners, v, err, "the names the agent learns from the gateway")
		} else {
			s.listeners = l.String()
		}
	}
	return s, warnings
}

func parseBool(v string) (bool, error) {
	b, err := strconv.ParseBool(strings.TrimSpace(v))
	if err != nil {
		return false, fmt.Errorf("%q is not a boolean (true or false)", truncate(v, 32))
	}
	return b, nil
}

func parseStatsInterval(v string) (time.Duration, error) {
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil {
		return 0, fmt.Errorf("%q is not a Go duration such as 30s or 1m", truncate(v, 32))
	}
	if err := validateStatsInterval(d); err != nil {
		return 0, err
	}
	return d, nil
}

// truncate keeps warnings short (the API server caps admission warnings) when they quote a
// user's value.
func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n] + "..."
}
