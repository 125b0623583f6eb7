package probes

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/kong-watcher/kong-watcher/agent/nginxlayout"
)

// TestRecordRealSnapshots captures calibration samples from the real Debian nginx and, with
// KW_WRITE_TESTDATA=1, stores them as agent/nginxlayout/testdata/debian-1.22.1/*.json so the
// learner is also tested on real memory, without root.
func TestRecordRealSnapshots(t *testing.T) {
	requireOuter(t)
	var mu sync.Mutex
	var samples []nginxlayout.Sample
	record := func(cb *rawCalib) {
		s := calibSample(cb, time.Now().Unix())
		s.Snap = append([]byte(nil), s.Snap...)
		mu.Lock()
		samples = append(samples, s)
		mu.Unlock()
	}
	n := startNginx(t)
	p, c := startProbes(t, n, Options{onCalibration: record})
	sent := traffic(t, n, 1)
	checkAgainstLog(t, n, p, c, sent)
	mu.Lock()
	defer mu.Unlock()
	if len(samples) < learnNeed {
		t.Fatalf("only %d calibration samples", len(samples))
	}
	mainIsR := 0
	for _, s := range samples {
		if lay, err := nginxlayout.Analyze(s); err == nil && lay == nginxlayout.Debian1221 {
			// r->main sits right after the contiguous run (schema, out): main == r for a
			// client request.
			if off := lay.Start + 168; off+8 <= len(s.Snap) && leU64(s.Snap[off:]) == s.Addr {
				mainIsR++
			}
		}
	}
	t.Logf("%d real samples, r->main == r at start_sec+168 in %d", len(samples), mainIsR)
	if os.Getenv("KW_WRITE_TESTDATA") != "1" {
		return
	}
	dir := filepath.Join("..", "nginxlayout", "testdata", "debian-1.22.1")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	for i, s := range samples {
		if i >= 12 {
			break
		}
		b, _ := json.Marshal(s)
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("sample-%02d.json", i)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}

func leU64(b []byte) uint64 {
	var v uint64
	for i := 7; i >= 0; i-- {
		v = v<<8 | uint64(b[i])
	}
	return v
}
