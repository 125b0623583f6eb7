package agentenv

import (
	"fmt"
	"os"
	"regexp"
	"strings"
	"testing"
)

// tableRow is how the README shows a setting.
func tableRow(i Info) string {
	def := "(none)"
	if i.Default != "" {
		def = "`" + i.Default + "`"
	}
	return fmt.Sprintf("| `%s` | %s | %s |", i.Env, def, i.Doc)
}

// The README's table of the agent's settings is the contract's: every setting, in order, with
// its default and meaning.
func TestREADMETable(t *testing.T) {
	b, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	const heading, header = "## The agent's settings", "| env | default | meaning |"
	readme := string(b)
	at := strings.Index(readme, heading)
	if at < 0 {
		t.Fatalf("README.md has no %q section", heading)
	}
	var got []string
	in := false
	for _, line := range strings.Split(readme[at:], "\n") {
		switch {
		case line == header:
			in = true
		case in && strings.HasPrefix(line, "|---"):
		case in && strings.HasPrefix(line, "|"):
			got = append(got, line)
		case in:
			in = false
		}
		if !in && len(got) > 0 {
			break
		}
	}
	var want []string
	for _, s := range All {
		want = append(want, tableRow(s.Info()))
	}
	if strings.Join(got, "\n") == strings.Join(want, "\n") {
		return
	}
	for i := range max(len(got), len(want)) {
		g, w := "(missing)", "(none)"
		if i < len(got) {
			g = got[i]
		}
		if i < len(want) {
			w = want[i]
		}
		if g != w {
			t.Errorf("README.md's settings table, row %d:\n got %s\nwant %s", i+1, g, w)
		}
	}
	t.Logf("the table api/agentenv describes:\n%s\n|---|---|---|\n%s", header, strings.Join(want, "\n"))
}

// docs/design.md names only variables the agent reads, and states their defaults as the
// contract does.
func TestDesignDoc(t *testing.T) {
	b, err := os.ReadFile("../../docs/design.md")
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	known := map[string]bool{}
	for _, s := range All {
		known[s.Info().Env] = true
	}
	for _, m := range regexp.MustCompile(`\bKONG_(?:WATCHER_[A-Z0-9_]*[A-Z0-9]|PROCESS_NAME)\b`).FindAllString(doc, -1) {
		if !known[m] {
			t.Errorf("docs/design.md names %s, which the agent does not read", m)
		}
	}
	for _, phrase := range []string{
		fmt.Sprintf("%s of every %s by default", LuaSampleFor.Default, LuaSampleEvery.Default),
		fmt.Sprintf("`%s` hosts and\n`%s` paths (`METHOD /normalised/path`; %s and %s by default)",
			MaxHosts.Env, MaxPaths.Env, MaxHosts.Default, MaxPaths.Default),
	} {
		if !strings.Contains(doc, phrase) {
			t.Errorf("docs/design.md does not say %q", phrase)
		}
	}
}
