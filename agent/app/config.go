// Package app wires the agent's one-way pipeline together: discovery finds the gateways,
// a data path (nginx's request object, or the wire as a fallback) turns kernel events into
// model.Requests, and the aggregator, the Prometheus metrics and the per-request logger
// consume them; the reporters (HTTP endpoints, periodic log line) read the aggregator.
// cmd/agent only parses the environment into a Config and calls Run.
package app

import (
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/kube"
	"github.com/kong-watcher/kong-watcher/agent/listeners"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// Data path names (Config.DataPath and Stats.dataPath).
const (
	DataPathAuto  = "auto"          // nginx's request object, falling back to the wire per gateway
	DataPathNginx = "nginx-request" // only nginx's request object
	DataPathWire  = "wire"          // only libc/OpenSSL reads and writes
)

// Lua phase timing modes (Config.LuaPhases).
const (
	LuaOff     = "off"
	LuaOn      = "on"
	LuaSampled = "sampled"
)

// Config is everything the agent needs, parsed from the environment (the names the webhook injects, api/v1alpha1).
type Config struct {
	LogLevel      string
	JSONLog       bool
	ProcessName   string
	StatsInterval time.Duration
	PodName       string
	PodNamespace  string
	MetricsAddr   string
	// ProcRoot is where the gateway's processes are visible (/proc).
	ProcRoot string
	// DataPath: auto, nginx-request or wire.
	DataPath string
	// LuaPhases: "off", "on" (every request: 2 extra probe hits per Lua handler call and one
	// per request) or "sampled" (on for LuaSampleFor every LuaSampleEvery; the default).
	LuaPhases                    string
	LuaSampleEvery, LuaSampleFor time.Duration
	// MaxHosts / MaxPaths bound the per-host and per-path rows; the rest fold into "other".
	MaxHosts, MaxPaths int
	// ScanInterval is how often /proc is scanned for gateway changes.
	ScanInterval time.Duration
	// OnlyMasterPIDs, when set, restricts the agent to the gateways with these master PIDs
	// (KONG_WATCHER_ONLY_PIDS, comma-separated): for tests and debugging on a machine that
	// runs other nginx instances. In a pod the PID namespace already isolates Kong.
	OnlyMasterPIDs []int
	// Listeners, when set (KONG_WATCHER_LISTENERS), names every gateway's listeners;
	// otherwise each gateway's are learnt from its master (see agent/listeners).
	Listeners *listeners.Set

	// Kubernetes reporter (only when PodName, PodNamespace and ManagerURL are set): where the
	// manager is, the CA it is verified with, and the projected token the agent proves its pod with.
	ManagerURL  string
	ManagerAddr string // dialled when ManagerURL's host does not resolve
	ManagerCA   []byte
	TokenFile   string
	// TrafficStatsEventInterval: how often a TrafficStats Event is recorded (0 = never).
	TrafficStatsEventInterval time.Duration
	// HighErrorRateThreshold (fraction), HighLatencyP99Ms and AlertMinRequests: the alert
	// defaults; the pod's kong-watcher.io/high-error-rate-threshold and
	// kong-watcher.io/high-latency-p99-ms annotations override the first two.
	HighErrorRateThreshold float64
	HighLatencyP99Ms       float64
	AlertMinRequests       uint64
}

// Environment variables of the Kubernetes reporter.
const (
	EnvTrafficStatsEventInterval = "TRAFFIC_STATS_EVENT_INTERVAL"
	EnvHighErrorRateThreshold    = v1alpha1.EnvHighErrorRateThreshold
	EnvHighLatencyP99Ms          = v1alpha1.EnvHighLatencyP99Ms
	EnvAlertMinRequests          = v1alpha1.EnvAlertMinRequests
)

// FromEnv reads the agent's configuration from environment variables (lookup is os.LookupEnv
// in production, a map in tests). Invalid values are errors: the agent refuses to start with
// a configuration it would silently misread.
func FromEnv(lookup func(string) (string, bool)) (Config, error) {
	c := Config{
		LogLevel:       "info",
		JSONLog:        false,
		ProcessName:    v1alpha1.DefaultProcessName,
		StatsInterval:  30 * time.Second,
		MetricsAddr:    v1alpha1.DefaultMetricsAddr,
		ProcRoot:       "/proc",
		DataPath:       DataPathAuto,
		LuaPhases:      LuaSampled,
		LuaSampleEvery: time.Minute,
		LuaSampleFor:   2 * time.Second,
		MaxHosts:       100,
		MaxPaths:       200,
		ScanInterval:   time.Second,

		TrafficStatsEventInterval: kube.DefaultTrafficStatsInterval,
		HighErrorRateThreshold:    kube.DefaultErrorRateThreshold,
		HighLatencyP99Ms:          kube.DefaultLatencyP99Ms,
		AlertMinRequests:          kube.DefaultMinRequests,
	}
	get := func(k string) (string, bool) {
		v, ok := lookup(k)
		v = strings.TrimSpace(v)
		return v, ok && v != ""
	}
	var errs []string
	if v, ok := get(v1alpha1.EnvLogLevel); ok {
		switch strings.ToLower(v) {
		case "debug", "info", "warn", "error":
			c.LogLevel = strings.ToLower(v)
		default:
			errs = append(errs, fmt.Sprintf("%s=%q: want debug, info, warn or error", v1alpha1.EnvLogLevel, v))
		}
	}
	if v, ok := get(v1alpha1.EnvJSONLog); ok {
		b, err := strconv.ParseBool(v)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s=%q: want true or false", v1alpha1.EnvJSONLog, v))
		}
		c.JSONLog = b
	}
	if v, ok := get(v1alpha1.EnvProcessName); ok {
		if len(v) > 15 || strings.ContainsAny(v, "/\n") {
			errs = append(errs, fmt.Sprintf("%s=%q: want a kernel process name (at most 15 bytes, no '/')", v1alpha1.EnvProcessName, v))
		}
		c.ProcessName = v
	}
	if v, ok := get(v1alpha1.EnvStatsInterval); ok {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second || d > time.Hour {
			errs = append(errs, fmt.Sprintf("%s=%q: want a Go duration between 1s and 1h", v1alpha1.EnvStatsInterval, v))
		}
		c.StatsInterval = d
	}
	if v, ok := get(v1alpha1.EnvMetricsAddr); ok {
		if err := CheckListenAddr(v); err != nil {
			errs = append(errs, fmt.Sprintf("%s=%v", v1alpha1.EnvMetricsAddr, err))
		}
		c.MetricsAddr = v
	}
	c.PodName, _ = get(v1alpha1.EnvPodName)
	c.PodNamespace, _ = get(v1alpha1.EnvPodNamespace)
	c.ManagerURL, _ = get(v1alpha1.EnvManagerURL)
	if v, ok := get(v1alpha1.EnvManagerAddr); ok {
		if _, _, err := net.SplitHostPort(v); err != nil {
			errs = append(errs, fmt.Sprintf("%s=%q: want host:port", v1alpha1.EnvManagerAddr, v))
		} else {
			c.ManagerAddr = v
		}
	}
	if v, ok := get(v1alpha1.EnvManagerCA); ok {
		c.ManagerCA = []byte(v)
	}
	c.TokenFile, _ = get(v1alpha1.EnvTokenFile)
	if c.ManagerURL != "" && (len(c.ManagerCA) == 0 || c.TokenFile == "") {
		errs = append(errs, fmt.Sprintf("%s needs %s and %s", v1alpha1.EnvManagerURL, v1alpha1.EnvManagerCA, v1alpha1.EnvTokenFile))
	}
	if v, ok := get("KONG_WATCHER_PROC_ROOT"); ok {
		c.ProcRoot = v
	}
	if v, ok := get("KONG_WATCHER_DATA_PATH"); ok {
		switch v {
		case DataPathAuto, DataPathNginx, DataPathWire:
			c.DataPath = v
		default:
			errs = append(errs, fmt.Sprintf("KONG_WATCHER_DATA_PATH=%q: want auto, nginx-request or wire", v))
		}
	}
	if v, ok := get("KONG_WATCHER_LUA_PHASES"); ok {
		switch v {
		case LuaOff, LuaOn, LuaSampled:
			c.LuaPhases = v
		default:
			errs = append(errs, fmt.Sprintf("KONG_WATCHER_LUA_PHASES=%q: want off, on or sampled", v))
		}
	}
	for _, p := range []struct {
		env string
		dst *time.Duration
	}{{"KONG_WATCHER_LUA_SAMPLE_EVERY", &c.LuaSampleEvery}, {"KONG_WATCHER_LUA_SAMPLE_FOR", &c.LuaSampleFor}} {
		if v, ok := get(p.env); ok {
			d, err := time.ParseDuration(v)
			if err != nil || d < 100*time.Millisecond {
				errs = append(errs, fmt.Sprintf("%s=%q: want a Go duration of at least 100ms", p.env, v))
			}
			*p.dst = d
		}
	}
	if c.LuaSampleFor >= c.LuaSampleEvery {
		errs = append(errs, "KONG_WATCHER_LUA_SAMPLE_FOR must be shorter than KONG_WATCHER_LUA_SAMPLE_EVERY")
	}
	for _, p := range []struct {
		env string
		dst *int
	}{{"KONG_WATCHER_MAX_HOSTS", &c.MaxHosts}, {"KONG_WATCHER_MAX_PATHS", &c.MaxPaths}} {
		if v, ok := get(p.env); ok {
			n, err := strconv.Atoi(v)
			if err != nil || n < 1 || n > 10000 {
				errs = append(errs, fmt.Sprintf("%s=%q: want an integer between 1 and 10000", p.env, v))
			}
			*p.dst = n
		}
	}
	if v, ok := get("KONG_WATCHER_ONLY_PIDS"); ok {
		for _, f := range strings.Split(v, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(f))
			if err != nil || n < 1 {
				errs = append(errs, fmt.Sprintf("KONG_WATCHER_ONLY_PIDS=%q: want comma-separated PIDs", v))
				break
			}
			c.OnlyMasterPIDs = append(c.OnlyMasterPIDs, n)
		}
	}
	if v, ok := get(v1alpha1.EnvListeners); ok {
		s, err := listeners.ParseOverride(v)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s=%q: %v", v1alpha1.EnvListeners, v, err))
		}
		c.Listeners = &s
	}
	if v, ok := get(EnvTrafficStatsEventInterval); ok {
		d, err := time.ParseDuration(v)
		if err != nil || (d != 0 && d < time.Second) {
			errs = append(errs, fmt.Sprintf("%s=%q: want a Go duration of at least 1s, or 0 (off)", EnvTrafficStatsEventInterval, v))
		}
		c.TrafficStatsEventInterval = d
	}
	if v, ok := get(EnvHighErrorRateThreshold); ok {
		f, err := kube.ParseErrorRate(v)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s=%v", EnvHighErrorRateThreshold, err))
		}
		c.HighErrorRateThreshold = f
	}
	if v, ok := get(EnvHighLatencyP99Ms); ok {
		f, err := kube.ParseLatencyMs(v)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s=%v", EnvHighLatencyP99Ms, err))
		}
		c.HighLatencyP99Ms = f
	}
	if v, ok := get(EnvAlertMinRequests); ok {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil || n < 1 {
			errs = append(errs, fmt.Sprintf("%s=%q: want a positive integer", EnvAlertMinRequests, v))
		}
		c.AlertMinRequests = n
	}
	if len(errs) > 0 {
		return c, fmt.Errorf("invalid agent configuration: %s", strings.Join(errs, "; "))
	}
	return c, nil
}

// OSEnv is FromEnv's lookup in production.
func OSEnv(k string) (string, bool) { return os.LookupEnv(k) }
