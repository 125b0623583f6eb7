package benchkit

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestWriteDocSection(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "docs", "benchmarks.md")
	write := func(heading, section string) string {
		t.Helper()
		if err := WriteDocSection(p, heading, section); err != nil {
			t.Fatal(err)
		}
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		return string(got)
	}

	// Missing file (and folder): created with a title and the section.
	if got := write("## Agent", "## Agent\n\nv1\n"); !strings.HasPrefix(got, "# Benchmarks\n") || !strings.HasSuffix(got, "\n\n## Agent\n\nv1\n") {
		t.Fatalf("created file:\n%s", got)
	}

	// Ours is replaced in place; the section after it is kept; a "## " line in a fence is not a heading.
	os.WriteFile(p, []byte("# B\n\n## Agent\n\nold\n```\n## not a heading\n```\n\n## Webhook\n\nw\n"), 0o644)
	if got, want := write("## Agent", "## Agent\n\nnew\n"), "# B\n\n## Agent\n\nnew\n\n## Webhook\n\nw\n"; got != want {
		t.Fatalf("replace:\n%q\nwant\n%q", got, want)
	}

	// The last section: replaced up to the end, without a trailing blank line.
	if got, want := write("## Webhook", "## Webhook\n\nw2\n\n\n"), "# B\n\n## Agent\n\nnew\n\n## Webhook\n\nw2\n"; got != want {
		t.Fatalf("replace last:\n%q\nwant\n%q", got, want)
	}

	// A heading that only starts like ours is another section: ours goes at the end.
	if got, want := write("## Manager", "## Manager\n\nm\n"), "# B\n\n## Agent\n\nnew\n\n## Webhook\n\nw2\n\n## Manager\n\nm\n"; got != want {
		t.Fatalf("append:\n%q\nwant\n%q", got, want)
	}
	if _, err := os.Stat(p + ".tmp"); !os.IsNotExist(err) {
		t.Fatalf("temporary file left: %v", err)
	}
}
