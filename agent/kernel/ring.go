package kernel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
	"golang.org/x/sys/unix"
)

// Ring reads a BPF ring buffer whose programs batch wake-ups (BPF_RB_NO_WAKEUP until a
// share of the ring is queued): the reader drains it on a deadline so no event waits long.
//
// It waits in Go's netpoller, on a non-blocking duplicate of the map's descriptor, rather
// than in ringbuf.Reader's epoll_wait. A goroutine blocked in a system call keeps its P, so
// the runtime's sysmon thread never sleeps and, each time a wait outlasts 10 ms, takes the P
// back and polls every 20 us again: thousands of thread wake-ups a second, a fifth of the
// agent's CPU at saturation. Parked in the netpoller, an idle agent lets sysmon sleep.
type Ring struct {
	rd *ringbuf.Reader
	// f and rc: the map's descriptor in the netpoller (nil: not pollable there; Read then
	// waits in ringbuf.Reader).
	f  *os.File
	rc syscall.RawConn
	// mu orders Close against looks at the ring's positions (ringbuf.Reader's
	// AvailableBytes does not lock, and Close unmaps the ring).
	mu     sync.Mutex
	closed bool
	// idlePoll and idleAfter: see IdlePoll (fields, so tests can shorten them).
	idlePoll, idleAfter time.Duration
}

// After IdleAfter without a record, Read polls every IdlePoll instead of its caller's shorter
// interval, until records come again. With no traffic the poll is much of what the agent does
// (each wake-up also wakes the Go runtime's other threads). The first records after a quiet
// spell wait at most IdlePoll for the reader, less when the programs wake it because enough
// is queued: well inside the second /stats takes to refresh, so two refreshes with the same
// total still mean that nothing is pending.
const (
	IdlePoll  = 500 * time.Millisecond
	IdleAfter = 2 * time.Second
)

// OpenRing opens the ring buffer map m.
func OpenRing(m *ebpf.Map) (*Ring, error) {
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		return nil, fmt.Errorf("open ring buffer: %w", err)
	}
	r := &Ring{rd: rd, idlePoll: IdlePoll, idleAfter: IdleAfter}
	r.f, r.rc = pollable(m.FD())
	return r, nil
}

// pollable registers a duplicate of fd with Go's netpoller (nil, nil when it cannot be).
func pollable(fd int) (*os.File, syscall.RawConn) {
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, nil
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		return nil, nil
	}
	// A non-blocking descriptor is registered with the netpoller (edge-triggered); the ring
	// buffer map's poll reports EPOLLIN while records are queued.
	f := os.NewFile(uintptr(dup), "ringbuf")
	rc, err := f.SyscallConn()
	if err != nil || f.SetReadDeadline(time.Time{}) != nil { // ErrNoDeadline: not in the netpoller
		f.Close()
		return nil, nil
	}
	return f, rc
}

// drainCheck is how many records are read between looks at the clock while the ring is
// never empty, so that tick still runs about once per poll interval under load.
const drainCheck = 64

// Read hands every record to record until ctx ends or the ring is closed. tick runs first
// and then about once per poll interval (IdlePoll after IdleAfter without records), whether
// records came or not: the caller's housekeeping. The record's bytes are only valid during
// the call.
func (r *Ring) Read(ctx context.Context, poll time.Duration, tick func(), record func(raw []byte)) error {
	var rec ringbuf.Record
	next := time.Now()
	lastRecord := next
	for {
		if ctx.Err() != nil {
			return nil
		}
		if now := time.Now(); !now.Before(next) {
			tick()
			next = now.Add(r.interval(poll, now.Sub(lastRecord)))
		}
		if r.rc == nil {
			// Wait in ringbuf.Reader until the deadline or a wake-up, then drain.
			r.rd.SetDeadline(next)
		} else {
			if err := r.wait(next); err != nil {
				if r.isClosed() {
					return nil
				}
				if !errors.Is(err, os.ErrDeadlineExceeded) {
					return fmt.Errorf("wait for the ring buffer: %w", err)
				}
			}
			r.rd.SetDeadline(time.Unix(1, 0)) // drain without waiting
		}
		n := 0 // records read in this drain
		for {
			err := r.rd.ReadInto(&rec)
			if err != nil {
				if errors.Is(err, os.ErrDeadlineExceeded) {
					break
				}
				if errors.Is(err, ringbuf.ErrClosed) {
					return nil
				}
				return fmt.Errorf("read ring buffer: %w", err)
			}
			record(rec.RawSample)
			n++
			if n == 1 {
				// Records again: back to the caller's interval if a quiet spell had set a
				// longer one. ringbuf.Reader waits for its deadline once the ring is empty, so
				// on that path the deadline moves too.
				if soon := time.Now().Add(poll); soon.Before(next) {
					next = soon
					if r.rc == nil {
						r.rd.SetDeadline(next)
					}
				}
			}
			if n%drainCheck == 0 && time.Now().After(next) {
				break
			}
		}
		if n > 0 {
			lastRecord = time.Now()
		}
	}
}

// interval is the time to the next poll when the last record came quiet ago.
func (r *Ring) interval(poll, quiet time.Duration) time.Duration {
	if quiet >= r.idleAfter && r.idlePoll > poll {
		return r.idlePoll
	}
	return poll
}

// wait parks the goroutine in the netpoller until records are queued and the programs woke
// the ring, or until deadline.
func (r *Ring) wait(deadline time.Time) error {
	if r.queued() {
		return nil
	}
	if err := r.f.SetReadDeadline(deadline); err != nil {
		return err
	}
	return r.rc.Read(func(uintptr) bool { return r.queued() })
}

// queued reports whether records wait in the ring (true once closed, so a wait ends).
func (r *Ring) queued() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed || r.rd.AvailableBytes() > 0
}

func (r *Ring) isClosed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.closed
}

// Close makes Read return.
func (r *Ring) Close() error {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	if r.f != nil {
		r.f.Close() // wakes a wait
	}
	return r.rd.Close()
}

// PerCPUSum is the sum over CPUs of entry key of a per-CPU array of counters: the drops and
// other counts the BPF programs keep without contention. 0 when it cannot be read.
func PerCPUSum(m *ebpf.Map, key uint32) uint64 {
	if m == nil {
		return 0
	}
	var per []uint64
	if err := m.Lookup(key, &per); err != nil {
		return 0
	}
	var n uint64
	for _, v := range per {
		n += v
	}
	return n
}

// AvailableBytes is how much the ring holds that the reader has not consumed.
func (r *Ring) AvailableBytes() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.closed {
		return 0
	}
	return r.rd.AvailableBytes()
}
