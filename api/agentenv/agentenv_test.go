package agentenv

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

// What each setting accepts and refuses; every setting has its row.
var values = map[string]struct{ accept, reject []string }{
	"LOG_LEVEL":         {[]string{"debug", "info", "warn", "error", "DEBUG", " Warn "}, []string{"loud", "trace", "", "warning"}},
	"ENABLE_JSON_LOG":   {[]string{"true", "false", "1", "0", "TRUE", "F"}, []string{"yes", "on", "", "yesplease"}},
	"KONG_PROCESS_NAME": {[]string{"nginx", "openresty", "fifteen-chars-x", " nginx ", "ngi\tnx", "nginé"}, []string{"", "sixteen-chars-xx", "a/very/long/name/indeed", "sbin/nginx", "ngi\nnx", "ngi\x00nx"}},
	"STATS_INTERVAL":    {[]string{"1s", "30s", "1h", "59m59s"}, []string{"0s", "999ms", "61m", "1h0m1s", "30", "-5s", ""}},
	"METRICS_ADDR": {[]string{":9464", "0.0.0.0:9464", "127.0.0.1:9464", "[::1]:9464", "[::]:1", "localhost:65535", "[fe80::1%eth0]:9464"},
		[]string{"9464", "", "127.0.0.1", "::1:9464", ":0", ":65536", ":http", ":-1", "example.com:9464", "127.0.0.1.2:9464", "http://127.0.0.1:9464"}},
	"POD_NAME":                      {[]string{"kong-1", ""}, nil},
	"POD_NAMESPACE":                 {[]string{"kong", ""}, nil},
	"KONG_WATCHER_DATA_PATH":        {[]string{"auto", "nginx-request", "wire"}, []string{"magic", "Wire", "nginx", ""}},
	"KONG_WATCHER_LUA_PHASES":       {[]string{"off", "on", "sampled"}, []string{"ON", "sample", "true", ""}},
	"KONG_WATCHER_LUA_SAMPLE_EVERY": {[]string{"100ms", "1m", "1h"}, []string{"99ms", "0", "1", "soon", ""}},
	"KONG_WATCHER_LUA_SAMPLE_FOR":   {[]string{"100ms", "2s"}, []string{"10ms", "-1s", ""}},
	"KONG_WATCHER_MAX_HOSTS":        {[]string{"1", "100", "10000"}, []string{"0", "-1", "10001", "1e3", "x", ""}},
	"KONG_WATCHER_MAX_PATHS":        {[]string{"1", "200", "10000"}, []string{"0", "10001", "2.5", ""}},
	"KONG_WATCHER_LISTENERS": {[]string{"proxy=8000,8443;admin=8001,8444;status=8100", " status=8100; proxy=8443,8000 "},
		[]string{"admin=8001", "proxy=8000;admin=8000", "proxy:8000", ""}},
	"TRAFFIC_STATS_EVENT_INTERVAL": {[]string{"0", "0s", "1s", "5m", "24h"}, []string{"5", "500ms", "-1m", "never", ""}},
	"HIGH_ERROR_RATE_THRESHOLD":    {[]string{"5%", "0.05", "0", "100%", "2.5%"}, []string{"150%", "1.5", "-1%", "five", ""}},
	"HIGH_LATENCY_P99_MS":          {[]string{"1000", "0.5", "250ms", "1s"}, []string{"0", "-1", "-5", "fast", ""}},
	"ALERT_MIN_REQUESTS":           {[]string{"1", "20", "18446744073709551615"}, []string{"0", "-1", "1.5", "18446744073709551616", ""}},
	"KONG_WATCHER_MANAGER_URL":     {[]string{"https://kong-watcher.kong-watcher-system.svc/report/v1alpha1"}, nil},
	"KONG_WATCHER_MANAGER_CA":      {[]string{"-----BEGIN CERTIFICATE-----\n...\n-----END CERTIFICATE-----\n"}, nil},
	"KONG_WATCHER_MANAGER_ADDR":    {[]string{"10.96.0.10:443", "[fd00::1]:443", "manager:443"}, []string{"10.96.0.10", "", "a:b:c"}},
	"KONG_WATCHER_TOKEN_FILE":      {[]string{"/var/run/secrets/kong-watcher.io/report/token"}, nil},
	"KONG_WATCHER_SUPERVISE":       {[]string{"true", "false", "yes", ""}, nil},
	"KONG_WATCHER_PROC_ROOT":       {[]string{"/proc", "/host/proc"}, nil},
	"KONG_WATCHER_ONLY_PIDS":       {[]string{"1", "12, 34", "2147483647"}, []string{"x", "0", "1,,2", "-3", ""}},
}

func TestEverySettingAcceptsAndRejects(t *testing.T) {
	seen := map[string]bool{}
	for _, s := range All {
		info := s.Info()
		if seen[info.Env] {
			t.Errorf("%s is in All twice", info.Env)
		}
		seen[info.Env] = true
		vs, ok := values[info.Env]
		if !ok {
			t.Errorf("%s: no accept/reject cases", info.Env)
			continue
		}
		for _, v := range vs.accept {
			if err := s.Check(v); err != nil {
				t.Errorf("%s=%q refused: %v", info.Env, v, err)
			}
		}
		for _, v := range vs.reject {
			err := s.Check(v)
			if err == nil {
				t.Errorf("%s=%q accepted", info.Env, v)
				continue
			}
			if !strings.Contains(err.Error(), quotedStart(v)) {
				t.Errorf("%s=%q: error %q does not quote the value", info.Env, v, err)
			}
		}
		if info.Doc == "" {
			t.Errorf("%s has no Doc", info.Env)
		}
		if info.Default != "" {
			if err := s.Check(info.Default); err != nil {
				t.Errorf("%s: the default %q is invalid: %v", info.Env, info.Default, err)
			}
		}
	}
	for env := range values {
		if !seen[env] {
			t.Errorf("cases for %s, which is not in All", env)
		}
	}
}

func env(m map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := m[k]; return v, ok }
}

func TestGet(t *testing.T) {
	for _, v := range []string{"", "  "} {
		got, err := StatsInterval.Get(env(map[string]string{StatsInterval.Env: v}))
		if err != nil || got != 30*time.Second {
			t.Errorf("STATS_INTERVAL=%q: %v, %v; want the default", v, got, err)
		}
	}
	if got, err := LogLevel.Get(env(map[string]string{"LOG_LEVEL": " DEBUG "})); err != nil || got != "debug" {
		t.Errorf("LOG_LEVEL=DEBUG: %q, %v", got, err)
	}
	_, err := LogLevel.Get(env(map[string]string{"LOG_LEVEL": "loud"}))
	if want := `LOG_LEVEL="loud": want debug, info, warn or error`; err == nil || err.Error() != want {
		t.Errorf("error %v, want %s", err, want)
	}
	_, err = ProcessName.Get(env(map[string]string{"KONG_PROCESS_NAME": strings.Repeat("n", 40)}))
	if want := `KONG_PROCESS_NAME="` + strings.Repeat("n", 32) + `...": want a kernel process name (at most 15 bytes, no '/')`; err == nil || err.Error() != want {
		t.Errorf("error %v, want %s", err, want)
	}
	if l, err := Listeners.Get(env(nil)); err != nil || l != nil {
		t.Errorf("KONG_WATCHER_LISTENERS unset: %v, %v; want nil", l, err)
	}
	if l, err := Listeners.Get(env(map[string]string{"KONG_WATCHER_LISTENERS": "status=8100;proxy=8000"})); err != nil || l.String() != "proxy=8000;status=8100" {
		t.Errorf("KONG_WATCHER_LISTENERS: %v, %v", l, err)
	}
	if p, err := OnlyPIDs.Get(env(map[string]string{"KONG_WATCHER_ONLY_PIDS": "12, 34"})); err != nil || !reflect.DeepEqual(p, []int{12, 34}) {
		t.Errorf("KONG_WATCHER_ONLY_PIDS: %v, %v", p, err)
	}
}

// The defaults the agent's other packages own are the ones this contract reports.
func TestDefaults(t *testing.T) {
	for _, c := range []struct {
		got, want any
	}{
		{LogLevel.DefaultValue(), "info"},
		{JSONLog.DefaultValue(), false},
		{ProcessName.DefaultValue(), "nginx"},
		{StatsInterval.DefaultValue(), 30 * time.Second},
		{MetricsAddr.DefaultValue(), ":9464"},
		{DataPath.DefaultValue(), DataPathAuto},
		{LuaPhases.DefaultValue(), LuaSampled},
		{LuaSampleEvery.DefaultValue(), time.Minute},
		{LuaSampleFor.DefaultValue(), 2 * time.Second},
		{MaxHosts.DefaultValue(), 100},
		{MaxPaths.DefaultValue(), 200},
		{TrafficStatsEventInterval.DefaultValue(), 5 * time.Minute},
		{HighErrorRateThreshold.DefaultValue(), 0.05},
		{HighLatencyP99Ms.DefaultValue(), 1000.0},
		{AlertMinRequests.DefaultValue(), uint64(20)},
		{ProcRoot.DefaultValue(), "/proc"},
		{Supervise.DefaultValue(), false},
	} {
		if !reflect.DeepEqual(c.got, c.want) {
			t.Errorf("default %v, want %v", c.got, c.want)
		}
	}
	// Written as the README shows them, not as Go formats the agent's constants.
	for got, want := range map[string]string{TrafficStatsEventInterval.Default: "5m", HighErrorRateThreshold.Default: "5%",
		HighLatencyP99Ms.Default: "1000", AlertMinRequests.Default: "20", MetricsAddr.Default: ":9464"} {
		if got != want {
			t.Errorf("default written %q, want %q", got, want)
		}
	}
	if LuaSampleFor.DefaultValue() >= LuaSampleEvery.DefaultValue() {
		t.Error("the default Lua sample is not shorter than its period")
	}
}

func TestShortDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{time.Hour: "1h", 5 * time.Minute: "5m", time.Second: "1s",
		100 * time.Millisecond: "100ms", 90 * time.Minute: "1h30m", time.Hour + time.Second: "1h0m1s", 0: "0s"} {
		if got := shortDuration(d); got != want {
			t.Errorf("shortDuration(%v) = %q, want %q", d, got, want)
		}
		if back, err := time.ParseDuration(shortDuration(d)); err != nil || back != d {
			t.Errorf("%q reads back as %v, %v", shortDuration(d), back, err)
		}
	}
}

// quotedStart is how an error about v begins to quote it: the first runes of v, quoted.
func quotedStart(v string) string {
	q := quote(strings.TrimSpace(v))
	return q[:min(len(q), 8)]
}

// FuzzParse feeds any value to any setting: never a panic; a refusal quotes the value; a
// string setting returns its canonical spelling, which reads back as itself.
func FuzzParse(f *testing.F) {
	for i, s := range All {
		f.Add(uint8(i), s.Info().Default)
		f.Add(uint8(i), " x ")
	}
	f.Fuzz(func(t *testing.T, i uint8, v string) {
		s := All[int(i)%len(All)]
		env := s.Info().Env
		if err := s.Check(v); err != nil {
			if !strings.Contains(err.Error(), quotedStart(v)) {
				t.Fatalf("%s=%q: error %q does not quote the value", env, v, err)
			}
			return
		}
		if s, ok := s.(*Setting[string]); ok {
			got, _ := s.Parse(v)
			if again, err := s.Parse(got); err != nil || again != got {
				t.Fatalf("%s=%q reads as %q, which reads as %q, %v", env, v, got, again, err)
			}
		}
	})
}
