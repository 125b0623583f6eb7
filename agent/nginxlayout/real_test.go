package nginxlayout

import (
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
)

// Real calibration samples from Debian's nginx 1.22.1 (recorded by agent/probes'
// TestRecordRealSnapshots with KW_WRITE_TESTDATA=1): GET/HEAD/POST over HTTP/1.0, 1.1 and 2,
// proxied, 404, 499, 502 and a 400 on the request line.
func TestRealDebianSamples(t *testing.T) {
	files, _ := filepath.Glob("testdata/debian-1.22.1/*.json")
	if len(files) < 5 {
		t.Fatalf("only %d recorded samples", len(files))
	}
	l := NewLearner(5, 50)
	var got *Layout
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var s Sample
		if err := json.Unmarshal(b, &s); err != nil {
			t.Fatal(err)
		}
		lay, err := Analyze(s)
		if err != nil || lay != Debian1221 {
			t.Errorf("%s: %v %v", f, lay, err)
			continue
		}
		if off, err := ServerName(s); off != Debian1221ServerName || err != nil {
			t.Errorf("%s: server_name offset %d, %v; want %d", f, off, err, Debian1221ServerName)
		}
		if !MainIsR(s, lay) {
			t.Errorf("%s: r->main != r at start_sec+%d", f, SToMain)
		}
		if g, err := l.Add(s); err != nil {
			t.Fatal(err)
		} else if g != nil {
			got = g
		}
		// The same memory with the time moved two days on is no longer accepted.
		s.NowSec += 2 * 86400
		if _, err := Analyze(s); err == nil {
			t.Errorf("%s: accepted a stale start_sec", f)
		}
	}
	if got == nil || *got != Debian1221 || l.ServerName() != Debian1221ServerName {
		t.Fatalf("learnt %v, server_name offset %d", got, l.ServerName())
	}
}
