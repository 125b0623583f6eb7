package app

import (
	"flag"
	"os"
	"regexp"
	"strings"
	"testing"

	"github.com/kong-watcher/kong-watcher/api/agentenv"
)

// valuesFile is the chart's values, whose comments document the defaults of the flags that
// its empty values leave unset.
const valuesFile = "../../../charts/kong-watcher/values.yaml"

var (
	flagName      = regexp.MustCompile(`--([a-z0-9-]+)`)
	documentedDef = regexp.MustCompile(`\((webhook|agent) defaults?: ([^)]*)\)`)
)

// A comment of the chart's values that names flags and says "(webhook default: X)" states
// the flags' defaults, "(agent default: X)" the default of the agent's setting that a flag
// empty by default leaves to the agent: both must be what the webhook and api/agentenv say.
func TestChartValuesDocumentDefaults(t *testing.T) {
	b, err := os.ReadFile(valuesFile)
	if err != nil {
		t.Fatal(err)
	}
	fs := flag.NewFlagSet("webhook", flag.ContinueOnError)
	NewOptions().BindFlags(fs)

	checked := 0
	for _, comment := range commentBlocks(string(b)) {
		m := documentedDef.FindStringSubmatch(comment)
		if m == nil {
			continue
		}
		var flags []string
		for _, f := range flagName.FindAllStringSubmatch(comment, -1) {
			flags = append(flags, f[1])
		}
		values := strings.Split(m[2], ", ")
		if len(flags) != len(values) {
			t.Errorf("comment %q: %d flags, %d defaults", comment, len(flags), len(values))
			continue
		}
		for i, name := range flags {
			f := fs.Lookup(name)
			if f == nil {
				t.Errorf("comment %q: no flag --%s", comment, name)
				continue
			}
			want := f.DefValue
			if m[1] == "agent" {
				want = agentDefault(t, f)
			}
			if values[i] != want {
				t.Errorf("%s says --%s defaults to %q (%s), want %q", valuesFile, name, values[i], m[1], want)
			}
			checked++
		}
	}
	if checked < 10 {
		t.Errorf("only %d documented defaults found in %s", checked, valuesFile)
	}
}

// agentDefault is the contract's default of the setting f's help names, for a flag that is
// empty by default.
func agentDefault(t *testing.T, f *flag.Flag) string {
	t.Helper()
	if f.DefValue != "" {
		t.Errorf("--%s defaults to %q: the webhook's default, not the agent's", f.Name, f.DefValue)
	}
	for _, v := range agentenv.All {
		if i := v.Info(); regexp.MustCompile(`\bThe agent's ` + i.Env + `\b`).MatchString(f.Usage) {
			return i.Default
		}
	}
	t.Errorf("the help of --%s names none of the agent's settings", f.Name)
	return ""
}

// commentBlocks are the runs of consecutive comment lines of a YAML file, each joined into
// one line.
func commentBlocks(yaml string) []string {
	var blocks []string
	var cur []string
	for _, line := range append(strings.Split(yaml, "\n"), "") {
		if l := strings.TrimSpace(line); strings.HasPrefix(l, "#") {
			cur = append(cur, strings.TrimSpace(strings.TrimPrefix(l, "#")))
			continue
		}
		if len(cur) > 0 {
			blocks = append(blocks, strings.Join(cur, " "))
			cur = nil
		}
	}
	return blocks
}
