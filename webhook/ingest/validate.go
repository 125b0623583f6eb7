package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"slices"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// maxMapEntries bounds the methods, status codes and classes of a summary (nginx answers with
// codes 100-999 at most).
const maxMapEntries = 1000

// DecodeReport parses and checks a Report body. Every error says what is wrong, for the agent's
// log (and the manager's).
func DecodeReport(body []byte) (*v1alpha1.Report, error) {
	if len(body) > v1alpha1.MaxReportBytes {
		return nil, fmt.Errorf("report larger than %d bytes", v1alpha1.MaxReportBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.DisallowUnknownFields()
	var r v1alpha1.Report
	if err := dec.Decode(&r); err != nil {
		return nil, fmt.Errorf("report is not valid JSON of kind %s: %w", v1alpha1.ReportKind, err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, errors.New("report has data after its JSON object")
	}
	if err := ValidateReport(&r); err != nil {
		return nil, err
	}
	return &r, nil
}

// ValidateReport checks a decoded Report against the contract's bounds.
func ValidateReport(r *v1alpha1.Report) error {
	if r.APIVersion != v1alpha1.StatsAPIVersion || r.Kind != v1alpha1.ReportKind {
		return fmt.Errorf("want apiVersion %s and kind %s, got %q and %q", v1alpha1.StatsAPIVersion, v1alpha1.ReportKind, r.APIVersion, r.Kind)
	}
	if errs := validation.IsDNS1123Label(r.Pod.Namespace); len(errs) > 0 {
		return fmt.Errorf("pod.namespace %q: %v", r.Pod.Namespace, errs)
	}
	if errs := validation.IsDNS1123Subdomain(r.Pod.Name); len(errs) > 0 {
		return fmt.Errorf("pod.name %q: %v", r.Pod.Name, errs)
	}
	if len(r.Events) > v1alpha1.MaxReportEvents {
		return fmt.Errorf("%d events, at most %d per report", len(r.Events), v1alpha1.MaxReportEvents)
	}
	for i, e := range r.Events {
		if e.Type != corev1.EventTypeNormal && e.Type != corev1.EventTypeWarning {
			return fmt.Errorf("events[%d].type %q: want Normal or Warning", i, e.Type)
		}
		if !slices.Contains(v1alpha1.AgentEventReasons, e.Reason) {
			return fmt.Errorf("events[%d].reason %q is not an agent Event reason", i, e.Reason)
		}
		if len(e.Message) > v1alpha1.MaxEventMessage || !utf8.ValidString(e.Message) {
			return fmt.Errorf("events[%d].message: want valid UTF-8 of at most %d bytes", i, v1alpha1.MaxEventMessage)
		}
	}
	if r.Stats == nil {
		return nil
	}
	s := r.Stats
	if s.APIVersion != v1alpha1.StatsAPIVersion || s.Kind != v1alpha1.StatsKind {
		return fmt.Errorf("stats: want apiVersion %s and kind %s", v1alpha1.StatsAPIVersion, v1alpha1.StatsKind)
	}
	if len(s.DataPath) > 64 {
		return errors.New("stats.dataPath longer than 64 bytes")
	}
	if err := validateSummary(&s.Total); err != nil {
		return fmt.Errorf("stats.total.%w", err)
	}
	if err := validateSummary(&s.Window); err != nil {
		return fmt.Errorf("stats.window.%w", err)
	}
	return nil
}

func validateSummary(s *v1alpha1.Summary) error {
	if err := number("periodSeconds", s.PeriodSeconds); err != nil {
		return err
	}
	if err := number("requestsPerSecond", s.RequestsPerSecond); err != nil {
		return err
	}
	for name, l := range map[string]v1alpha1.Latency{"latencyMs": s.LatencyMs, "upstreamLatencyMs": s.UpstreamLatencyMs, "kongLatencyMs": s.KongLatencyMs} {
		if err := latency(name, l); err != nil {
			return err
		}
	}
	if len(s.LuaPhasesMs) > 16 {
		return errors.New("luaPhasesMs: more than 16 phases")
	}
	for k, l := range s.LuaPhasesMs {
		if err := name("luaPhasesMs", k); err != nil {
			return err
		}
		if err := latency("luaPhasesMs."+k, l); err != nil {
			return err
		}
	}
	for field, m := range map[string]map[string]uint64{"methods": s.Methods, "statusCodes": s.StatusCodes, "statusClasses": s.StatusClasses} {
		if len(m) > maxMapEntries {
			return fmt.Errorf("%s: more than %d entries", field, maxMapEntries)
		}
		for k := range m {
			if err := name(field, k); err != nil {
				return err
			}
		}
	}
	for field, rows := range map[string][]v1alpha1.Row{"hosts": s.Hosts, "paths": s.Paths} {
		if len(rows) > v1alpha1.MaxReportedRows {
			return fmt.Errorf("%s: %d rows, at most %d", field, len(rows), v1alpha1.MaxReportedRows)
		}
		for i, r := range rows {
			if err := name(fmt.Sprintf("%s[%d].name", field, i), r.Name); err != nil {
				return err
			}
			if err := number(fmt.Sprintf("%s[%d].p99Ms", field, i), r.P99Ms); err != nil {
				return err
			}
		}
	}
	return nil
}

func name(field, v string) error {
	if len(v) > v1alpha1.MaxReportedNames || !utf8.ValidString(v) {
		return fmt.Errorf("%s: want valid UTF-8 of at most %d bytes", field, v1alpha1.MaxReportedNames)
	}
	return nil
}

func number(field string, v float64) error {
	if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
		return fmt.Errorf("%s: %v is not a finite non-negative number", field, v)
	}
	return nil
}

func latency(field string, l v1alpha1.Latency) error {
	for _, v := range []float64{l.Avg, l.P50, l.P95, l.P99, l.Max} {
		if err := number(field, v); err != nil {
			return err
		}
	}
	return nil
}
