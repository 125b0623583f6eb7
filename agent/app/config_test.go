package app

import (
	"strings"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/api/agentenv"
)

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestFromEnvDefaults(t *testing.T) {
	c, err := FromEnv(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.ProcessName != "nginx" || c.StatsInterval != 30*time.Second || c.MetricsAddr != ":9464" || c.LogLevel != "info" || c.DataPath != DataPathAuto {
		t.Errorf("defaults: %+v", c)
	}
	if c.PodName != "" {
		t.Errorf("standalone expected without POD_NAME")
	}
}

func TestFromEnvValues(t *testing.T) {
	c, err := FromEnv(env(map[string]string{
		"LOG_LEVEL": "DEBUG", "ENABLE_JSON_LOG": "true", "KONG_PROCESS_NAME": "openresty",
		"STATS_INTERVAL": "10s", "METRICS_ADDR": "127.0.0.1:1", "POD_NAME": "kong-1", "POD_NAMESPACE": "kong",
		"KONG_WATCHER_ONLY_PIDS": "12, 34", "KONG_WATCHER_DATA_PATH": "wire",
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c.LogLevel != "debug" || !c.JSONLog || c.ProcessName != "openresty" || c.StatsInterval != 10*time.Second ||
		c.PodName != "kong-1" || c.PodNamespace != "kong" || len(c.OnlyMasterPIDs) != 2 || c.OnlyMasterPIDs[1] != 34 || c.DataPath != DataPathWire {
		t.Errorf("parsed: %+v", c)
	}
}

func TestFromEnvRejectsBadValues(t *testing.T) {
	for k, v := range map[string]string{
		"LOG_LEVEL": "loud", "ENABLE_JSON_LOG": "yesplease", "STATS_INTERVAL": "0s",
		"KONG_PROCESS_NAME": "a/very/long/name/indeed", "KONG_WATCHER_ONLY_PIDS": "x",
		"KONG_WATCHER_DATA_PATH": "magic", "KONG_WATCHER_MAX_HOSTS": "-1",
	} {
		_, err := FromEnv(env(map[string]string{k: v}))
		if err == nil || !strings.Contains(err.Error(), k) {
			t.Errorf("%s=%q: error %v, want one naming %s", k, v, err, k)
		}
	}
}

func TestFromEnvReporter(t *testing.T) {
	c, err := FromEnv(env(nil))
	if err != nil {
		t.Fatal(err)
	}
	if c.TrafficStatsEventInterval != 5*time.Minute || c.HighErrorRateThreshold != 0.05 || c.HighLatencyP99Ms != 1000 || c.AlertMinRequests != 20 {
		t.Errorf("reporter defaults: %+v", c)
	}
	c, err = FromEnv(env(map[string]string{"TRAFFIC_STATS_EVENT_INTERVAL": "0", "HIGH_ERROR_RATE_THRESHOLD": "2.5%",
		"HIGH_LATENCY_P99_MS": "250", "ALERT_MIN_REQUESTS": "100"}))
	if err != nil {
		t.Fatal(err)
	}
	if c.TrafficStatsEventInterval != 0 || c.HighErrorRateThreshold != 0.025 || c.HighLatencyP99Ms != 250 || c.AlertMinRequests != 100 {
		t.Errorf("parsed: %+v", c)
	}
	for _, kv := range [][2]string{{"TRAFFIC_STATS_EVENT_INTERVAL", "5"}, {"HIGH_ERROR_RATE_THRESHOLD", "150%"},
		{"HIGH_LATENCY_P99_MS", "-1"}, {"ALERT_MIN_REQUESTS", "0"}} {
		if _, err := FromEnv(env(map[string]string{kv[0]: kv[1]})); err == nil || !strings.Contains(err.Error(), kv[0]) {
			t.Errorf("%s=%s: err = %v", kv[0], kv[1], err)
		}
	}
}

func TestFromEnvMetricsAddr(t *testing.T) {
	_, err := FromEnv(env(map[string]string{"METRICS_ADDR": "9464"}))
	if err == nil || !strings.Contains(err.Error(), `METRICS_ADDR="9464"`) {
		t.Errorf("FromEnv(METRICS_ADDR=9464) = %v", err)
	}
	c, err := FromEnv(env(map[string]string{"METRICS_ADDR": "127.0.0.1:9464"}))
	if err != nil || c.MetricsAddr != "127.0.0.1:9464" {
		t.Errorf("FromEnv(METRICS_ADDR=127.0.0.1:9464) = %q, %v", c.MetricsAddr, err)
	}
}

// FromEnv reads every setting of the contract but the supervisor's (read before, by Main):
// a value the setting refuses stops the agent, naming the variable.
func TestFromEnvReadsEverySetting(t *testing.T) {
	for _, s := range agentenv.All {
		name := s.Info().Env
		const bad = "/\x00 not a value: 1,,2"
		if name == agentenv.Supervise.Env || s.Check(bad) == nil {
			continue
		}
		if _, err := FromEnv(env(map[string]string{name: bad})); err == nil || !strings.Contains(err.Error(), name+"=") {
			t.Errorf("%s=%q: FromEnv error %v, want one naming %s", name, bad, err, name)
		}
	}
	c, err := FromEnv(env(map[string]string{"KONG_WATCHER_PROC_ROOT": "/host/proc", "KONG_WATCHER_MANAGER_URL": "https://m/report",
		"KONG_WATCHER_MANAGER_CA": "ca", "KONG_WATCHER_TOKEN_FILE": "/t", "KONG_WATCHER_MANAGER_ADDR": "10.0.0.1:443"}))
	if err != nil || c.ProcRoot != "/host/proc" || c.ManagerURL != "https://m/report" || string(c.ManagerCA) != "ca" ||
		c.TokenFile != "/t" || c.ManagerAddr != "10.0.0.1:443" {
		t.Errorf("FromEnv = %+v, %v", c, err)
	}
	if _, err := FromEnv(env(map[string]string{"KONG_WATCHER_MANAGER_URL": "https://m/report"})); err == nil ||
		!strings.Contains(err.Error(), "KONG_WATCHER_MANAGER_URL needs") {
		t.Errorf("a manager URL without CA and token: %v", err)
	}
	if _, err := FromEnv(env(map[string]string{"KONG_WATCHER_LUA_SAMPLE_FOR": "1m"})); err == nil ||
		!strings.Contains(err.Error(), "KONG_WATCHER_LUA_SAMPLE_FOR must be shorter") {
		t.Errorf("a Lua sample as long as its period: %v", err)
	}
}
