package aggregate

import (
	"cmp"
	"slices"

	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// row is one host or path: counts and a latency histogram for its p99.
type row struct {
	requests uint64
	errors   uint64
	latency  histogram
}

func newRow() *row { return &row{latency: newHistogram(rowSubBits, false)} }

func (r *row) add(o *row) {
	r.requests += o.requests
	r.errors += o.errors
	r.latency.merge(&o.latency)
}

func (r *row) reset() {
	r.requests, r.errors = 0, 0
	r.latency.reset()
}

// table holds one period's host or path rows, indexed by the slot the Aggregator's Ranker
// gave the key, plus the "other" row. Its memory is bounded whatever the traffic: at most one
// row per slot, about 7 KiB each, allocated when the slot first has requests in this table
// and reused for whichever key holds the slot later, so steady-state observing never
// allocates.
//
// A slot's row always belongs to the key that holds the slot now: when a key loses its slot
// (see Ranker), the Aggregator folds the slot's rows into other (evict), so the rows and
// other always add up to the period's requests.
type table struct {
	rows  []*row // by slot; nil until the slot first has requests here
	other row
}

func newTable(slots int) table {
	return table{rows: make([]*row, slots), other: row{latency: newHistogram(rowSubBits, false)}}
}

// get returns slot's row, or the other row for slot -1.
func (t *table) get(slot int) *row {
	if slot < 0 {
		return &t.other
	}
	r := t.rows[slot]
	if r == nil {
		r = newRow()
		t.rows[slot] = r
	}
	return r
}

// evict folds slot's row into other: the key that held the slot has lost it.
func (t *table) evict(slot int) {
	if r := t.rows[slot]; r != nil && r.requests > 0 {
		t.other.add(r)
		r.reset()
	}
}

func (t *table) reset() {
	for _, r := range t.rows {
		if r != nil && r.requests > 0 {
			r.reset()
		}
	}
	t.other.reset()
}

// mergeFrom adds src's rows to t slot by slot (both follow the same Ranker).
func (t *table) mergeFrom(src *table) {
	t.other.add(&src.other)
	for s, r := range src.rows {
		if r != nil && r.requests > 0 {
			t.get(s).add(r)
		}
	}
}

// list returns the rows with requests by requests (descending, then name), other last if it
// has any; rank names the slots.
func (t *table) list(rank *Ranker) []v1alpha1.Row {
	out := make([]v1alpha1.Row, 0, len(t.rows)+1)
	for s, r := range t.rows {
		if r != nil && r.requests > 0 {
			out = append(out, v1alpha1.Row{Name: rank.Key(s), Requests: r.requests, Errors: r.errors, P99Ms: r.latency.quantileMs(0.99)})
		}
	}
	slices.SortFunc(out, func(a, b v1alpha1.Row) int {
		return cmp.Or(cmp.Compare(b.Requests, a.Requests), cmp.Compare(a.Name, b.Name))
	})
	if t.other.requests > 0 {
		out = append(out, v1alpha1.Row{Name: v1alpha1.OtherRow, Requests: t.other.requests, Errors: t.other.errors, P99Ms: t.other.latency.quantileMs(0.99)})
	}
	return out
}
