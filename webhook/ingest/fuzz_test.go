package ingest

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/go-jose/go-jose/v4/jwt"

	"github.com/kong-watcher/kong-watcher/agent/report"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// FuzzDecodeReport: whatever body arrives, DecodeReport returns a Report that satisfies the
// contract or an error, never panics; an accepted Report re-encodes to one it accepts again,
// and the pod patch made from it mentions the statistics annotations and the uid, nothing else.
// Seeds: testdata/fuzz/FuzzDecodeReport.
func FuzzDecodeReport(f *testing.F) {
	f.Fuzz(func(t *testing.T, body []byte) {
		r, err := DecodeReport(body)
		if err != nil {
			if r != nil {
				t.Fatalf("a Report and an error: %v", err)
			}
			if err.Error() == "" {
				t.Fatal("an error without a message")
			}
			return
		}
		if err := ValidateReport(r); err != nil {
			t.Fatalf("accepted a Report that does not validate: %v", err)
		}
		if len(r.Events) > v1alpha1.MaxReportEvents {
			t.Fatalf("%d events accepted", len(r.Events))
		}
		for _, e := range r.Events {
			if !slices.Contains(v1alpha1.AgentEventReasons, e.Reason) || len(e.Message) > v1alpha1.MaxEventMessage ||
				!utf8.ValidString(e.Message) {
				t.Fatalf("accepted event %+v", e)
			}
		}
		again, err := json.Marshal(r)
		if err != nil {
			t.Fatalf("re-encoding an accepted Report: %v", err)
		}
		if len(again) <= v1alpha1.MaxReportBytes {
			r2, err := DecodeReport(again)
			if err != nil {
				t.Fatalf("the re-encoded Report is refused: %v\n%s", err, again)
			}
			if third, _ := json.Marshal(r2); !bytes.Equal(third, again) {
				t.Fatalf("re-encoding is not stable:\n%s\n%s", again, third)
			}
		}
		if r.Stats == nil {
			return
		}
		const uid = "0b5e7c4e-1111-2222-3333-444455556666"
		var p struct {
			Metadata map[string]json.RawMessage `json:"metadata"`
		}
		dec := json.NewDecoder(bytes.NewReader(PodPatch(uid, *r.Stats, 0)))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&p); err != nil {
			t.Fatalf("pod patch: %v", err)
		}
		var gotUID string
		var ann map[string]*string
		if len(p.Metadata) != 2 || json.Unmarshal(p.Metadata["uid"], &gotUID) != nil || gotUID != uid ||
			json.Unmarshal(p.Metadata["annotations"], &ann) != nil {
			t.Fatalf("pod patch metadata %s, want uid and annotations only", p.Metadata)
		}
		for k, v := range ann {
			if !slices.Contains(v1alpha1.ReportedAnnotations, k) {
				t.Fatalf("pod patch writes annotation %s", k)
			}
			if k == v1alpha1.AnnotationStats && v != nil && (len(*v) > report.DefaultMaxStatsJSON || !json.Valid([]byte(*v))) {
				t.Fatalf("stats annotation of %d bytes, valid JSON %v", len(*v), json.Valid([]byte(*v)))
			}
		}
		if len(ann) != len(v1alpha1.ReportedAnnotations) {
			t.Fatalf("pod patch sets or clears %d annotations, want all %d statistics annotations", len(ann), len(v1alpha1.ReportedAnnotations))
		}
	})
}

// FuzzPrecheck: Precheck never panics, refuses with a 401 AuthError, and accepts only a compact
// JWS that names the audience, a pod and a namespace, and expires after now.
// Seeds: testdata/fuzz/FuzzPrecheck.
func FuzzPrecheck(f *testing.F) {
	f.Fuzz(func(t *testing.T, token, audience string, nowUnix int64) {
		now := time.Unix(nowUnix, 0)
		exp, err := Precheck(token, audience, now)
		if err != nil {
			var ae *AuthError
			if !errors.As(err, &ae) || ae.Status != 401 || ae.Reason == "" {
				t.Fatalf("refusal %#v, want a 401 AuthError with a reason", err)
			}
			return
		}
		if !exp.After(now) {
			t.Fatalf("accepted a token expiring %v at %v", exp, now)
		}
		if len(token) > maxTokenBytes || strings.Count(token, ".") != 2 {
			t.Fatalf("accepted %d bytes with %d dots", len(token), strings.Count(token, "."))
		}
		tok, err := jwt.ParseSigned(token, tokenAlgorithms)
		if err != nil {
			t.Fatalf("accepted a token that does not parse: %v", err)
		}
		var c claims
		if err := tok.UnsafeClaimsWithoutVerification(&c); err != nil || !c.Audience.Contains(audience) ||
			c.Kubernetes.Pod == nil || c.Kubernetes.Pod.Name == "" || c.Kubernetes.Namespace == "" {
			t.Fatalf("accepted claims %+v (%v) for audience %q", c, err, audience)
		}
	})
}

// TestFuzzSeeds keeps the committed corpus meaningful: the seeds named valid-* are accepted,
// the others refused.
func TestFuzzSeeds(t *testing.T) {
	for _, fz := range []string{"FuzzDecodeReport", "FuzzPrecheck"} {
		files, err := filepath.Glob(filepath.Join("testdata", "fuzz", fz, "*"))
		if err != nil || len(files) == 0 {
			t.Fatalf("no seeds for %s: %v", fz, err)
		}
		for _, file := range files {
			b, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			lines := strings.Split(strings.TrimSpace(string(b)), "\n")[1:]
			arg := func(i int) string {
				_, lit, _ := strings.Cut(strings.TrimSuffix(lines[i], ")"), "(")
				if s, err := strconv.Unquote(lit); err == nil {
					return s
				}
				return lit
			}
			var err2 error
			switch fz {
			case "FuzzDecodeReport":
				_, err2 = DecodeReport([]byte(arg(0)))
			case "FuzzPrecheck":
				now, _ := strconv.ParseInt(arg(2), 10, 64)
				_, err2 = Precheck(arg(0), arg(1), time.Unix(now, 0))
			}
			if valid := strings.HasPrefix(filepath.Base(file), "valid"); valid != (err2 == nil) {
				t.Errorf("%s: error %v", file, err2)
			}
		}
	}
}
