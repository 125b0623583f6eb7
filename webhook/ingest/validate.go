package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"unicode/utf8"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/kong-watcher/kong-watcher/agent/aggregate"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

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
	// The same checks the rollup applies to the annotation written from it: bounded, consistent
	// counts and well-formed histograms, so a report can never make a merge overflow or blow up.
	return aggregate.Validate(r.Stats)
}
