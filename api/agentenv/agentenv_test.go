package agentenv

import (
	"encoding/json"
	"fmt"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/listeners"
)

// Cases are what each setting accepts and refuses (testdata/values.json, by env name): every
// setting has its row. test/helm checks the chart's values.schema.json against them too.
type Cases struct{ Accept, Reject []string }

var values = func() map[string]Cases {
	b, err := os.ReadFile("testdata/values.json")
	if err != nil {
		panic(err)
	}
	var m map[string]Cases
	if err := json.Unmarshal(b, &m); err != nil {
		panic(err)
	}
	return m
}()

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
		for _, v := range vs.Accept {
			if err := s.Check(v); err != nil {
				t.Errorf("%s=%q refused: %v", info.Env, v, err)
			}
		}
		for _, v := range vs.Reject {
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

// renderBack reads v, renders what it read and reads that again: the same value, or an error.
// ok is false when s does not accept v.
func renderBack(s Var, v string) (ok bool, err error) {
	switch s := s.(type) {
	case *Setting[string]:
		return renderBackT(s, v)
	case *Setting[bool]:
		return renderBackT(s, v)
	case *Setting[time.Duration]:
		return renderBackT(s, v)
	case *Setting[int]:
		return renderBackT(s, v)
	case *Setting[uint64]:
		return renderBackT(s, v)
	case *Setting[float64]:
		return renderBackT(s, v)
	case *Setting[[]byte]:
		return renderBackT(s, v)
	case *Setting[[]int]:
		return renderBackT(s, v)
	case *Setting[*listeners.Set]:
		return renderBackT(s, v)
	}
	return false, fmt.Errorf("%s: a setting of type %T: renderBack does not know it", s.Info().Env, s)
}

func renderBackT[T any](s *Setting[T], v string) (bool, error) {
	t, err := s.Parse(v)
	if err != nil {
		return false, nil
	}
	r := s.Render(t)
	back, err := s.Parse(r)
	if err != nil || !reflect.DeepEqual(back, t) {
		return true, fmt.Errorf("%s=%q reads as %#v, renders as %q, which reads as %#v, %v", s.Env, v, t, r, back, err)
	}
	return true, nil
}

// Render is Parse's inverse for every value a setting accepts, its default included; every
// setting has a label, and only string settings a list of allowed values, each of which it
// accepts as itself.
func TestEverySettingRendersBack(t *testing.T) {
	for _, s := range All {
		info := s.Info()
		if info.Label == "" {
			t.Errorf("%s has no Label", info.Env)
		}
		for _, v := range append(values[info.Env].Accept, info.Default) {
			if ok, err := renderBack(s, v); err != nil || (!ok && v != "") {
				t.Errorf("%s=%q: accepted %v, %v", info.Env, v, ok, err)
			}
		}
		if str, ok := s.(*Setting[string]); ok {
			allowed, _ := str.Allowed()
			for _, a := range allowed {
				if got, err := str.Parse(a); err != nil || got != a {
					t.Errorf("%s: the allowed value %q reads as %q, %v", info.Env, a, got, err)
				}
			}
		}
	}
	for _, c := range []struct {
		got, want string
	}{
		{JSONLog.Render(true), "true"},
		{StatsInterval.Render(90 * time.Second), "1m30s"},
		{StatsInterval.Render(time.Hour), "1h"},
		{HighErrorRateThreshold.Render(0.05), "0.05"},
		{HighLatencyP99Ms.Render(250), "250"},
		{AlertMinRequests.Render(20), "20"},
		{OnlyPIDs.Render([]int{12, 34}), "12,34"},
		{Listeners.Render(nil), ""},
	} {
		if c.got != c.want {
			t.Errorf("rendered %q, want %q", c.got, c.want)
		}
	}
	if v, fold := LogLevel.Allowed(); !reflect.DeepEqual(v, []string{"debug", "info", "warn", "error"}) || !fold {
		t.Errorf("LogLevel.Allowed() = %q, %v", v, fold)
	}
	if v, _ := StatsInterval.Allowed(); v != nil {
		t.Errorf("StatsInterval.Allowed() = %q", v)
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
// string setting returns its canonical spelling, which reads back as itself; what is read
// renders to a value that reads back as it.
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
		if _, err := renderBack(s, v); err != nil {
			t.Fatal(err)
		}
	})
}
