package inject

import (
	"errors"
	"fmt"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/kong-watcher/kong-watcher/api/agentenv"
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

// podSettings applies the pod's override annotations to cfg. Each value is read with the
// agent's own rule for its setting (api/agentenv). An invalid value is ignored and reported
// as a warning, never as an error: a typo in an annotation must not cost the user the pod.
// The image is deliberately not overridable: the agent runs with BPF rights, so which binary
// gets them is the cluster operator's choice, not the pod author's.
func podSettings(pod *corev1.Pod, cfg Config) (settings, []string) {
	s := settings{
		logLevel:      cfg.LogLevel,
		jsonLog:       cfg.JSONLog,
		processName:   cfg.ProcessName,
		statsInterval: cfg.StatsInterval,
		nativeSidecar: cfg.NativeSidecar,
	}
	// Config.Validate already accepted cfg, but keep the env canonical if the caller skipped it.
	if l, err := agentenv.LogLevel.Parse(cfg.LogLevel); err == nil {
		s.logLevel = l
	}
	o := overrides{ann: pod.Annotations}
	overrideSetting(&o, kwv1.AnnotationLogLevel, &agentenv.LogLevel, &s.logLevel)
	overrideSetting(&o, kwv1.AnnotationJSONLog, &agentenv.JSONLog, &s.jsonLog)
	// A process name is free text (spaces, any byte but '/'): quoted to be read apart from
	// the sentence around it.
	override(&o, kwv1.AnnotationProcessName, agentenv.ProcessName.Label, agentenv.ProcessName.Parse, &s.processName,
		strconv.Quote)
	overrideSetting(&o, kwv1.AnnotationStatsInterval, &agentenv.StatsInterval, &s.statsInterval)
	override(&o, kwv1.AnnotationNativeSidecar, "native sidecar", parseBool, &s.nativeSidecar, agentenv.JSONLog.Render)
	override(&o, kwv1.AnnotationListeners, agentenv.Listeners.Label, parseListeners, &s.listeners,
		func(string) string { return "the names the agent learns from the gateway" })
	return s, o.warnings
}

// overrides are a pod's annotations and the warnings about those ignored.
type overrides struct {
	ann      map[string]string
	warnings []string
}

// override sets *v from the annotation key when parse accepts it; otherwise *v stays and a
// warning names the annotation, what is wrong (parse's error quotes the value, cut short
// because the API server caps admission warnings) and what is used instead (show).
func override[T any](o *overrides, key, what string, parse func(string) (T, error), v *T, show func(T) string) {
	raw, ok := o.ann[key]
	if !ok {
		return
	}
	t, err := parse(raw)
	if err != nil {
		o.warnings = append(o.warnings, fmt.Sprintf("annotation %s ignored: %s %v; using %s", key, what, err, show(*v)))
		return
	}
	*v = t
}

// overrideSetting is override with the setting's own label, rule and rendering.
func overrideSetting[T any](o *overrides, key string, s *agentenv.Setting[T], v *T) {
	override(o, key, s.Label, s.Parse, v, s.Render)
}

// parseBool is the agent's rule for a true/false setting, used for the webhook's own boolean
// annotation too, so that every kong-watcher.io/* boolean reads alike.
var parseBool = agentenv.JSONLog.Parse

// parseListeners reads listener names as the agent does and returns their canonical form.
// The contract's error quotes the whole value around the listener parser's, which quotes the
// group at fault already: the warning keeps the inner one, so that a long value does not
// appear twice in a warning the API server caps.
func parseListeners(v string) (string, error) {
	l, err := agentenv.Listeners.Parse(v)
	if err != nil {
		if inner := errors.Unwrap(err); inner != nil {
			return "", inner
		}
		return "", err
	}
	return l.String(), nil
}
