package kube

import (
	"sync"
	"time"

	"github.com/go-logr/logr"
)

// ClientLogger is a logger for client-go's own logging (klog.SetLogger): the event
// broadcaster logs every failed Event write ("Unable to write event (may retry after
// sleeping)"), which during an API-server outage would be a line per Event per retry. An error
// message seen before within every (<= 0: 10 minutes) is demoted to debug (V(1)); the first
// one stays an error, so a refused Event (403) is still visible once.
func ClientLogger(log logr.Logger, every time.Duration) logr.Logger {
	if every <= 0 {
		every = 10 * time.Minute
	}
	return logr.New(&dedupSink{LogSink: log.GetSink(), state: &dedupState{seen: map[string]time.Time{}, every: every}})
}

type dedupState struct {
	mu    sync.Mutex
	seen  map[string]time.Time
	every time.Duration
}

// first reports whether msg was not seen within every, and records it.
func (s *dedupState) first(msg string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := time.Now()
	if t, ok := s.seen[msg]; ok && now.Sub(t) < s.every {
		return false
	}
	if len(s.seen) > 1000 {
		clear(s.seen)
	}
	s.seen[msg] = now
	return true
}

type dedupSink struct {
	logr.LogSink
	state *dedupState
}

func (d *dedupSink) Error(err error, msg string, kv ...any) {
	if d.state.first(msg) {
		d.LogSink.Error(err, msg, kv...)
		return
	}
	if d.LogSink.Enabled(1) {
		d.LogSink.Info(1, msg, append(kv, "error", errString(err), "repeated", true)...)
	}
}

func errString(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

func (d *dedupSink) WithValues(kv ...any) logr.LogSink {
	return &dedupSink{LogSink: d.LogSink.WithValues(kv...), state: d.state}
}

func (d *dedupSink) WithName(name string) logr.LogSink {
	return &dedupSink{LogSink: d.LogSink.WithName(name), state: d.state}
}
