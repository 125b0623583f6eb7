// Package agentenv is the contract of the agent's settings: every environment variable the
// agent reads, with its default, the rule its value must follow and what it means. The agent
// reads its environment with it (agent/app.FromEnv), the webhook checks with it the values it
// renders into the agent's container (webhook/inject.Config.Validate and the per-pod
// overrides), and the README's table of settings is tested against it, so that a default or
// a rule is written in one place only.
//
// It lives beside api/v1alpha1 rather than in it because some rules belong to the agent's
// packages that themselves import v1alpha1: the listener names' syntax (agent/listeners) and
// the alert thresholds' (agent/kube).
package agentenv

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/kube"
	"github.com/kong-watcher/kong-watcher/agent/listeners"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// Setting is one environment variable of the agent, whose value reads as a T.
type Setting[T any] struct {
	// Env is the variable's name.
	Env string
	// Default is what the agent uses when Env is unset or blank, written as a value of Env
	// would be; "" stands for T's zero value (the setting is off or absent).
	Default string
	// Doc says in one line what the setting means: the README's table shows it.
	Doc string
	// Label names the setting in a sentence ("log level"): the webhook's errors and warnings
	// say "<Label> <Parse's error>".
	Label  string
	parse  func(v string) (T, error)
	render func(T) string
	// allowed, for a setting that is one of a list of values, replaces parse.
	allowed *choice
}

// Parse reads v, ignoring white space around it. The error quotes v (cut to 32 bytes) and
// says what is wanted, but does not name the variable: the caller says where v comes from
// (Get names Env; the webhook names its flag or the pod's annotation).
func (s *Setting[T]) Parse(v string) (T, error) {
	v = strings.TrimSpace(v)
	if s.allowed != nil {
		// Only a Setting[string] is given allowed values (tested).
		t, err := s.allowed.parse(v)
		return any(t).(T), err
	}
	return s.parse(v)
}

// Render writes t as a value of Env, the inverse of Parse: Parse(Render(t)) == t for every t
// Parse returns. A zero t of a setting without a default renders as "" (unset).
func (s *Setting[T]) Render(t T) string { return s.render(t) }

// Allowed is the values a setting that is one of a list accepts, in their canonical
// spelling, and whether it accepts them in any case; nil for any other setting.
func (s *Setting[T]) Allowed() (values []string, anyCase bool) {
	if s.allowed == nil {
		return nil, false
	}
	return s.allowed.values, s.allowed.fold
}

// Get reads the setting with lookup (os.LookupEnv in the agent): Default when the variable is
// unset or blank. The error names the variable and its value: `LOG_LEVEL="loud": want ...`.
func (s *Setting[T]) Get(lookup func(string) (string, bool)) (T, error) {
	v, _ := lookup(s.Env)
	if strings.TrimSpace(v) == "" {
		return s.DefaultValue(), nil
	}
	t, err := s.Parse(v)
	if err != nil {
		return t, fmt.Errorf("%s=%w", s.Env, err)
	}
	return t, nil
}

// DefaultValue is Default read as a T. Every setting's Default is valid (tested), so it
// panics only on a programming error.
func (s *Setting[T]) DefaultValue() T {
	var zero T
	if s.Default == "" {
		return zero
	}
	t, err := s.Parse(s.Default)
	if err != nil {
		panic(fmt.Sprintf("agentenv: the default of %s is invalid: %v", s.Env, err))
	}
	return t
}

// Check reports whether v is a valid value (Parse's error).
func (s *Setting[T]) Check(v string) error {
	_, err := s.Parse(v)
	return err
}

// Info is Env, Default, Doc and Label.
func (s *Setting[T]) Info() Info {
	return Info{Env: s.Env, Default: s.Default, Doc: s.Doc, Label: s.Label}
}

// Info describes a setting whatever its type.
type Info struct{ Env, Default, Doc, Label string }

// Var is any Setting.
type Var interface {
	Info() Info
	Check(v string) error
}

// Data path names (KONG_WATCHER_DATA_PATH, and Stats.dataPath).
const (
	DataPathAuto  = "auto"          // nginx's request object, falling back to the wire per gateway
	DataPathNginx = "nginx-request" // only nginx's request object
	DataPathWire  = "wire"          // only libc/OpenSSL reads and writes
)

// Lua phase timing modes (KONG_WATCHER_LUA_PHASES).
const (
	LuaOff     = "off"
	LuaOn      = "on"
	LuaSampled = "sampled"
)

// The settings, in the README's order.
var (
	LogLevel = Setting[string]{Env: v1alpha1.EnvLogLevel, Default: "info",
		Doc:   "`debug`, `info`, `warn` or `error` (any case); `debug` logs one line per request (query strings masked)",
		Label: "log level", render: same,
		allowed: oneOf(true, "debug", "info", "warn", "error")}
	JSONLog = Setting[bool]{Env: v1alpha1.EnvJSONLog, Default: "false",
		Doc:   "`true`: JSON log lines (the webhook injects `true`)",
		Label: "JSON log", render: strconv.FormatBool,
		parse: boolean}
	ProcessName = Setting[string]{Env: v1alpha1.EnvProcessName, Default: v1alpha1.DefaultProcessName,
		Doc:   "the kernel's process name of Kong's workers (`ps -o comm`, at most 15 bytes)",
		Label: "process name", render: same,
		parse: processName}
	StatsInterval = Setting[time.Duration]{Env: v1alpha1.EnvStatsInterval, Default: v1alpha1.DefaultStatsInterval,
		Doc:   "how often the stats are logged and reported and a new window starts (1s to 1h)",
		Label: "stats interval", render: shortDuration,
		parse: duration(time.Second, time.Hour, false)}
	MetricsAddr = Setting[string]{Env: v1alpha1.EnvMetricsAddr, Default: ":" + strconv.Itoa(v1alpha1.DefaultMetricsPort),
		Doc: "`[host]:port` of `/metrics`, `/stats` (a snapshot at most 1 s old), `/healthz`, `/readyz`; host is empty " +
			"(every address), an IP address or `localhost`: `127.0.0.1` keeps them off the node with hostNetwork",
		Label: "metrics address", render: same,
		parse: listenAddr}
	PodName = Setting[string]{Env: v1alpha1.EnvPodName,
		Doc:   "the agent's pod (the webhook sets it from the downward API); unset: standalone, reports to logs and HTTP only",
		Label: "pod name", render: same,
		parse: text}
	PodNamespace = Setting[string]{Env: v1alpha1.EnvPodNamespace,
		Doc:   "the agent's pod's namespace (the webhook sets it from the downward API)",
		Label: "pod namespace", render: same,
		parse: text}
	DataPath = Setting[string]{Env: v1alpha1.EnvDataPath, Default: DataPathAuto,
		Doc: "`nginx-request` (uprobes on nginx's request object), `wire` (libc/OpenSSL reads and writes, HTTP/1 only) " +
			"or `auto` (the first, falling back to the second per gateway)",
		Label: "data path", render: same,
		allowed: oneOf(false, DataPathNginx, DataPathWire, DataPathAuto)}
	LuaPhases = Setting[string]{Env: v1alpha1.EnvLuaPhases, Default: LuaSampled,
		Doc: "Lua phase timing: `off`, `on` (every request) or `sampled` (for `" + v1alpha1.EnvLuaSampleFor +
			"` of every `" + v1alpha1.EnvLuaSampleEvery + "`)",
		Label: "Lua phases", render: same,
		allowed: oneOf(false, LuaOff, LuaOn, LuaSampled)}
	LuaSampleEvery = Setting[time.Duration]{Env: v1alpha1.EnvLuaSampleEvery, Default: "1m",
		Doc:   "how often a Lua timing sample starts (at least 100ms)",
		Label: "Lua sample period", render: shortDuration,
		parse: duration(100*time.Millisecond, 0, false)}
	LuaSampleFor = Setting[time.Duration]{Env: v1alpha1.EnvLuaSampleFor, Default: "2s",
		Doc:   "how long a Lua timing sample lasts (at least 100ms, less than `" + v1alpha1.EnvLuaSampleEvery + "`)",
		Label: "Lua sample length", render: shortDuration,
		parse: duration(100*time.Millisecond, 0, false)}
	MaxHosts = Setting[int]{Env: v1alpha1.EnvMaxHosts, Default: "100",
		Doc:   "hosts with a row of their own at a time (1 to 10000); the rest fold into `other`",
		Label: "max hosts", render: strconv.Itoa,
		parse: intBetween(1, 10000)}
	MaxPaths = Setting[int]{Env: v1alpha1.EnvMaxPaths, Default: "200",
		Doc:   "paths (`METHOD /normalised/path`) with a row of their own at a time (1 to 10000); the rest fold into `other`",
		Label: "max paths", render: strconv.Itoa,
		parse: intBetween(1, 10000)}
	NativeHistograms = Setting[bool]{Env: v1alpha1.EnvNativeHistograms, Default: "false",
		Doc: "`true`: the latency histograms of `/metrics` are also native histograms, for a Prometheus that scrapes them " +
			"(finer buckets, at ~25 ns more per histogram per request)",
		Label: "native histograms", render: strconv.FormatBool,
		parse: boolean}
	Listeners = Setting[*listeners.Set]{Env: v1alpha1.EnvListeners,
		Doc: "the listeners' names by port, `proxy=8000,8443;admin=8001,8444;status=8100` (a `proxy` group required; " +
			"the webhook renders the pod annotation `" + v1alpha1.AnnotationListeners + "`); unset: learnt from Kong's own settings",
		Label: "listener names", render: formatListeners,
		parse: listenerNames}
	TrafficStatsEventInterval = Setting[time.Duration]{Env: v1alpha1.EnvTrafficStatsEventInterval,
		Default: shortDuration(kube.DefaultTrafficStatsInterval),
		Doc:     "how often a TrafficStats Event is recorded (at least 1s; `0`: never)",
		Label:   "TrafficStats Event interval", render: shortDuration,
		parse: duration(time.Second, 0, true)}
	HighErrorRateThreshold = Setting[float64]{Env: v1alpha1.EnvHighErrorRateThreshold,
		Default: strconv.FormatFloat(kube.DefaultErrorRateThreshold*100, 'f', -1, 64) + "%",
		Doc: "the share of a window's requests that failed (5xx or no response) above which HighErrorRate is raised: " +
			"a percentage (`2.5%`) or a fraction (`0.025`); the pod annotation `" + v1alpha1.AnnotationHighErrorRateThreshold + "` wins",
		Label: "high error rate threshold", render: formatFloat,
		parse: kube.ParseErrorRate}
	HighLatencyP99Ms = Setting[float64]{Env: v1alpha1.EnvHighLatencyP99Ms,
		Default: strconv.FormatFloat(kube.DefaultLatencyP99Ms, 'f', -1, 64),
		Doc: "the window's p99 latency in milliseconds above which HighLatency is raised (`250`, or a Go duration: `250ms`); " +
			"the pod annotation `" + v1alpha1.AnnotationHighLatencyP99Ms + "` wins",
		Label: "high latency p99 ms", render: formatFloat,
		parse: kube.ParseLatencyMs}
	AlertMinRequests = Setting[uint64]{Env: v1alpha1.EnvAlertMinRequests, Default: strconv.Itoa(kube.DefaultMinRequests),
		Doc:   "a window with fewer requests raises no alert (its ratio and p99 are noise)",
		Label: "alert min requests", render: formatUint,
		parse: positive}
	ManagerURL = Setting[string]{Env: v1alpha1.EnvManagerURL,
		Doc: "the manager's report endpoint (the webhook sets it; it needs `" + v1alpha1.EnvManagerCA + "` and `" +
			v1alpha1.EnvTokenFile + "`); unset: no pod annotations or Events",
		Label: "manager URL", render: same,
		parse: text}
	ManagerCA = Setting[[]byte]{Env: v1alpha1.EnvManagerCA,
		Doc:   "the PEM bundle the manager's certificate must chain to (the webhook sets it)",
		Label: "manager CA", render: func(b []byte) string { return string(b) },
		parse: func(v string) ([]byte, error) { return []byte(v), nil }}
	ManagerAddr = Setting[string]{Env: v1alpha1.EnvManagerAddr,
		Doc:   "`host:port` dialled when the manager URL's host name does not resolve (the webhook sets it)",
		Label: "manager address", render: same,
		parse: hostPort}
	TokenFile = Setting[string]{Env: v1alpha1.EnvTokenFile,
		Doc:   "the projected token the agent proves its pod with (the webhook mounts it)",
		Label: "token file", render: same,
		parse: text}
	Supervise = Setting[bool]{Env: v1alpha1.EnvSupervise, Default: "false",
		Doc:   "`true`: a supervisor restarts a dying agent in place, so its container never exits (the webhook sets it); any other value: no supervisor",
		Label: "supervise", render: strconv.FormatBool,
		parse: func(v string) (bool, error) { return v == "true", nil }}
	ProcRoot = Setting[string]{Env: v1alpha1.EnvProcRoot, Default: "/proc",
		Doc:   "where the gateway's processes are visible (tests)",
		Label: "proc root", render: same,
		parse: text}
	OnlyPIDs = Setting[[]int]{Env: v1alpha1.EnvOnlyPIDs,
		Doc:   "comma-separated master PIDs: follow only these gateways (tests and debugging on a machine running other nginx)",
		Label: "only PIDs", render: formatPIDs,
		parse: pids}
)

// All is every setting, in the README's order.
var All = []Var{
	&LogLevel, &JSONLog, &ProcessName, &StatsInterval, &MetricsAddr, &PodName, &PodNamespace,
	&DataPath, &LuaPhases, &LuaSampleEvery, &LuaSampleFor, &MaxHosts, &MaxPaths, &NativeHistograms, &Listeners,
	&TrafficStatsEventInterval, &HighErrorRateThreshold, &HighLatencyP99Ms, &AlertMinRequests,
	&ManagerURL, &ManagerCA, &ManagerAddr, &TokenFile, &Supervise, &ProcRoot, &OnlyPIDs,
}

// quote quotes v for an error, cut to 32 bytes: enough to recognise it, and short enough for
// an admission warning that quotes it.
func quote(v string) string {
	if len(v) > 32 {
		v = v[:32] + "..."
	}
	return strconv.Quote(v)
}

func text(v string) (string, error) { return v, nil }

// choice is one of values; fold: in any case, read in values' spelling.
type choice struct {
	values []string
	fold   bool
}

func oneOf(fold bool, values ...string) *choice { return &choice{values: values, fold: fold} }

func (c *choice) parse(v string) (string, error) {
	for _, w := range c.values {
		if v == w || (c.fold && strings.EqualFold(v, w)) {
			return w, nil
		}
	}
	return "", fmt.Errorf("%s: want %s or %s", quote(v), strings.Join(c.values[:len(c.values)-1], ", "), c.values[len(c.values)-1])
}

func same(v string) string { return v }

func formatFloat(f float64) string { return strconv.FormatFloat(f, 'f', -1, 64) }

func formatUint(n uint64) string { return strconv.FormatUint(n, 10) }

func formatListeners(s *listeners.Set) string {
	if s == nil {
		return ""
	}
	return s.String()
}

func formatPIDs(pids []int) string {
	s := make([]string, len(pids))
	for i, p := range pids {
		s[i] = strconv.Itoa(p)
	}
	return strings.Join(s, ",")
}

func boolean(v string) (bool, error) {
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("%s: want true or false", quote(v))
	}
	return b, nil
}

// maxCommLen is TASK_COMM_LEN (16) minus the terminating NUL: the kernel cuts a process name
// to 15 bytes, so a longer KONG_PROCESS_NAME could never match.
const maxCommLen = 15

// processName accepts what /proc/<pid>/comm can hold: 1 to 15 bytes, no '/' (the kernel
// names a process after its executable's base name), no NUL (the end of comm) and no newline
// (the end of the file).
func processName(v string) (string, error) {
	if v == "" || len(v) > maxCommLen || strings.ContainsAny(v, "/\n\x00") {
		return "", fmt.Errorf("%s: want a kernel process name (at most %d bytes, no '/')", quote(v), maxCommLen)
	}
	return v, nil
}

// duration accepts a Go duration of at least lo and, when hi > 0, at most hi; off: 0 too.
func duration(lo, hi time.Duration, off bool) func(string) (time.Duration, error) {
	want := "of at least " + shortDuration(lo)
	if hi > 0 {
		want = "between " + shortDuration(lo) + " and " + shortDuration(hi)
	}
	if off {
		want += ", or 0 (off)"
	}
	return func(v string) (time.Duration, error) {
		d, err := time.ParseDuration(v)
		if err != nil || (d < lo && !(off && d == 0)) || (hi > 0 && d > hi) {
			return 0, fmt.Errorf("%s: want a Go duration %s", quote(v), want)
		}
		return d, nil
	}
}

// shortDuration is d without the zero units Duration.String writes after the first: "1h",
// "5m", not "1h0m0s", "5m0s".
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func intBetween(lo, hi int) func(string) (int, error) {
	return func(v string) (int, error) {
		n, err := strconv.Atoi(v)
		if err != nil || n < lo || n > hi {
			return 0, fmt.Errorf("%s: want an integer between %d and %d", quote(v), lo, hi)
		}
		return n, nil
	}
}

func positive(v string) (uint64, error) {
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n < 1 {
		return 0, fmt.Errorf("%s: want a positive integer", quote(v))
	}
	return n, nil
}

func pids(v string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(v, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 {
			return nil, fmt.Errorf("%s: want comma-separated PIDs", quote(v))
		}
		out = append(out, n)
	}
	return out, nil
}

func hostPort(v string) (string, error) {
	if _, _, err := net.SplitHostPort(v); err != nil {
		return "", fmt.Errorf("%s: want host:port", quote(v))
	}
	return v, nil
}

func listenerNames(v string) (*listeners.Set, error) {
	s, err := listeners.ParseOverride(v)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", quote(v), err)
	}
	return &s, nil
}

// listenAddr accepts "[host]:port" where host is empty (every address of the pod: what
// Prometheus scrapes), an IP address or "localhost", and port is 1-65535. A host name is
// refused: it would be resolved once, at bind time, to one of its addresses.
func listenAddr(addr string) (string, error) {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("%s: want [host]:port, such as :%d or 127.0.0.1:%d: %v", quote(addr),
			v1alpha1.DefaultMetricsPort, v1alpha1.DefaultMetricsPort, errDetail(err))
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return "", fmt.Errorf("%s: port %s: want a number between 1 and 65535", quote(addr), quote(port))
	}
	if host != "" && host != "localhost" {
		if _, err := netip.ParseAddr(host); err != nil {
			return "", fmt.Errorf("%s: host %s: want an IP address, localhost, or nothing (every address)", quote(addr), quote(host))
		}
	}
	return addr, nil
}

// errDetail is a net.AddrError's reason without the address it repeats.
func errDetail(err error) string {
	if ae, ok := err.(*net.AddrError); ok {
		return ae.Err
	}
	return err.Error()
}
