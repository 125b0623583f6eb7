package report

import (
	"flag"
	"os"
	"path/filepath"
	"testing"

	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

var update = flag.Bool("update", false, "rewrite golden files")

func TestTableGolden(t *testing.T) {
	for name, s := range map[string]v1alpha1.Stats{"table.golden": sampleStats(), "table-empty.golden": {Since: since, Updated: since}} {
		got := Table(s)
		path := filepath.Join("testdata", name)
		if *update {
			if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
				t.Fatal(err)
			}
		}
		want, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("%v (run go test -run TestTableGolden -update)", err)
		}
		if got != string(want) {
			t.Errorf("%s mismatch:\n--- got\n%s\n--- want\n%s", name, got, want)
		}
	}
}
