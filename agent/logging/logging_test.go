package logging

import (
	"strings"
	"testing"

	"go.uber.org/zap/zapcore"
)

func TestParseLevel(t *testing.T) {
	for in, want := range map[string]zapcore.Level{"debug": zapcore.DebugLevel, "INFO": zapcore.InfoLevel, "": zapcore.InfoLevel,
		" warn ": zapcore.WarnLevel, "warning": zapcore.WarnLevel, "error": zapcore.ErrorLevel} {
		if got, err := ParseLevel(in); err != nil || got != want {
			t.Errorf("ParseLevel(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"trace", "verbose", "1", "fatal"} {
		_, err := ParseLevel(in)
		if err == nil || !strings.Contains(err.Error(), "debug, info, warn, error") {
			t.Errorf("ParseLevel(%q) error = %v, want one naming the valid levels", in, err)
		}
	}
}

func TestNewLevels(t *testing.T) {
	for _, c := range []struct {
		level        string
		json         bool
		debug, info  bool
		errorEnabled bool
	}{
		{"debug", false, true, true, true},
		{"info", true, false, true, true},
		{"warn", false, false, false, true},
		{"error", true, false, false, true},
	} {
		log, z, err := New(c.level, c.json)
		if err != nil {
			t.Fatalf("New(%q): %v", c.level, err)
		}
		if got := log.V(1).Enabled(); got != c.debug {
			t.Errorf("%s: V(1) enabled = %v", c.level, got)
		}
		if got := log.V(0).Enabled(); got != c.info {
			t.Errorf("%s: V(0) enabled = %v", c.level, got)
		}
		if got := z.Core().Enabled(zapcore.ErrorLevel); got != c.errorEnabled {
			t.Errorf("%s: error enabled = %v", c.level, got)
		}
	}
	if _, _, err := New("loud", false); err == nil {
		t.Error("New accepted an invalid level")
	}
}
