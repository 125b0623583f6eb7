//go:build ignore

// SPDX-License-Identifier: (MIT OR GPL-2.0)
// The wire-level fallback data path: copies what an nginx worker reads from and writes to its
// client sockets (libc recv/send/writev/sendfile/close) and TLS sessions (OpenSSL
// SSL_read/SSL_write/SSL_free) into a ring buffer; agent/wire parses HTTP/1 from it. Which
// listening socket each connection came from is told once per connection (libc
// accept/accept4, OpenSSL SSL_set_fd).
//
// One program handles every function's entry and one every return: the function is told
// apart by the attach cookie, so a library costs two links however many functions it has.
// No vmlinux.h: uprobes only need the UAPI pt_regs, which keeps this file independent of the
// other data path's headers.
#include <linux/bpf.h>
#include <linux/ptrace.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_tracing.h>
#include "headers/wire_types.h"

char __license[] SEC("license") = "Dual MIT/GPL";

// The agent's PID namespace (st_dev, st_ino of /proc/self/ns/pid), set at load time: the
// probes live in shared libraries and fire in every process on the host, and PIDs in the
// pids map are the agent's view of the gateway's workers.
volatile const __u64 pidns_dev;
volatile const __u64 pidns_ino;
// Wake the reader only once this many bytes wait in the ring: one wake-up per event costs
// more than the probes on 2 cores; the reader polls on a short timer anyway.
volatile const __u64 wakeup_bytes = 64 * 1024;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 4 << 20); // resized by the loader
} wire_events SEC(".maps");

// Namespaced TGIDs whose I/O is captured (the gateway's workers).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, __u8);
} wire_pids SEC(".maps");

// Arguments of a call in flight, by thread (pid_tgid): a thread is in at most one of these
// functions at a time, and the return deletes the entry. A plain preallocated hash: an LRU
// hash's update costs more on every call, and the only leak (a thread killed inside recv)
// is bounded by max_entries (then new calls are not captured and count as drops).
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct wire_call);
} wire_calls SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, WIRE_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
} wire_stats SEC(".maps");

static __always_inline void count(__u32 which)
{
	__u64 *v = bpf_map_lookup_elem(&wire_stats, &which);
	if (v)
		*v += 1;
}

// tracked returns the caller's TGID as the agent sees it, or 0 when the caller is not one of
// the gateway processes (or lives in another PID namespace, which bpf_get_ns_current_pid_tgid
// reports as an error).
static __always_inline __u32 tracked(void)
{
	struct bpf_pidns_info ns = {};
	if (bpf_get_ns_current_pid_tgid(pidns_dev, pidns_ino, &ns, sizeof(ns)))
		return 0;
	__u32 tgid = ns.tgid;
	if (!bpf_map_lookup_elem(&wire_pids, &tgid))
		return 0;
	return tgid;
}

static __always_inline __u64 wake_flags(void)
{
	return bpf_ringbuf_query(&wire_events, BPF_RB_AVAIL_DATA) >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP
									      : BPF_RB_NO_WAKEUP;
}

// Events are built in place in records reserved in the ring, never in a shared scratch buffer:
// uprobe programs run with migration disabled but are preemptible, so another task on the same
// CPU can run this program in the middle of ours, and would overwrite a per-CPU buffer we are
// still filling. A reserved record belongs to its reserver until submitted. Reservations have a
// constant size, so a record is one of three sizes: the header alone (nothing captured), the
// header with WIRE_SMALL bytes, or with WIRE_CAP bytes; cap tells user space how many count.
#define WIRE_SMALL 256 // the smaller record's bytes: most heads and short writes fit

struct wire_event_small {
	struct wire_event_hdr hdr;
	__u8 data[WIRE_SMALL];
};

// The header's layout reaches user space through bpf2go's generated Go type: keep it in BTF
// now that no map's value refers to it.
const struct wire_event_hdr *unused_wire_event_hdr __attribute__((unused));
const struct wire_event *unused_wire_event __attribute__((unused));
/* The enums user space needs (values only: no variable has their types), into BTF for
 * bpf2go -type. */
const enum wire_fn *unused_wire_fn __attribute__((unused));
const enum wire_kind *unused_wire_kind __attribute__((unused));
const enum wire_dir *unused_wire_dir __attribute__((unused));
const enum wire_stat *unused_wire_stat __attribute__((unused));

static __always_inline void submitted(long ok)
{
	count(ok ? WIRE_STAT_EVENTS : WIRE_STAT_DROPS);
}

// EMIT_CAPTURED reserves a record of type T (its data big enough for n), fills it with the
// header h and n bytes read from user address p (none when unreadable: cap 0), submits it and
// returns from the caller. A macro because the record types differ only in their size.
#define EMIT_CAPTURED(T, h, p, n)                                                        \
	do {                                                                              \
		struct T *e = bpf_ringbuf_reserve(&wire_events, sizeof(*e), 0);           \
		if (!e) {                                                                 \
			submitted(0);                                                     \
			return;                                                           \
		}                                                                         \
		e->hdr = *(h);                                                            \
		e->hdr.cap = (n);                                                         \
		if (bpf_probe_read_user(e->data, (n), (void *)(p)))                       \
			e->hdr.cap = 0;                                                   \
		bpf_ringbuf_submit(e, wake_flags());                                      \
		submitted(1);                                                             \
		return;                                                                   \
	} while (0)

// emit sends one event: the header h with up to WIRE_CAP bytes read from user address p (n of
// them; h->len is what the event stands for). An unreadable buffer is sent uncaptured (cap 0).
static __always_inline void emit(const struct wire_event_hdr *h, __u64 p, __u64 n)
{
	if (n == 0) {
		struct wire_event_hdr *e = bpf_ringbuf_reserve(&wire_events, sizeof(*e), 0);
		if (!e) {
			submitted(0);
			return;
		}
		*e = *h;
		e->cap = 0;
		bpf_ringbuf_submit(e, wake_flags());
		submitted(1);
		return;
	}
	if (n <= WIRE_SMALL)
		EMIT_CAPTURED(wire_event_small, h, p, n);
	if (n > WIRE_CAP)
		n = WIRE_CAP;
	EMIT_CAPTURED(wire_event, h, p, n);
}

// emit_buf sends the len bytes at user address p as up to WIRE_MAX_PARTS events of at most
// WIRE_CAP captured bytes. The last event accounts for everything left (its len exceeds its
// cap), so the lengths always add up to what the call transferred: user space frames bodies
// by these lengths, never by captured bytes.
static __always_inline void emit_buf(struct wire_event_hdr *h, __u64 p, __u64 len)
{
	for (int i = 0; i < WIRE_MAX_PARTS; i++) {
		if (len == 0)
			return;
		__u64 n = len;
		if (n > WIRE_CAP)
			n = WIRE_CAP;
		h->len = (i == WIRE_MAX_PARTS - 1) ? len : n;
		emit(h, p, n);
		p += n;
		len -= h->len;
	}
}

// new_event fills the header template of an event (on the stack: each run has its own).
static __always_inline void new_event(struct wire_event_hdr *h, __u32 tgid, __u64 conn, __u8 fn)
{
	h->ts = bpf_ktime_get_ns();
	h->conn = conn;
	h->tgid = tgid;
	h->len = 0;
	h->cap = 0;
	h->fn = fn;
	h->kind = WIRE_KIND_DATA;
	h->tls = fn == WIRE_FN_SSL_READ || fn == WIRE_FN_SSL_WRITE || fn == WIRE_FN_SSL_FREE || fn == WIRE_FN_SSL_SET_FD;
	h->dir = (fn == WIRE_FN_SEND || fn == WIRE_FN_WRITEV || fn == WIRE_FN_SENDFILE || fn == WIRE_FN_SSL_WRITE ||
		  fn == WIRE_FN_CLOSE || fn == WIRE_FN_SSL_FREE)
			 ? WIRE_DIR_OUT
			 : WIRE_DIR_IN;
	h->_pad[0] = h->_pad[1] = 0;
}

SEC("uprobe")
int wire_enter(struct pt_regs *ctx)
{
	__u8 fn = bpf_get_attach_cookie(ctx);
	__u32 tgid = tracked();
	if (!tgid)
		return 0;
	if (fn == WIRE_FN_CLOSE || fn == WIRE_FN_SSL_FREE) {
		__u64 conn = fn == WIRE_FN_CLOSE ? (__u64)(__u32)PT_REGS_PARM1(ctx) : PT_REGS_PARM1(ctx);
		if (!conn && fn == WIRE_FN_SSL_FREE)
			return 0;
		struct wire_event_hdr h;
		new_event(&h, tgid, conn, fn);
		h.kind = WIRE_KIND_CLOSE;
		emit(&h, 0, 0);
		return 0;
	}
	if (fn == WIRE_FN_SSL_SET_FD) { // SSL_set_fd(ssl, fd): nginx's TLS session of fd
		struct wire_event_hdr h;
		new_event(&h, tgid, PT_REGS_PARM1(ctx), fn);
		h.kind = WIRE_KIND_SSL_FD;
		h.len = (__u32)PT_REGS_PARM2(ctx);
		emit(&h, 0, 0);
		return 0;
	}
	// nginx peeks one byte with recv(MSG_PEEK) to tell TLS from plain HTTP: not consumed.
	if (fn == WIRE_FN_RECV && (PT_REGS_PARM4(ctx) & 2 /* MSG_PEEK */))
		return 0;
	struct wire_call c = {
		.a0 = PT_REGS_PARM1(ctx),
		.a1 = PT_REGS_PARM2(ctx),
		.a2 = PT_REGS_PARM3(ctx),
		.ts = bpf_ktime_get_ns(),
		.tgid = tgid,
		.fn = fn,
	};
	if (fn == WIRE_FN_SENDFILE) // sendfile(out_fd, in_fd, off, count): only out_fd matters
		c.a1 = 0;
	__u64 id = bpf_get_current_pid_tgid();
	if (bpf_map_update_elem(&wire_calls, &id, &c, BPF_ANY))
		count(WIRE_STAT_DROPS);
	return 0;
}

// on_return handles a call's result: from a uretprobe, or from a plain uprobe on an
// instruction of the function's epilogue where rax already holds the return value (see
// agent/insn.ReturnSite: a uretprobe on OpenSSL's SSL_read is single-stepped, ~15 us).
static __always_inline int on_return(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct wire_call *cp = bpf_map_lookup_elem(&wire_calls, &id);
	if (!cp)
		return 0; // not a tracked process
	struct wire_call c = *cp;
	bpf_map_delete_elem(&wire_calls, &id);
	long ret = PT_REGS_RC(ctx);
	// SSL_read/SSL_write return an int: the upper half of rax is not theirs (-1 would read as
	// 4294967295). The libc functions return a full ssize_t.
	if (c.fn == WIRE_FN_SSL_READ || c.fn == WIRE_FN_SSL_WRITE)
		ret = (int)ret;
	if (ret <= 0)
		return 0;
	if (c.fn == WIRE_FN_ACCEPT || c.fn == WIRE_FN_ACCEPT4) { // the new fd, from listening fd a0
		struct wire_event_hdr h;
		new_event(&h, c.tgid, (__u32)ret, c.fn);
		h.kind = WIRE_KIND_ACCEPT;
		h.len = (__u32)c.a0;
		emit(&h, 0, 0);
		return 0;
	}
	__u64 conn = c.a0;
	if (c.fn != WIRE_FN_SSL_READ && c.fn != WIRE_FN_SSL_WRITE)
		conn = (__u32)c.a0; // an int fd
	struct wire_event_hdr h;
	new_event(&h, c.tgid, conn, c.fn);
	if (h.dir == WIRE_DIR_OUT)
		h.ts = c.ts;
	__u64 left = ret;
	switch (c.fn) {
	case WIRE_FN_WRITEV: {
		// One event train per iovec, so a header buffer followed by a body buffer keeps the
		// header whole. Bytes of iovecs past WIRE_MAX_IOV (or unreadable ones) still count,
		// as one uncaptured event: only an iovec's own bytes are ever copied.
		for (int i = 0; i < WIRE_MAX_IOV; i++) {
			if (left == 0 || i >= (int)c.a2)
				break;
			struct { __u64 base, len; } iov;
			if (bpf_probe_read_user(&iov, sizeof(iov), (void *)(c.a1 + i * 16)))
				break;
			__u64 n = iov.len < left ? iov.len : left;
			emit_buf(&h, iov.base, n);
			left -= n;
		}
		if (left) {
			h.len = left;
			emit(&h, 0, 0);
		}
		break;
	}
	case WIRE_FN_SENDFILE:
		// File data: only its length matters, to skip it in the response body.
		h.len = ret;
		emit(&h, 0, 0);
		break;
	default:
		emit_buf(&h, c.a1, ret);
	}
	return 0;
}

SEC("uretprobe")
int wire_exit(struct pt_regs *ctx)
{
	return on_return(ctx);
}

SEC("uprobe")
int wire_ret_site(struct pt_regs *ctx)
{
	return on_return(ctx);
}
