package aggregate

import (
	"github.com/kong-watcher/kong-watcher/agent/model"
	"github.com/kong-watcher/kong-watcher/api/v1alpha1"
)

// listenerTallies hold the requests of the listeners other than the proxy (whose requests are
// the accumulators' own), one tally per listener and period: at most v1alpha1.MaxListeners
// entries with the proxy, the listeners beyond counting as OtherListener. Listeners come
// from the gateway's configuration (a few names and ports), not from clients, so the first
// come keep their place. Each costs about 160 KiB (two periods of three histograms),
// allocated when it first has a request.
type listenerTallies struct {
	names  []string
	index  map[string]int
	window []*tally // the open window
	total  []*tally // the closed windows
}

// OtherListener names the listeners beyond v1alpha1.MaxListeners.
const OtherListener = "other"

func newListenerTallies() listenerTallies {
	return listenerTallies{index: map[string]int{}}
}

// get returns the window tally of listener name (not the proxy).
func (l *listenerTallies) get(name string) *tally {
	i, ok := l.index[name]
	if !ok {
		// The proxy has no tally here, and OtherListener needs the last place.
		if len(l.names) >= v1alpha1.MaxListeners-2 {
			name = OtherListener
		}
		if i, ok = l.index[name]; !ok {
			i = len(l.names)
			l.index[name] = i
			l.names = append(l.names, name)
			w, t := newTally(), newTally()
			l.window = append(l.window, &w)
			l.total = append(l.total, &t)
		}
	}
	return l.window[i]
}

// rotate folds the window into the total.
func (l *listenerTallies) rotate() {
	for i, w := range l.window {
		l.total[i].merge(w)
		w.reset()
	}
}

// summaries renders every listener's tally of the window (total false) or of the total plus
// the window (total true, using scratch), with proxy's as the proxy's entry.
func (l *listenerTallies) summaries(proxy v1alpha1.Summary, total bool, scratch *tally) map[string]v1alpha1.ListenerSummary {
	out := make(map[string]v1alpha1.ListenerSummary, len(l.names)+1)
	out[model.ListenerProxy] = listenerOf(proxy)
	for i, name := range l.names {
		t := l.window[i]
		if total {
			scratch.reset()
			scratch.merge(l.total[i])
			scratch.merge(t)
			t = scratch
		}
		out[name] = listenerOf(t.summary(proxy.PeriodSeconds))
	}
	return out
}

// listenerOf is s's share of the listeners: s without its rows.
func listenerOf(s v1alpha1.Summary) v1alpha1.ListenerSummary { return s.ListenerSummary }

// summaryOf is l as a Summary without rows, for the code Summaries and listeners share
// (validation, merging).
func summaryOf(l v1alpha1.ListenerSummary) v1alpha1.Summary {
	return v1alpha1.Summary{ListenerSummary: l}
}

func cloneListeners(m map[string]v1alpha1.ListenerSummary) map[string]v1alpha1.ListenerSummary {
	if m == nil {
		return nil
	}
	out := make(map[string]v1alpha1.ListenerSummary, len(m))
	for name, l := range m {
		s := cloneSummary(summaryOf(l))
		out[name] = listenerOf(s)
	}
	return out
}
