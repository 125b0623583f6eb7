// Package app wires the agent's one-way pipeline together: discovery finds the gateways,
// a data path (nginx's request object, or the wire as a fallback) turns kernel events into
// model.Requests, and the aggregator, the Prometheus metrics and the per-request logger
// consume them; the reporters (HTTP endpoints, periodic log line, the Kubernetes reporter)
// read the aggregator. Main is the whole process: cmd/agent only picks its subcommand.
package app

import (
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/listeners"
	"github.com/kong-watcher/kong-watcher/api/agentenv"
)

// Data path names (Config.DataPath and Stats.dataPath).
const (
	DataPathAuto  = agentenv.DataPathAuto
	DataPathNginx = agentenv.DataPathNginx
	DataPathWire  = agentenv.DataPathWire
)

// Lua phase timing modes (Config.LuaPhases).
const (
	LuaOff     = agentenv.LuaOff
	LuaOn      = agentenv.LuaOn
	LuaSampled = agentenv.LuaSampled
)

// Config is everything the agent needs, read from the environment (api/agentenv).
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
	// per request) or "sampled" (on for LuaSampleFor every LuaSampleEvery).
	LuaPhases                    string
	LuaSampleEvery, LuaSampleFor time.Duration
	// MaxHosts / MaxPaths bound the per-host and per-path rows; the rest fold into "other".
	MaxHosts, MaxPaths int
	// NativeHistograms: the latency histograms are native histograms too.
	NativeHistograms bool
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

// FromEnv reads the agent's configuration from environment variables (lookup is os.LookupEnv
// in production, a map in tests), each with its api/agentenv setting. Invalid values are
// errors: the agent refuses to start with a configuration it would silently misread.
func FromEnv(lookup func(string) (string, bool)) (Config, error) {
	c := Config{ScanInterval: time.Second}
	var errs []string
	for _, read := range []func(func(string) (string, bool)) error{
		field(&agentenv.LogLevel, &c.LogLevel),
		field(&agentenv.JSONLog, &c.JSONLog),
		field(&agentenv.ProcessName, &c.ProcessName),
		field(&agentenv.StatsInterval, &c.StatsInterval),
		field(&agentenv.MetricsAddr, &c.MetricsAddr),
		field(&agentenv.PodName, &c.PodName),
		field(&agentenv.PodNamespace, &c.PodNamespace),
		field(&agentenv.DataPath, &c.DataPath),
		field(&agentenv.LuaPhases, &c.LuaPhases),
		field(&agentenv.LuaSampleEvery, &c.LuaSampleEvery),
		field(&agentenv.LuaSampleFor, &c.LuaSampleFor),
		field(&agentenv.MaxHosts, &c.MaxHosts),
		field(&agentenv.MaxPaths, &c.MaxPaths),
		field(&agentenv.NativeHistograms, &c.NativeHistograms),
		field(&agentenv.Listeners, &c.Listeners),
		field(&agentenv.TrafficStatsEventInterval, &c.TrafficStatsEventInterval),
		field(&agentenv.HighErrorRateThreshold, &c.HighErrorRateThreshold),
		field(&agentenv.HighLatencyP99Ms, &c.HighLatencyP99Ms),
		field(&agentenv.AlertMinRequests, &c.AlertMinRequests),
		field(&agentenv.ManagerURL, &c.ManagerURL),
		field(&agentenv.ManagerCA, &c.ManagerCA),
		field(&agentenv.ManagerAddr, &c.ManagerAddr),
		field(&agentenv.TokenFile, &c.TokenFile),
		field(&agentenv.ProcRoot, &c.ProcRoot),
		field(&agentenv.OnlyPIDs, &c.OnlyMasterPIDs),
	} {
		if err := read(lookup); err != nil {
			errs = append(errs, err.Error())
		}
	}
	if c.ManagerURL != "" && (len(c.ManagerCA) == 0 || c.TokenFile == "") {
		errs = append(errs, fmt.Sprintf("%s needs %s and %s", agentenv.ManagerURL.Env, agentenv.ManagerCA.Env, agentenv.TokenFile.Env))
	}
	if c.LuaSampleFor >= c.LuaSampleEvery {
		errs = append(errs, fmt.Sprintf("%s must be shorter than %s", agentenv.LuaSampleFor.Env, agentenv.LuaSampleEvery.Env))
	}
	if len(errs) > 0 {
		return c, fmt.Errorf("invalid agent configuration: %s", strings.Join(errs, "; "))
	}
	return c, nil
}

// field reads setting s into *dst.
func field[T any](s *agentenv.Setting[T], dst *T) func(func(string) (string, bool)) error {
	return func(lookup func(string) (string, bool)) error {
		v, err := s.Get(lookup)
		*dst = v
		return err
	}
}

// OSEnv is FromEnv's lookup in production.
func OSEnv(k string) (string, bool) { return os.LookupEnv(k) }
