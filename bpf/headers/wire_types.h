// SPDX-License-Identifier: (MIT OR GPL-2.0)
// Types shared by bpf/wire.c and agent/wire (through bpf2go's generated Go types). Every
// field is naturally aligned and the padding is explicit, so the Go and C layouts match.
#pragma once

#define WIRE_CAP 1024      // bytes captured per event (a power of two)
#define WIRE_MAX_PARTS 8   // events per buffer: headers up to 8 KiB (nginx's default limit)
#define WIRE_MAX_IOV 8     // iovecs of one writev looked at

enum wire_fn {
	WIRE_FN_RECV = 1,
	WIRE_FN_SEND = 2,
	WIRE_FN_WRITEV = 3,
	WIRE_FN_SENDFILE = 4,
	WIRE_FN_CLOSE = 5,
	WIRE_FN_SSL_READ = 6,
	WIRE_FN_SSL_WRITE = 7,
	WIRE_FN_SSL_FREE = 8,
	WIRE_FN_ACCEPT = 9,
	WIRE_FN_ACCEPT4 = 10,
	WIRE_FN_SSL_SET_FD = 11,
};

enum wire_dir { WIRE_DIR_IN = 0, WIRE_DIR_OUT = 1 };
// ACCEPT: conn (an fd) was accepted from the listening socket whose fd is in len. SSL_FD:
// conn (an SSL*) is the TLS session of the socket whose fd is in len. Once per connection,
// so that user space knows which listener each connection's requests arrived on.
enum wire_kind { WIRE_KIND_DATA = 0, WIRE_KIND_CLOSE = 1, WIRE_KIND_ACCEPT = 2, WIRE_KIND_SSL_FD = 3 };

enum wire_stat {
	WIRE_STAT_EVENTS = 0,
	WIRE_STAT_DROPS = 1,
	WIRE_STAT_MAX = 2,
};

struct wire_call {
	__u64 a0; // fd or SSL*
	__u64 a1; // buffer or iovec array
	__u64 a2; // length or iovcnt
	__u64 ts; // bpf_ktime_get_ns at entry
	__u32 tgid;
	__u8 fn;
	__u8 _pad[3];
};

struct wire_event_hdr {
	// bpf_ktime_get_ns (CLOCK_MONOTONIC): when a read returned (the bytes were in), when a
	// write was entered (the peer may have them before the call returns, and a worker
	// preempted before its return probe must not stretch the response's end).
	__u64 ts;
	__u64 conn; // fd (plain) or SSL* (tls)
	__u32 tgid; // as seen from the agent's PID namespace
	__u32 len;  // bytes of the stream this event stands for (>= cap)
	__u16 cap;  // bytes captured in data
	__u8 fn;
	__u8 kind;
	__u8 dir;
	__u8 tls;
	__u8 _pad[2];
};

struct wire_event {
	struct wire_event_hdr hdr;
	__u8 data[WIRE_CAP];
};
