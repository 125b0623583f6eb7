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

// table holds at most max named rows plus the "other" row, so its memory is bounded whatever
// the traffic: about max * 7 KiB.
//
// Within one window (see Aggregator) the first max distinct keys get rows and later ones fold
// into other: heavy hitters show up early in every window, and the window starts afresh each
// interval. The total is built by merging closed windows (mergeFrom), where a newcomer row
// with more requests than the smallest kept row replaces it (the replaced row folds into
// other); so a host that becomes busy late still earns its own row in the total.
type table struct {
	max   int
	rows  map[string]*row
	other row
	free  []*row // rows of a reset table, reused so steady-state observing never allocates
}

func newTable(max int) table {
	return table{max: max, rows: make(map[string]*row, max), other: row{latency: newHistogram(rowSubBits, false)}}
}

// get returns key's row, creating it while there is room, else the other row.
func (t *table) get(key []byte) *row {
	if r, ok := t.rows[string(key)]; ok { // no allocation: the compiler special-cases this
		return r
	}
	if len(t.rows) >= t.max {
		return &t.other
	}
	r := t.newRow()
	t.rows[string(key)] = r
	return r
}

func (t *table) newRow() *row {
	if n := len(t.free); n > 0 {
		r := t.free[n-1]
		t.free = t.free[:n-1]
		return r
	}
	return newRow()
}

func (t *table) reset() {
	for k, r := range t.rows {
		r.reset()
		t.free = append(t.free, r)
		delete(t.rows, k)
	}
	t.other.reset()
}

// mergeFrom adds src's rows to t; see the type comment for what happens when t is full.
func (t *table) mergeFrom(src *table) {
	t.other.add(&src.other)
	keys := make([]string, 0, len(src.rows))
	for k := range src.rows {
		keys = append(keys, k)
	}
	// Biggest first, so that newcomers compete for free slots in order of weight.
	slices.SortFunc(keys, func(a, b string) int {
		return cmp.Or(cmp.Compare(src.rows[b].requests, src.rows[a].requests), cmp.Compare(a, b))
	})
	for _, k := range keys {
		s := src.rows[k]
		if r, ok := t.rows[k]; ok {
			r.add(s)
			continue
		}
		if len(t.rows) < t.max {
			r := t.newRow()
			r.add(s)
			t.rows[k] = r
			continue
		}
		minKey, minRow := t.smallest()
		if minRow == nil || s.requests <= minRow.requests {
			t.other.add(s)
			continue
		}
		t.other.add(minRow)
		delete(t.rows, minKey)
		minRow.reset()
		minRow.add(s)
		t.rows[k] = minRow
	}
}

func (t *table) smallest() (string, *row) {
	var key string
	var small *row
	for k, r := range t.rows {
		if small == nil || r.requests < small.requests || r.requests == small.requests && k > key {
			key, small = k, r
		}
	}
	return key, small
}

// list returns the rows by requests (descending, then name), other last if it has any.
func (t *table) list() []v1alpha1.Row {
	out := make([]v1alpha1.Row, 0, len(t.rows)+1)
	for k, r := range t.rows {
		out = append(out, v1alpha1.Row{Name: k, Requests: r.requests, Errors: r.errors, P99Ms: r.latency.quantileMs(0.99)})
	}
	slices.SortFunc(out, func(a, b v1alpha1.Row) int {
		return cmp.Or(cmp.Compare(b.Requests, a.Requests), cmp.Compare(a.Name, b.Name))
	})
	if t.other.requests > 0 {
		out = append(out, v1alpha1.Row{Name: v1alpha1.OtherRow, Requests: t.other.requests, Errors: t.other.errors, P99Ms: t.other.latency.quantileMs(0.99)})
	}
	return out
}
