package kube

import (
	"debug/elf"
	"io"
	"regexp"
	"strings"

	corev1 "k8s.io/api/core/v1"

	"github.com/kong-watcher/kong-watcher/agent/discovery"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// The agent (agent/app.Notifier) calls these from its discovery callback with its lock held:
// they must not block. Recording an Event only queues it (the broadcaster drops when its
// queue is full); reading the nginx version runs in its own goroutine.

// KongDetected records the KongDetected Event for a newly found gateway.
func (r *Reporter) KongDetected(gw discovery.Gateway) {
	go func() {
		ver := NginxVersion(gw.Exe)
		if ver == "" {
			ver = "version unknown"
		}
		r.event(corev1.EventTypeNormal, v1alpha1.ReasonKongDetected,
			"gateway found: master PID %d with %d workers (%s), %s", gw.Master.PID, len(gw.Workers), gw.Master.Title, ver)
	}()
}

// ProbesAttached records which data path follows gw.
func (r *Reporter) ProbesAttached(gw discovery.Gateway, dataPath string) {
	r.event(corev1.EventTypeNormal, v1alpha1.ReasonProbesAttached,
		"probes attached to master PID %d (%d processes), data path %s", gw.Master.PID, len(gw.PIDs()), dataPath)
}

// ProbeAttachFailed records why gw's requests are not counted.
func (r *Reporter) ProbeAttachFailed(gw discovery.Gateway, err error) {
	r.event(corev1.EventTypeWarning, v1alpha1.ReasonProbeAttachFailed,
		"cannot attach probes to master PID %d: its requests are NOT counted: %s", gw.Master.PID, errDetail(err))
}

// AgentDisabled records that the agent could not start its data path at all: nothing in this
// pod is counted until it is fixed (typically a missing capability or kernel feature).
func (r *Reporter) AgentDisabled(err error) {
	r.event(corev1.EventTypeWarning, v1alpha1.ReasonProbeAttachFailed,
		"the agent cannot start: NO requests are counted (Kong is not affected): %s", errDetail(err))
}

// MetricsPortUnavailable records that the agent cannot bind its HTTP address (METRICS_ADDR):
// its endpoints are unreachable until the address frees; the agent keeps running (and counting,
// if it could start) and retries.
func (r *Reporter) MetricsPortUnavailable(addr string, err error) {
	r.event(corev1.EventTypeWarning, v1alpha1.ReasonMetricsPortUnavailable,
		"cannot listen on %s (METRICS_ADDR): /metrics, /stats, /healthz and /readyz are unreachable until it "+
			"frees; the agent keeps running and retries: %s", addr, errDetail(err))
}

// errDetail is err's text for an Event message, bounded (an Event message is at most 1 KiB).
func errDetail(err error) string {
	if err == nil {
		return "unknown error"
	}
	msg := err.Error()
	if len(msg) > 800 {
		msg = msg[:800] + "..."
	}
	return msg
}

var versionRE = regexp.MustCompile(`(?:openresty|nginx|kong)/[0-9]+\.[0-9]+(?:\.[0-9]+)*`)

// NginxVersion reads the version strings nginx/OpenResty/Kong compile into the binary's
// .rodata ("nginx/1.25.3", "openresty/1.25.3.1"), without running anything; "" if none.
func NginxVersion(exe string) string {
	if exe == "" {
		return ""
	}
	f, err := elf.Open(exe)
	if err != nil {
		return ""
	}
	defer f.Close()
	sec := f.Section(".rodata")
	if sec == nil || sec.Size > 256<<20 {
		return ""
	}
	data, err := io.ReadAll(sec.Open())
	if err != nil {
		return ""
	}
	seen := map[string]bool{}
	var out []string
	for _, m := range versionRE.FindAll(data, 20) {
		name := string(m[:strings.IndexByte(string(m), '/')])
		if !seen[name] {
			seen[name] = true
			out = append(out, string(m))
		}
	}
	return strings.Join(out, " ")
}
