package kernel

import (
	"context"
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/ringbuf"
)

// Ring reads a BPF ring buffer whose programs batch wake-ups (BPF_RB_NO_WAKEUP until a
// share of the ring is queued): the reader polls on a deadline so no event waits long.
type Ring struct {
	rd *ringbuf.Reader
}

// OpenRing opens the ring buffer map m.
func OpenRing(m *ebpf.Map) (*Ring, error) {
	rd, err := ringbuf.NewReader(m)
	if err != nil {
		return nil, fmt.Errorf("open ring buffer: %w", err)
	}
	return &Ring{rd: rd}, nil
}

// drainCheck is how many records are read between looks at the clock while the ring is
// never empty, so that tick still runs about once per poll interval under load.
const drainCheck = 64

// Read hands every record to record until ctx ends or the ring is closed. tick runs first
// and then about once per poll interval, whether records came or not: the caller's
// housekeeping. The record's bytes are only valid during the call.
func (r *Ring) Read(ctx context.Context, poll time.Duration, tick func(), record func(raw []byte)) error {
	var rec ringbuf.Record
	for {
		if ctx.Err() != nil {
			return nil
		}
		tick()
		deadline := time.Now().Add(poll)
		r.rd.SetDeadline(deadline)
		for n := 1; ; n++ {
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
			if n%drainCheck == 0 && time.Now().After(deadline) {
				break
			}
		}
	}
}

// Close makes Read return.
func (r *Ring) Close() error { return r.rd.Close() }

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
func (r *Ring) AvailableBytes() int { return r.rd.AvailableBytes() }
