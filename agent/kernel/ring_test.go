package kernel

import (
	"context"
	"encoding/binary"
	"errors"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/cilium/ebpf/rlimit"
)

// ringProducer is a real BPF program that writes one 8-byte record (its run's value) to the
// ring with the given wake-up flags each time it is run.
func ringProducer(t *testing.T, ring *ebpf.Map, flags int64) *ebpf.Program {
	t.Helper()
	prog, err := ebpf.NewProgram(&ebpf.ProgramSpec{
		Type: ebpf.SocketFilter,
		Instructions: asm.Instructions{
			asm.LoadMem(asm.R6, asm.R1, 0, asm.Word), // skb->len: the value
			asm.StoreMem(asm.RFP, -8, asm.R6, asm.DWord),
			asm.LoadMapPtr(asm.R1, ring.FD()),
			asm.Mov.Reg(asm.R2, asm.RFP),
			asm.Add.Imm(asm.R2, -8),
			asm.Mov.Imm(asm.R3, 8),
			asm.Mov.Imm(asm.R4, int32(flags)),
			asm.FnRingbufOutput.Call(),
			asm.Mov.Imm(asm.R0, 0),
			asm.Return(),
		},
		License: "GPL",
	})
	if err != nil {
		t.Skipf("load a BPF program (root and a BPF-capable kernel needed): %v", err)
	}
	t.Cleanup(func() { prog.Close() })
	return prog
}

func newRing(t *testing.T) *ebpf.Map {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	rlimit.RemoveMemlock() //nolint:errcheck
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.RingBuf, MaxEntries: 1 << 16})
	if err != nil {
		t.Skipf("ring buffer map: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

func produce(t *testing.T, prog *ebpf.Program, v int) {
	t.Helper()
	// A socket filter's test run sees the data after its 14-byte Ethernet header.
	if _, err := prog.Run(&ebpf.RunOptions{Data: make([]byte, 14+v)}); err != nil {
		t.Fatal(err)
	}
}

// TestRingWakesInNetpoller: the reader parks in Go's netpoller, a forced wake-up delivers a
// record long before the poll deadline, a record written without a wake-up comes at the
// deadline, tick runs about once per poll interval, and Close ends a parked Read.
func TestRingWakesInNetpoller(t *testing.T) {
	m := newRing(t)
	r, err := OpenRing(m)
	if err != nil {
		t.Fatal(err)
	}
	if r.rc == nil {
		t.Fatal("ring buffer descriptor not in the netpoller")
	}
	const (
		bpfRBNoWakeup    = 1
		bpfRBForceWakeup = 2
	)
	forced, quiet := ringProducer(t, m, bpfRBForceWakeup), ringProducer(t, m, bpfRBNoWakeup)

	got := make(chan uint64, 16)
	var ticks atomic.Int32
	done := make(chan error, 1)
	const poll = 2 * time.Second
	go func() {
		done <- r.Read(context.Background(), poll, func() { ticks.Add(1) }, func(raw []byte) {
			got <- binary.LittleEndian.Uint64(raw)
		})
	}()
	time.Sleep(100 * time.Millisecond) // parked

	start := time.Now()
	produce(t, forced, 20)
	select {
	case v := <-got:
		if v != 20 {
			t.Fatalf("record %d, want 20", v)
		}
		if d := time.Since(start); d > poll/2 {
			t.Fatalf("forced wake-up took %v (poll %v): the reader did not wake", d, poll)
		}
	case <-time.After(poll / 2):
		t.Fatal("a forced wake-up did not wake the reader")
	}

	start = time.Now()
	produce(t, quiet, 30)
	select {
	case v := <-got:
		if v != 30 {
			t.Fatalf("record %d, want 30", v)
		}
	case <-time.After(2 * poll):
		t.Fatal("a record written without a wake-up was not read at the poll deadline")
	}
	if n := ticks.Load(); n < 1 || n > 4 {
		t.Fatalf("tick ran %d times in %v (poll %v)", n, time.Since(start), poll)
	}

	if err := r.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Read after Close: %v", err)
		}
	case <-time.After(poll / 2):
		t.Fatal("Close did not end a parked Read")
	}
}

// TestRingIdlePoll: after IdleAfter without a record the reader polls every IdlePoll, a
// record written without a wake-up is still read at the next of those polls, and records
// (also those a wake-up brings in the middle of a long interval) bring the caller's interval
// back; parked in the netpoller, and waiting in ringbuf.Reader (the path without it).
func TestRingIdlePoll(t *testing.T) {
	for _, netpoller := range []bool{true, false} {
		name := "netpoller"
		if !netpoller {
			name = "ringbuf.Reader"
		}
		t.Run(name, func(t *testing.T) { testRingIdlePoll(t, netpoller) })
	}
}

func testRingIdlePoll(t *testing.T, netpoller bool) {
	m := newRing(t)
	r, err := OpenRing(m)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if !netpoller {
		r.rc = nil
	}
	r.idlePoll, r.idleAfter = 3*time.Second, 300*time.Millisecond
	const (
		poll             = 20 * time.Millisecond
		bpfRBNoWakeup    = 1
		bpfRBForceWakeup = 2
	)
	quiet, forced := ringProducer(t, m, bpfRBNoWakeup), ringProducer(t, m, bpfRBForceWakeup)
	got := make(chan uint64, 16)
	var ticks atomic.Int32
	go r.Read(context.Background(), poll, func() { ticks.Add(1) }, func(raw []byte) { //nolint:errcheck
		got <- binary.LittleEndian.Uint64(raw)
	})
	read := func(want uint64, within time.Duration, what string) {
		t.Helper()
		start := time.Now()
		select {
		case v := <-got:
			if v != want {
				t.Fatalf("record %d, want %d", v, want)
			}
			t.Logf("%s: read after %v", what, time.Since(start).Round(time.Millisecond))
		case <-time.After(within):
			t.Fatalf("%s: not read within %v", what, within)
		}
	}

	// Polls every 20 ms for the first 300 ms, then one at 3.3 s: none in the second second.
	time.Sleep(time.Second)
	before := ticks.Load()
	time.Sleep(time.Second)
	if n := ticks.Load() - before; n > 1 {
		t.Fatalf("%d polls in a second of quiet after IdleAfter (%v); want at most one, every %v", n, r.idleAfter, r.idlePoll)
	}
	produce(t, quiet, 40)
	read(40, r.idlePoll+2*time.Second, "a record written without a wake-up during a quiet spell")

	// Quiet again (the next poll in 3 s), then a wake-up in the middle of that interval: the
	// reader must not go back to sleep until the end of it, so a record written without a
	// wake-up soon after is read within the caller's interval, not at the idle poll.
	time.Sleep(time.Second)
	produce(t, forced, 45)
	read(45, r.idlePoll/2, "a record with a forced wake-up")
	time.Sleep(200 * time.Millisecond)
	produce(t, quiet, 50)
	read(50, r.idlePoll/2, "a record without a wake-up after a woken one")
}

func TestRingInterval(t *testing.T) {
	r := &Ring{idlePoll: IdlePoll, idleAfter: IdleAfter}
	for _, c := range []struct{ poll, quiet, want time.Duration }{
		{150 * time.Millisecond, 0, 150 * time.Millisecond},
		{150 * time.Millisecond, IdleAfter - 1, 150 * time.Millisecond},
		{150 * time.Millisecond, IdleAfter, IdlePoll},
		{20 * time.Millisecond, time.Hour, IdlePoll},
		// A caller's interval longer than IdlePoll is kept.
		{5 * time.Second, time.Hour, 5 * time.Second},
	} {
		if got := r.interval(c.poll, c.quiet); got != c.want {
			t.Errorf("interval(%v, quiet %v) = %v, want %v", c.poll, c.quiet, got, c.want)
		}
	}
}

// TestRingReadEndsWithContext: a parked Read returns by the next poll deadline once its
// context ends, and AvailableBytes is safe after Close.
func TestRingReadEndsWithContext(t *testing.T) {
	m := newRing(t)
	r, err := OpenRing(m)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Read(ctx, 50*time.Millisecond, func() {}, func([]byte) {}) }()
	time.Sleep(60 * time.Millisecond)
	cancel()
	select {
	case err := <-done:
		if err != nil && !errors.Is(err, context.Canceled) {
			t.Fatal(err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("Read did not return after its context ended")
	}
	r.Close()
	if n := r.AvailableBytes(); n != 0 {
		t.Fatalf("AvailableBytes after Close: %d", n)
	}
}
