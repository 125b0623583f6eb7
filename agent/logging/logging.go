// Package logging builds the agent's logger: zap underneath (fast, structured), exposed as a
// logr.Logger (what the rest of the agent and client-go speak).
package logging

import (
	"fmt"
	"strings"

	"github.com/go-logr/logr"
	"github.com/go-logr/zapr"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// Levels are the accepted LOG_LEVEL values. logr's V(1) is "debug": per-request lines are
// logged at V(1), so they appear only with LOG_LEVEL=debug.
var Levels = []string{"debug", "info", "warn", "error"}

// ParseLevel maps a LOG_LEVEL value (case-insensitive; "" means info) to a zap level.
func ParseLevel(level string) (zapcore.Level, error) {
	switch strings.ToLower(strings.TrimSpace(level)) {
	case "debug":
		return zapcore.DebugLevel, nil // logr V(1) == zap level -1 == Debug
	case "info", "":
		return zapcore.InfoLevel, nil
	case "warn", "warning":
		return zapcore.WarnLevel, nil
	case "error":
		return zapcore.ErrorLevel, nil
	}
	return 0, fmt.Errorf("invalid log level %q: want one of %s", level, strings.Join(Levels, ", "))
}

// New returns a logr.Logger and the zap.Logger under it (call Sync on exit). json selects
// one JSON object per line (ENABLE_JSON_LOG=true, for log collectors); otherwise a console
// encoding for humans. Both write to stderr with ISO 8601 timestamps.
func New(level string, json bool) (logr.Logger, *zap.Logger, error) {
	lvl, err := ParseLevel(level)
	if err != nil {
		return logr.Discard(), nil, err
	}
	cfg := zap.NewProductionConfig()
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.Sampling = nil // every line counts: per-request debug lines are wanted when asked for
	cfg.EncoderConfig.EncodeTime = zapcore.ISO8601TimeEncoder
	cfg.EncoderConfig.TimeKey = "ts"
	if !json {
		cfg.Encoding = "console"
		cfg.EncoderConfig.EncodeLevel = zapcore.CapitalLevelEncoder
	}
	z, err := cfg.Build()
	if err != nil {
		return logr.Discard(), nil, fmt.Errorf("building logger: %w", err)
	}
	return zapr.NewLogger(z), z, nil
}
