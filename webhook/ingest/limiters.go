package ingest

import (
	"sync"
	"time"

	"github.com/hashicorp/golang-lru/v2/expirable"
	"golang.org/x/time/rate"
)

// keyedLimiters holds a token bucket per key (a pod, a client address): at most size keys, a
// key forgotten once idle for ttl, by when its bucket would be full again, so that a new one
// is the same.
type keyedLimiters[K comparable] struct {
	mu  sync.Mutex // makes get's look-up-or-create one step
	lru *expirable.LRU[K, *rate.Limiter]
}

func newKeyedLimiters[K comparable](size int, ttl time.Duration) *keyedLimiters[K] {
	return &keyedLimiters[K]{lru: expirable.NewLRU[K, *rate.Limiter](size, nil, ttl)}
}

// get returns k's limiter, made by mk the first time. Every use restarts k's idle time (Add
// does, Get does not): a key in steady use must never be handed a new, full bucket.
func (l *keyedLimiters[K]) get(k K, mk func() *rate.Limiter) *rate.Limiter {
	l.mu.Lock()
	defer l.mu.Unlock()
	lim, ok := l.lru.Get(k)
	if !ok {
		lim = mk()
	}
	l.lru.Add(k, lim)
	return lim
}

func (l *keyedLimiters[K]) len() int { return l.lru.Len() }
