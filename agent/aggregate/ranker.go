package aggregate

import (
	"hash/maphash"

	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// Ranker decides which keys (hosts, paths) get one of a bounded number of places, or slots,
// of their own; every other key is counted as "other". The aggregator's host and path rows
// and the Prometheus host and path labels both use one, so junk that arrives first (a burst
// of random Host headers or URIs) cannot keep real traffic in "other": places go by weight,
// not by order of arrival.
//
//   - A key's weight is its recent request count: every decayEvery requests (16 per slot) all
//     weights are halved, so a weight counts about the last 2*decayEvery requests and an old
//     burst is forgotten after a few such periods of later traffic.
//   - While a slot is free, a new key takes it at its first request. So with at most max
//     distinct keys every key has its place from its first request and never loses it:
//     nothing is ever evicted or estimated.
//   - Once the slots are full, a key without a place is a candidate. Candidates are counted
//     Misra-Gries style in a table of at most maxCands (4 per slot) weights, keyed by a
//     seeded hash: when the table is full, a new key decrements every candidate by one
//     instead of being added. That underestimates a candidate by at most the requests seen
//     divided by maxCands+1, so a key with a steady share of traffic above about 2/maxCands
//     is found whatever else arrives, and keys seen once (random junk) never build weight.
//     Two candidates whose hashes collide (a chance of 2^-64 per pair, with a seed an
//     attacker cannot know) merely share a weight.
//   - A candidate takes the slot of the lightest named key when its weight is at least 2 and
//     more than 1.25 times that key's; the margin keeps two keys of similar weight from
//     swapping places back and forth. The displaced key becomes a candidate with its weight.
//   - Epochs (the aggregator's stats windows; Metrics has none): a slot not used in the
//     current epoch is idle, and a candidate whose weight is at least the idle lightest
//     slot's takes it at once, even at its first request, since the slot has nothing to lose
//     in the current window.
//
// Memory is bounded by max named keys (their strings) plus maxCands 16-byte candidates,
// whatever the input. Observe does not allocate when the key already has a place or is only
// counted as a candidate; it allocates the key's string when the key takes a place. Its
// cost is one map lookup for a named key; a key without a place adds a hash, a candidate
// lookup and, when the lightest slot changed, a scan of the slots' weights; the periodic
// halving and Misra-Gries decrements cost O(max) per O(max) requests.
//
// A Ranker is not safe for concurrent use; its owner's lock covers it.
type Ranker struct {
	max        int
	slots      map[string]int32 // named key -> slot
	keys       []string         // by slot
	weights    []uint64         // by slot: decayed request count
	seen       []uint32         // by slot: the epoch of its last request
	epoch      uint32
	idle       int               // slots not used in this epoch
	cands      map[uint64]uint64 // hash of a candidate key -> decayed, underestimated count
	maxCands   int
	seed       maphash.Seed
	n          uint64 // requests since the last halving
	decayEvery uint64
	light      int32 // the lightest slot, if lightOK
	lightOK    bool
	floor      uint64 // no slot weighs less (the weights only grow between halvings)
	// last is the key that last had a slot, and lastSlot that slot while it holds it: requests
	// in a row often share their host or route, and a comparison costs less than a lookup.
	last     string
	lastSlot int32
}

// NewRanker returns a Ranker with the given number of slots (at least 1).
func NewRanker(slots int) *Ranker {
	n := max(slots, 1)
	return &Ranker{
		max:        n,
		slots:      make(map[string]int32, n),
		keys:       make([]string, 0, n),
		weights:    make([]uint64, 0, n),
		seen:       make([]uint32, 0, n),
		cands:      make(map[uint64]uint64, 4*n),
		maxCands:   4 * n,
		seed:       maphash.MakeSeed(),
		decayEvery: 16 * uint64(n),
	}
}

// Max returns the number of slots.
func (r *Ranker) Max() int { return r.max }

// Len returns the number of slots in use (it only grows, up to Max).
func (r *Ranker) Len() int { return len(r.keys) }

// Key returns the key that holds slot.
func (r *Ranker) Key(slot int) string { return r.keys[slot] }

// Observe counts one request for key and returns the slot it counts in, or -1 for "other".
// When key has just taken the slot from another key, displaced is that key and moved is
// true: the caller folds what it counted for the slot so far into "other" (and, for
// Prometheus, deletes its series) before counting key there.
//
// The name of the other row itself is never given a place, so a host literally called
// "other" cannot be confused with the row.
func (r *Ranker) Observe(key []byte) (slot int, displaced string, moved bool) {
	if r.n++; r.n >= r.decayEvery {
		r.decay()
	}
	s, ok := r.lastSlot, false
	if string(key) == r.last && len(r.keys) > 0 && r.keys[s] == r.last {
		ok = true
	} else if s, ok = r.slots[string(key)]; ok {
		r.last, r.lastSlot = r.keys[s], s
	}
	if ok {
		r.weights[s]++
		if r.seen[s] != r.epoch {
			r.seen[s] = r.epoch
			r.idle--
		}
		if s == r.light {
			r.lightOK = false
		}
		return int(s), "", false
	}
	if string(key) == v1alpha1.OtherRow {
		return -1, "", false
	}
	if len(r.keys) < r.max {
		k := string(key)
		s := int32(len(r.keys))
		r.slots[k] = s
		r.keys = append(r.keys, k)
		r.weights = append(r.weights, 1)
		r.seen = append(r.seen, r.epoch)
		r.lightOK = false
		return int(s), "", false
	}
	h := maphash.Bytes(r.seed, key)
	w, isCand := r.cands[h]
	w++
	if w < r.floor || w < 2 && r.idle == 0 {
		// Cannot win (see wins): the common case for junk, decided without a scan.
	} else if s := r.lightest(); r.wins(w, s) {
		delete(r.cands, h)
		old := r.keys[s]
		delete(r.slots, old)
		if wo := r.weights[s]; wo > 0 && len(r.cands) < r.maxCands {
			r.cands[maphash.String(r.seed, old)] = wo
		}
		k := string(key)
		r.slots[k] = s
		if r.seen[s] != r.epoch {
			r.idle--
		}
		r.keys[s], r.weights[s], r.seen[s] = k, w, r.epoch
		r.lightOK = false
		return int(s), old, true
	}
	switch {
	case isCand || len(r.cands) < r.maxCands:
		r.cands[h] = w
	default:
		// Misra-Gries: the new key and one count of every candidate cancel out.
		for c, cw := range r.cands {
			if cw <= 1 {
				delete(r.cands, c)
			} else {
				r.cands[c] = cw - 1
			}
		}
	}
	return -1, "", false
}

// wins reports whether a candidate of weight w takes slot s.
func (r *Ranker) wins(w uint64, s int32) bool {
	ws := r.weights[s]
	if r.seen[s] != r.epoch && w >= ws {
		return true
	}
	return w >= 2 && w > ws+ws/4
}

// lightest returns the slot of least weight, an idle one first among equals. It is cached
// until that slot is used, a slot changes hands, the weights are halved or the epoch changes;
// its weight stays a floor under every weight until the next halving.
func (r *Ranker) lightest() int32 {
	if r.lightOK {
		return r.light
	}
	best := int32(0)
	for s := range r.weights {
		w, bw := r.weights[s], r.weights[best]
		if w < bw || w == bw && r.seen[s] != r.epoch && r.seen[best] == r.epoch {
			best = int32(s)
		}
	}
	r.light, r.lightOK, r.floor = best, true, r.weights[best]
	return best
}

// NextEpoch starts a new epoch: every slot is idle until its next request.
func (r *Ranker) NextEpoch() {
	r.epoch++
	r.idle = len(r.keys)
	r.lightOK = false
}

// decay halves every weight.
func (r *Ranker) decay() {
	r.n = 0
	for s := range r.weights {
		r.weights[s] /= 2
	}
	for c, w := range r.cands {
		if w <= 1 {
			delete(r.cands, c)
		} else {
			r.cands[c] = w / 2
		}
	}
	r.lightOK, r.floor = false, 0
}
