package helm

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/api/agentenv"
	"github.com/kong-watcher/kong-watcher/cmd/webhook/app"
	"github.com/kong-watcher/kong-watcher/test/fixture"
)

// agentValues are the chart's agent values that reach the agent as one of its settings, each
// through a webhook flag that the webhook checks with the setting's rule.
var agentValues = []struct {
	key     string // under agent.
	setting agentenv.Var
	// beyond are values the contract refuses for a reason a pattern cannot say (a range of
	// durations, an integer above 2^64-1): the schema lets them through and the webhook
	// refuses them when it starts.
	beyond []string
}{
	{"logLevel", &agentenv.LogLevel, nil},
	{"processName", &agentenv.ProcessName, nil},
	{"statsInterval", &agentenv.StatsInterval, []string{"0s", "999ms", "61m", "1h0m1s"}},
	{"highErrorRateThreshold", &agentenv.HighErrorRateThreshold, nil},
	{"highLatencyP99Ms", &agentenv.HighLatencyP99Ms, nil},
	{"alertMinRequests", &agentenv.AlertMinRequests, []string{"18446744073709551616"}},
}

// contractCases are api/agentenv's accept and reject cases, by env name.
func contractCases(t *testing.T) map[string]struct{ Accept, Reject []string } {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixture.RepoRoot(t), "api/agentenv/testdata/values.json"))
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]struct{ Accept, Reject []string }
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	return m
}

// templateAgentValue renders the chart with agent.<key> set to v, through a values file so
// that v reaches the schema byte for byte (--set would split it at commas).
func templateAgentValue(t *testing.T, key string, v any) (string, error) {
	t.Helper()
	b, err := json.Marshal(map[string]any{"agent": map[string]any{key: v}})
	if err != nil {
		t.Fatal(err)
	}
	f := filepath.Join(t.TempDir(), "values.json")
	if err := os.WriteFile(f, b, 0o644); err != nil {
		t.Fatal(err)
	}
	return run(t, fixture.RepoRoot(t), helmBin(t), "template", release, chartDir, "-n", namespace, "-f", f)
}

// webhookAccepts reports whether cmd/webhook starts with the args of the rendered Deployment.
func webhookAccepts(t *testing.T, rendered string) error {
	t.Helper()
	dep := parse(t, "helm template", rendered)["apps/v1 Deployment "+namespace+"/kong-watcher-webhook"]
	if dep == nil {
		t.Fatal("no webhook Deployment rendered")
	}
	b, err := json.Marshal(dep)
	if err != nil {
		t.Fatal(err)
	}
	var d struct {
		Spec struct {
			Template struct {
				Spec struct {
					Containers []struct {
						Args []string `json:"args"`
					} `json:"containers"`
				} `json:"spec"`
			} `json:"template"`
		} `json:"spec"`
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	t.Setenv(app.EnvAgentImage, "kong-watcher/agent:test")
	t.Setenv(app.EnvPodNamespace, namespace)
	opts := app.NewOptions()
	fs := flag.NewFlagSet("webhook", flag.ContinueOnError)
	fs.SetOutput(new(strings.Builder))
	opts.BindFlags(fs)
	if err := fs.Parse(d.Spec.Template.Spec.Containers[0].Args); err != nil {
		return err
	}
	return opts.Complete()
}

// The schema accepts every value the contract's tests accept for a setting the chart passes
// on (and the webhook then starts with it), and refuses the values they refuse, but for ""
// (the chart's "unset") and those a pattern cannot tell apart, which the webhook refuses.
func TestSchemaFollowsContract(t *testing.T) {
	helmBin(t)
	cases := contractCases(t)
	for _, a := range agentValues {
		env := a.setting.Info().Env
		c, ok := cases[env]
		if !ok || len(c.Accept) == 0 {
			t.Fatalf("api/agentenv has no cases for %s", env)
		}
		t.Run(a.key, func(t *testing.T) {
			for _, v := range c.Accept {
				out, err := templateAgentValue(t, a.key, v)
				if err != nil {
					t.Errorf("agent.%s=%q: the contract accepts it, the chart does not: %v", a.key, v, err)
					continue
				}
				if err := webhookAccepts(t, out); err != nil {
					t.Errorf("agent.%s=%q: rendered, but the webhook refuses it: %v", a.key, v, err)
				}
			}
			for _, v := range a.beyond {
				if !slices.Contains(c.Reject, v) {
					t.Errorf("agent.%s=%q is listed beyond the schema, but the contract's tests do not refuse it", a.key, v)
				}
			}
			for _, v := range c.Reject {
				out, err := templateAgentValue(t, a.key, v)
				switch {
				case v == "" || slices.Contains(a.beyond, v):
					if err != nil {
						t.Errorf("agent.%s=%q: refused by the chart: %v", a.key, v, err)
					} else if v != "" && webhookAccepts(t, out) == nil {
						t.Errorf("agent.%s=%q: the contract refuses it, the webhook starts with it", a.key, v)
					}
				case err == nil:
					t.Errorf("agent.%s=%q: the contract refuses it, the schema does not", a.key, v)
				case !strings.Contains(err.Error(), "schema") || !strings.Contains(err.Error(), a.key):
					t.Errorf("agent.%s=%q refused, but not by the schema: %v", a.key, v, err)
				}
			}
		})
	}
}

// A number in a values file reaches the webhook as one it reads: 0 is an error rate threshold,
// not "unset", and a large integer is not written with an exponent.
func TestSchemaNumbers(t *testing.T) {
	helmBin(t)
	for _, c := range []struct {
		key  string
		v    any
		flag string
	}{
		{"highErrorRateThreshold", 0, "--agent-high-error-rate-threshold=0"},
		{"highErrorRateThreshold", 0.025, "--agent-high-error-rate-threshold=0.025"},
		{"highLatencyP99Ms", 250, "--agent-high-latency-p99-ms=250"},
		{"alertMinRequests", 1000000, "--agent-alert-min-requests=1000000"},
	} {
		out, err := templateAgentValue(t, c.key, c.v)
		if err != nil {
			t.Errorf("agent.%s=%v: %v", c.key, c.v, err)
			continue
		}
		if !strings.Contains(out, "- "+c.flag+"\n") {
			t.Errorf("agent.%s=%v does not render %s", c.key, c.v, c.flag)
		}
		if err := webhookAccepts(t, out); err != nil {
			t.Errorf("agent.%s=%v: the webhook refuses it: %v", c.key, c.v, err)
		}
	}
	for _, c := range []struct {
		key string
		v   any
	}{{"highErrorRateThreshold", 1.5}, {"highLatencyP99Ms", 0}, {"alertMinRequests", 0}} {
		if _, err := templateAgentValue(t, c.key, c.v); err == nil || !strings.Contains(err.Error(), "schema") {
			t.Errorf("agent.%s=%v: not refused by the schema: %v", c.key, c.v, err)
		}
	}
}

// choicePattern is the schema pattern of a setting that is one of values: "" (unset) or one
// of them, in any case when fold, with white space around (the contract ignores it).
func choicePattern(values []string, fold bool) string {
	alts := make([]string, len(values))
	for i, v := range values {
		var b strings.Builder
		for _, r := range v {
			lo, up := strings.ToLower(string(r)), strings.ToUpper(string(r))
			if fold && lo != up {
				b.WriteString("[" + lo + up + "]")
			} else {
				b.WriteString(regexp.QuoteMeta(string(r)))
			}
		}
		alts[i] = b.String()
	}
	return `^$|^\s*(` + strings.Join(alts, "|") + `)\s*$`
}

// A setting that is one of a list has the list's pattern in the schema, built from the
// contract's values: a value added to the contract fails this test until the schema has it.
func TestSchemaChoicesFromContract(t *testing.T) {
	checked := 0
	for _, a := range agentValues {
		s, ok := a.setting.(*agentenv.Setting[string])
		if !ok {
			continue
		}
		values, fold := s.Allowed()
		if values == nil {
			continue
		}
		want := choicePattern(values, fold)
		if got := agentPattern(t, a.key).String(); got != want {
			t.Errorf("values.schema.json: agent.%s's pattern is %q, the contract's %s wants\n%s", a.key, got, s.Env, mustJSON(want))
		}
		checked++
	}
	if checked == 0 {
		t.Error("no chart value is one of a list: the test checks nothing")
	}
}

func mustJSON(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

// agentPattern is the pattern of the string form of agent.<key> in values.schema.json.
func agentPattern(t *testing.T, key string) *regexp.Regexp {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(fixture.RepoRoot(t), chartDir, "values.schema.json"))
	if err != nil {
		t.Fatal(err)
	}
	type str struct {
		Type    any    `json:"type"`
		Pattern string `json:"pattern"`
	}
	var schema struct {
		Properties struct {
			Agent struct {
				Properties map[string]struct {
					str
					OneOf []str `json:"oneOf"`
				} `json:"properties"`
			} `json:"agent"`
		} `json:"properties"`
	}
	if err := json.Unmarshal(b, &schema); err != nil {
		t.Fatal(err)
	}
	p := schema.Properties.Agent.Properties[key]
	pattern := p.Pattern
	for _, o := range p.OneOf {
		if o.Type == "string" {
			pattern = o.Pattern
		}
	}
	if pattern == "" {
		t.Fatalf("values.schema.json: agent.%s has no pattern", key)
	}
	// Helm's JSON schema validator compiles patterns with Go's regexp, as here.
	return regexp.MustCompile(pattern)
}

// The schema's patterns against the contract's parsers over combinations of numbers and
// units, in Go's regexp as Helm runs them: they agree but where a pattern cannot follow the
// parser, which each setting names.
func TestSchemaPatternsFollowParsers(t *testing.T) {
	var corpus []string
	for _, n := range []string{"0", "00", "1", "01", "5", "10", "59", "60", "99", "100", "101", "150", "999", "1000",
		"0.5", ".5", "5.", "1.0", "1.5", "2.5", "100.0", "100.5", "0.05", "0.0", "+1", "-1", "-0", "1e3", "1e-3",
		"0x10", "0x1p-2", "Inf", "NaN", ".", "", "18446744073709551615", "18446744073709551616"} {
		for _, u := range []string{"", "%", "ns", "us", "µs", "μs", "ms", "s", "m", "h", "1s", "m30s", "h0m1s", "x"} {
			if v := n + u; v != "" {
				corpus = append(corpus, v, " "+v+" ")
			}
		}
	}
	corpus = append(corpus, "debug", "DeBuG", "warning", "nginx", "ngïnx", "n/x", "fifteen-chars-x", "ünicode-chars-x")
	for _, c := range []struct {
		key     string
		setting agentenv.Var
		// wider: the schema accepts v, the contract does not; narrower: the other way.
		wider, narrower func(v string) bool
	}{
		{"logLevel", &agentenv.LogLevel, nil, nil},
		// The length is in bytes, a pattern counts characters.
		{"processName", &agentenv.ProcessName, func(v string) bool { return len(v) > 15 }, nil},
		// The range is not a pattern's; the webhook's flag reads a duration without white space.
		{"statsInterval", &agentenv.StatsInterval, func(v string) bool { return isDuration(v) || overflows(v) }, hasSpace},
		// The exponent and hexadecimal forms, whose range a pattern cannot bound, and -0.
		{"highErrorRateThreshold", &agentenv.HighErrorRateThreshold, nil,
			func(v string) bool {
				return strings.ContainsAny(v, "eExX") || strings.HasPrefix(strings.TrimSpace(v), "-")
			}},
		// A duration under 1ns is 0, or beyond time.Duration's range; the hexadecimal forms.
		{"highLatencyP99Ms", &agentenv.HighLatencyP99Ms, func(v string) bool { return strings.Contains(v, "ns") || overflows(v) },
			func(v string) bool { return strings.ContainsAny(v, "xX") }},
		{"alertMinRequests", &agentenv.AlertMinRequests, func(v string) bool { return len(strings.TrimSpace(v)) >= 20 }, nil},
	} {
		re := agentPattern(t, c.key)
		for _, v := range corpus {
			schema, contract := re.MatchString(v), c.setting.Check(v) == nil
			switch {
			case schema && !contract && (c.wider == nil || !c.wider(v)):
				t.Errorf("agent.%s=%q: the schema accepts it, %s refuses it", c.key, v, c.setting.Info().Env)
			case !schema && contract && (c.narrower == nil || !c.narrower(v)):
				t.Errorf("agent.%s=%q: the schema refuses it, %s accepts it", c.key, v, c.setting.Info().Env)
			}
		}
	}
}

func isDuration(v string) bool { _, err := time.ParseDuration(v); return err == nil }

// overflows reports whether v has a number of 19 digits or more: as a duration of any unit
// but ns, beyond time.Duration's range (292 years).
func overflows(v string) bool { return regexp.MustCompile(`[0-9]{19}`).MatchString(v) }

func hasSpace(v string) bool { return strings.TrimSpace(v) != v }
