//go:build ignore

// SPDX-License-Identifier: GPL-2.0
/* nginxreq: one event per HTTP request, read from nginx's own request object.
 *
 * The probe sits on ngx_http_free_request(r, rc): it is called once per client request (once
 * per HTTP/2 stream), starts with an emulated `push` (cheap uprobe), and runs before the
 * access log and before r's pool is destroyed, so everything nginx logs is still in r.
 *
 * nginx's ngx_http_request_t layout depends on version and build options and Kong's binary has
 * no debug info, so the offsets live in a map (nginxreq_layouts) that user space fills once it
 * has learnt them. Until then the program runs in CALIBRATION mode: it ships a raw snapshot of
 * r plus everything it can find without knowing the layout (start_sec found by a bounded scan,
 * the strings at the positions that are fixed relative to start_sec, the candidates of the
 * few fields that are not), so user space can both learn the layout and decode the request.
 *
 * Optional Lua phase timing: uprobe + uretprobe on the lua module's handler of each phase
 * (rewrite, access, content, header_filter, body_filter, log, balancer) accumulate per-request
 * time keyed by (tgid, r); a per-thread call stack keeps each phase's own time when one runs
 * inside another (the header and body filters inside an access handler that answers itself). The log phase runs inside
 * free_request (ngx_http_log_request), after our entry probe, so when Lua timing is on the
 * entry probe parks the event per thread and a uretprobe on free_request completes and emits it.
 */
#include "headers/common.h"
#include "headers/task.h"

char __license[] SEC("license") = "GPL";

/* Set by the loader (spec.Variables) before load. */
volatile const __u64 agent_ns_dev = 0;      /* st_dev of the agent's /proc/self/ns/pid, kernel encoding */
volatile const __u64 agent_ns_ino = 0;      /* st_ino of the agent's /proc/self/ns/pid */
volatile const __u32 agent_in_init_ns = 0;  /* 1: fall back to global tgids (agent on the host) */
volatile const __u64 wakeup_bytes = 262144; /* wake the reader only when this much is queued */

/* The record kinds (the first field of every ring buffer record). The enums of this file
 * are the ABI with user space: bpf2go generates them for Go (-type). */
enum nginxreq_kind {
	EV_REQUEST = 1,
	EV_CALIB = 2,
};

/* event flags */
enum nginxreq_flag {
	F_URI_TRUNC = 1 << 0,
	F_HOST_TRUNC = 1 << 1,
	F_NO_CLOCK = 1 << 2,   /* no ngx_cached_time: now_* not set, use ktime */
	F_READ_ERR = 1 << 3,   /* a read of r failed: fields may be zero */
	F_HAS_LUA = 1 << 4,
	F_CALIB_NO_S = 1 << 5, /* calibration: start_sec not found */
	F_UPSTREAM_BAD = 1 << 6,
	F_HOST_SERVER_NAME = 1 << 7, /* no Host: host is the server's server_name, as in $host */
	F_LISTEN_ERR = 1 << 8,       /* the accepting listener's address could not be read */
	F_METHOD_BIT = 1 << 9,       /* method not read: it is the name of method_bit's method */
	F_HOST_IN_URI = 1 << 10,     /* host's bytes are in uri (running on into host) from host_off on */
	F_HOST_FOLDED = 1 << 11,     /* ... read in the URI's read: the request line's next line */
};

/* counters (per-CPU array indexes) */
enum nginxreq_counter {
	C_RING_DROP = 0,    /* ring buffer full: request event lost */
	C_CALIB_DROP = 1,   /* ring buffer full: calibration event lost */
	C_NS_ERR = 2,       /* bpf_get_ns_current_pid_tgid failed */
	C_PENDING_LOST = 3, /* Lua mode: parked event not completed (map full) */
	/* 4: unused (user space counts the events it reads; a per-event count here would
	 * touch one more page per request) */
	C_ADOPTED = 5,      /* untracked process accepted because its parent is a tracked master */
	C_MAX = 8,
};

#define METHOD_LEN 16
#define HOST_LEN 64
#define URI_LEN 160
#define ADDR_LEN 48
#define SNAP_LEN 2048

/* Lua phases, the attach cookie of the handler probes; lua_ns is indexed by them. */
enum nginxreq_lua_phase {
	LUA_REWRITE,
	LUA_ACCESS,
	LUA_CONTENT,
	LUA_HEADER_FILTER,
	LUA_BODY_FILTER,
	LUA_LOG,
	LUA_BALANCER,
	LUA_NPHASES,
};
/* Nested Lua handlers tracked per thread; deeper ones are counted but not timed. */
#define LUA_DEPTH 4 /* a power of 2: indexes are masked with it */
/* A frame older than this at the next entry is a leftover (a worker killed inside a handler
 * whose thread id was reused, probes detached between entry and return): drop the stack. */
#define LUA_STALE_NS (30ULL * 1000000000ULL)
#define N_HOST_CAND 3
#define N_UP_CAND 2
#define N_SN_CAND 2 /* cscf->server_name: without or with file_name/line before it */
#define CSCF_HEAD 96
#define MAX_UP_TRIES 4
#define MAX_LAYOUTS 16

/* start_sec scan window in r (8-byte steps): covers every layout checked (960 in Debian
 * 1.22, ~900-1000 elsewhere) with room for builds with more fields before it. */
#define S_SCAN_LO 512
#define S_SCAN_HI 1600

/* nginx's offsets that are the same in every version checked, and the candidates of those
 * that are not: agent/nginxlayout holds them (and says why each is what it is); the loader
 * sets these from it, so no offset is written twice. Zero until set. */
volatile const __u32 ngx_s_to_msec = 0;         /* relative to start_sec */
volatile const __u32 ngx_s_to_method = 0;
volatile const __u32 ngx_s_to_httpver = 0;
volatile const __u32 ngx_s_to_unparsed_uri = 0;
volatile const __u32 ngx_s_to_method_name = 0;
volatile const __u32 ngx_r_to_conn = 0;         /* relative to r */
volatile const __u32 ngx_r_to_srv_conf = 0;
volatile const __u32 ngx_conn_sent = 0;         /* relative to ngx_connection_t */
volatile const __u32 ngx_conn_addr = 0;
volatile const __u32 ngx_conn_listening = 0;
volatile const __u32 ngx_ls_to_sockaddr = 0;    /* relative to ngx_listening_t */
volatile const __u32 ngx_ustate_rt = 0;         /* relative to ngx_http_upstream_state_t */
volatile const __u32 ngx_server_to_ho = 0;      /* headers_out - headers_in.server */
volatile const __u32 ngx_start_dist[N_HOST_CAND] = {};     /* start_sec - headers_out */
volatile const __u32 ngx_upstream_cand[N_UP_CAND] = {};    /* upstream_states in r */
volatile const __u32 ngx_server_name_cand[N_SN_CAND] = {}; /* server_name in the cscf */

struct nginxreq_event {
	__u32 kind;
	__u32 tgid; /* in the agent's PID namespace */
	__u64 r;    /* request address: the request's identity within the worker */
	__u64 ktime_ns; /* bpf_ktime_get_boot_ns() at free_request, only with F_NO_CLOCK */
	__u64 start_sec;
	__u64 start_msec;
	__u64 now_sec; /* nginx's cached clock (ngx_cached_time) */
	__u64 now_msec;
	__u64 method_bit; /* NGX_HTTP_GET, ... (a bit) */
	__u64 http_version;
	__u64 status; /* headers_out.status (calibration: 0, user space reads the snapshot) */
	__u64 rc;     /* free_request's rc */
	__u64 sent;   /* connection->sent: $bytes_sent */
	__u64 upstream_ms; /* sum of upstream_states[*].response_time */
	__u32 lua_ns[LUA_NPHASES]; /* ns, saturated at 2^32-1 (4.29 s) */
	__u32 upstream_tries; /* upstream_states->nelts; 0 = not proxied */
	__u32 flags;
	__u32 method_len; /* lengths as in r (may exceed the buffers: truncation) */
	__u32 uri_len;
	__u32 host_len;
	__u32 addr_len;
	__u32 layout_id;
	/* The first 4 bytes of the accepting listener's ngx_listening_t.sockaddr: sa_family
	 * (host order) and, for AF_INET and AF_INET6, the port (network order). An HTTP/2
	 * stream's connection copies listening from the client's. F_LISTEN_ERR: not read. */
	__u16 family;
	__u16 local_port;
	__u32 host_off; /* F_HOST_IN_URI: where host's bytes start in uri */
	__u32 _pad;
	char method[METHOD_LEN];
	/* uri and host are one buffer for the strings, so that a record ends where its bytes do:
	 * the URI's bytes from uri on, then the Host's at host_off (F_HOST_IN_URI), right after
	 * them or, read with them, after the request line; a Host after a long URI runs on into
	 * host. Only calibration events, which carry no Host, leave host to user space. */
	char uri[URI_LEN];
	char host[HOST_LEN];
	char addr[ADDR_LEN];
};
_Static_assert(__builtin_offsetof(struct nginxreq_event, host) == __builtin_offsetof(struct nginxreq_event, uri) + URI_LEN,
	       "the Host's bytes may run on from uri into host");

struct nginxreq_upcand {
	__u64 ptr;   /* value at r+U */
	__u64 nelts; /* ngx_array_t fields */
	__u64 size;
	__u64 pool;
	__u64 sum_ms; /* response_time summed as the hot path would */
};

struct nginxreq_calib {
	struct nginxreq_event ev;
	__u32 s_off;    /* start_sec offset found by the scan (0: none) */
	__u32 snap_len; /* bytes of r in snap (0 if unreadable) */
	struct nginxreq_upcand up[N_UP_CAND]; /* at ngx_upstream_cand */
	__u32 host_len[N_HOST_CAND]; /* headers_in.server at S - D - ngx_server_to_ho, D in ngx_start_dist */
	__u32 _pad1;
	char host[N_HOST_CAND][HOST_LEN];
	/* The server's ngx_http_core_srv_conf_t (cscf), so user space can verify the struct and
	 * find server_name in it: srv_conf = r->srv_conf, cscf = srv_conf[0], cscf_ctx_srv =
	 * cscf->ctx->srv_conf (== srv_conf for a real cscf), the first 96 bytes of cscf and the
	 * strings at the server_name candidates (ngx_server_name_cand). */
	__u64 srv_conf;
	__u64 cscf;
	__u64 cscf_ctx_srv;
	__u64 cscf_head[CSCF_HEAD / 8];
	__u32 sn_len[N_SN_CAND];
	char sn[N_SN_CAND][HOST_LEN];
	__u8 snap[SNAP_LEN];
};

/* Force BTF for the enums user space needs (only ever values, never a variable's type),
 * for bpf2go -type. */
const enum nginxreq_lua_phase *unused_nginxreq_lua_phase __attribute__((unused));
const enum nginxreq_kind *unused_nginxreq_kind __attribute__((unused));
const enum nginxreq_flag *unused_nginxreq_flag __attribute__((unused));
const enum nginxreq_counter *unused_nginxreq_counter __attribute__((unused));

/* Force BTF for the calibration event (only ever a ring buffer record), for bpf2go -type. */
const struct nginxreq_calib *unused_nginxreq_calib __attribute__((unused));

struct nginxreq_layout {
	__u32 ready;        /* 0: calibrate */
	__u32 off_status;   /* headers_out.status */
	__u32 off_server;   /* headers_in.server (ngx_str_t) */
	__u32 off_start;    /* start_sec; start_msec, method, http_version, ..., unparsed_uri
			     * (+96), method_name (+112) follow in every nginx version */
	__u32 off_ustates;  /* upstream_states (ngx_array_t *) */
	__u32 off_conn;     /* connection */
	__u32 conn_sent;    /* ngx_connection_t.sent */
	__u32 conn_addr;    /* ngx_connection_t.addr_text */
	__u32 ustate_rt;    /* ngx_http_upstream_state_t.response_time */
	__u32 off_main;     /* r->main, 0 if not verified: Lua timing then skips no subrequest */
	__u32 off_srv_conf; /* r->srv_conf */
	__u32 cscf_name;    /* ngx_http_core_srv_conf_t.server_name; 0: not verified, no fallback */
	__u32 conn_listening; /* ngx_connection_t.listening */
};

struct nginxreq_proc {
	__u64 cached_time_addr; /* runtime address of the ngx_cached_time pointer, 0 if unknown */
	__u32 layout_id;
	/* The gateway's master (agent's PID namespace). An entry whose key is its own master
	 * lets the kernel adopt that process's children: see adopt(). */
	__u32 master;
};

struct nginxreq_config {
	__u64 now_sec; /* user space's wall clock, for the start_sec scan */
	__u32 lua;     /* 1: park events for the free_request return probe */
	__u32 addr;    /* 1: read the client's address (only the per-request log shows it) */
	/* Changed by user space after each of its changes to nginxreq_procs: the copies of the
	 * filter's entries in nginxreq_tasks are trusted only while it has not changed. */
	__u64 procs_gen;
};

struct nginxreq_lua_frame {
	__u64 start_ns; /* minus the time of the handlers nested in it so far */
	__u64 r;        /* 0: not timed (a subrequest) */
	__u32 phase;
	__u32 _pad;
};

/* One thread's Lua handlers in progress, outermost first. */
struct nginxreq_lua_stack {
	__u32 depth; /* may exceed LUA_DEPTH: the frames beyond it are only counted */
	__u32 _pad;
	struct nginxreq_lua_frame f[LUA_DEPTH];
};

struct nginxreq_lua_key {
	__u64 r;
	__u32 tgid; /* kernel tgid: r is only unique within a process */
	__u32 _pad;
};

struct nginxreq_lua_acc {
	__u64 ns[LUA_NPHASES];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 21); /* resized by the loader */
} nginxreq_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32); /* tgid in the agent's PID namespace */
	__type(value, struct nginxreq_proc);
} nginxreq_procs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, MAX_LAYOUTS);
	__type(key, __u32);
	__type(value, struct nginxreq_layout);
} nginxreq_layouts SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nginxreq_config);
} nginxreq_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, C_MAX);
	__type(key, __u32);
	__type(value, __u64);
} nginxreq_counters SEC(".maps");

/* An all-zero event (never written): the initial value of a parked event, which is then
 * filled in place. Events are too big for the 512-byte stack, and a parked event lives from
 * free_request's entry to its return, so it is the thread's, not the CPU's. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nginxreq_event);
} nginxreq_zero SEC(".maps");

/* read_r_span's buffer for one read of r: r->connection to start_sec + 128 is 1,080 bytes in
 * nginx 1.22 (headers_in.server to there 592; 528 in 1.23-1.27 and 536 from 1.29.7). A power
 * of 2: indexes are masked. */
#define R_SPAN 2048

/* The event being built, per CPU, so that only the bytes the decoder needs reach the ring:
 * a request record ends with its URI (the address after it only when the per-request log
 * reads it), ~250 bytes instead of 464, written to the ring in one copy from memory that
 * stays in cache; and r's span (rbuf). busy guards against a second task on this CPU (the
 * program can be preempted): that one builds its event in the ring instead. */
struct nginxreq_scratch {
	__u32 busy;
	__u32 _pad;
	struct nginxreq_event ev;
	__u64 rbuf[R_SPAN / 8];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct nginxreq_scratch);
} nginxreq_scratch SEC(".maps");

/* Lua mode: the event between free_request's entry and return, per thread (a call stack). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct nginxreq_event);
} nginxreq_pending SEC(".maps");

/* Lua handlers in progress, per thread. Entries stay (an idle stack has depth 0): a worker
 * thread runs handlers all the time, so re-creating its entry would cost more. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64); /* pid_tgid */
	__type(value, struct nginxreq_lua_stack);
} nginxreq_lua_calls SEC(".maps");

/* Lua time per request; LRU so requests that never reach free_request cannot fill it. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct nginxreq_lua_key);
	__type(value, struct nginxreq_lua_acc);
} nginxreq_lua_time SEC(".maps");

/* What never changes in a process's life, kept in its thread group leader's task storage (so
 * it lives and dies with the process, and finding it costs no hash lookup): its PID as the
 * agent sees it (bpf_get_ns_current_pid_tgid costs as much as three reads of nginx's memory)
 * and the listening sockets (ngx_listening_t) its requests came in on, which live as long as
 * it does. Only tracked processes get an entry. It also holds a copy of the process's filter
 * entry (nginxreq_procs), so a request looks up no hash map at all; the copy is used only
 * while the config's procs_gen is the one it was taken under, so user space's changes to the
 * filter take effect at the next request. */
#define TASK_LISTENERS 4 /* a power of 2: indexes are masked with it */

struct nginxreq_task_listener {
	__u64 ls;
	__u16 family;
	__u16 port; /* network order, as in the sockaddr */
	__u32 _pad;
};

struct nginxreq_task {
	__u64 gen;     /* procs_gen when proc was copied */
	struct nginxreq_proc proc; /* the process's nginxreq_procs entry, as of gen */
	__u32 tgid;    /* in the agent's PID namespace (or global, see lookup_proc) */
	__u32 ns_mode; /* 1: tgid is from the agent's namespace */
	__u32 nls;     /* listeners cached so far (the slots are reused round robin) */
	__u32 _pad;
	struct nginxreq_task_listener ls[TASK_LISTENERS];
};

struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC); /* required for task storage */
	__type(key, int);
	__type(value, struct nginxreq_task);
} nginxreq_tasks SEC(".maps");

static __always_inline void count(__u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(&nginxreq_counters, &idx);
	if (v)
		*v += 1;
}

/* The parent process's tgid as the agent sees it (0: unknown).
 *
 * ns_mode (bpf_get_ns_current_pid_tgid matched): the current task's own PID namespace, the
 * deepest level of its struct pid, is the agent's, so that level L is the agent's namespace
 * level (user space cannot tell it: NSpid in a pod's own /proc lists only that namespace).
 * The parent's PID there is numbers[L] of its thread group leader's struct pid, trusted only
 * if the parent has that level and it is the agent's namespace. real_parent is the thread
 * that forked; its group leader's PID is the process's.
 *
 * Otherwise (agent in the initial namespace, nginx in a container): the global tgid. */
static __always_inline __u32 parent_tgid(int ns_mode)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	if (!ns_mode)
		return BPF_CORE_READ(task, real_parent, tgid);
	__u32 lvl = BPF_CORE_READ(task, thread_pid, level);
	struct pid *pid = BPF_CORE_READ(task, real_parent, group_leader, thread_pid);
	if (!pid || lvl > 32 || BPF_CORE_READ(pid, level) < lvl)
		return 0;
	struct upid *u = (struct upid *)((void *)pid + bpf_core_field_offset(struct pid, numbers) +
					  lvl * bpf_core_type_size(struct upid));
	struct pid_namespace *ns = BPF_CORE_READ(u, ns);
	if (!ns || BPF_CORE_READ(ns, ns.inum) != agent_ns_ino)
		return 0;
	return BPF_CORE_READ(u, nr);
}

/* A process not (yet) in the filter: nginx forks workers at start, on reload and to replace
 * a crashed one, and user space only adds them at its next /proc scan. If the parent is a
 * tracked gateway master (its entry names itself as master), the process is one of its
 * workers: accept it with the master's value (same binary, same address space layout, so
 * the ngx_cached_time address holds) and add it to the filter, so its next requests take the
 * fast path. User space reconciles these entries at its next SetPIDs. Only runs on a miss. */
static __always_inline struct nginxreq_proc *adopt(__u32 tgid, int ns_mode)
{
	__u32 ppid = parent_tgid(ns_mode);
	if (!ppid || ppid == tgid)
		return 0;
	struct nginxreq_proc *pp = bpf_map_lookup_elem(&nginxreq_procs, &ppid);
	if (!pp || pp->master != ppid)
		return 0;
	struct nginxreq_proc v = *pp;
	bpf_map_update_elem(&nginxreq_procs, &tgid, &v, BPF_NOEXIST);
	count(C_ADOPTED);
	return pp;
}

/* The calling process's filter entry if it is tracked (0 if not), and its entry in
 * nginxreq_tasks (0 if it has none). The filter is keyed by the PID the agent sees, so a
 * pod's agent (its own PID namespace) and a host agent both work. gen is the config's
 * procs_gen, read before the filter is: a copy taken under it is then never newer than the
 * filter it was taken from. */
static __always_inline struct nginxreq_proc *lookup_proc(__u64 gen, __u32 *tgid, struct nginxreq_task **tp)
{
	struct task_struct *task = bpf_get_current_task_btf();
	struct task_struct *leader = task->group_leader;
	struct nginxreq_task *t = bpf_task_storage_get(&nginxreq_tasks, leader, 0, 0);
	int ns_mode = 1;
	if (t) {
		*tgid = t->tgid;
		*tp = t;
		if (t->gen == gen)
			return &t->proc;
		ns_mode = t->ns_mode;
	} else {
		struct bpf_pidns_info ns = {};
		__u32 ktgid = task->tgid;
		if (bpf_get_ns_current_pid_tgid(agent_ns_dev, agent_ns_ino, &ns, sizeof(ns)) == 0) {
			*tgid = ns.tgid;
		} else if (agent_in_init_ns) {
			/* nginx in a container, agent on the host: global PIDs are what it sees. */
			*tgid = ktgid;
			ns_mode = 0;
		} else {
			count(C_NS_ERR);
			return 0;
		}
	}
	struct nginxreq_proc *p = bpf_map_lookup_elem(&nginxreq_procs, tgid);
	if (!p)
		p = adopt(*tgid, ns_mode);
	if (p && !t) {
		/* Created zeroed: no listener cached yet. */
		t = bpf_task_storage_get(&nginxreq_tasks, leader, 0, BPF_LOCAL_STORAGE_GET_F_CREATE);
		if (t) {
			t->tgid = *tgid;
			t->ns_mode = ns_mode;
		}
	}
	if (p && t) {
		/* One process's requests run on one thread: the copy has one writer. */
		t->proc = *p;
		t->gen = gen;
	}
	*tp = t;
	return p;
}

static __always_inline void read_clock(struct nginxreq_event *e, struct nginxreq_proc *p)
{
	__u64 tp = 0;
	__u64 t[2] = {}; /* ngx_time_t: sec, msec (gmtoff not needed) */
	if (p->cached_time_addr && bpf_probe_read_user(&tp, sizeof(tp), (void *)p->cached_time_addr) == 0 &&
	    tp && bpf_probe_read_user(t, sizeof(t), (void *)tp) == 0) {
		e->now_sec = t[0];
		e->now_msec = t[1];
		return;
	}
	e->flags |= F_NO_CLOCK;
	e->ktime_ns = bpf_ktime_get_boot_ns();
}

/* read_listener reads the listener's family and port (ls->sockaddr, then its first 4 bytes):
 * from the process's cache when it has served that listener before, two dependent reads
 * fewer per request. One process's requests run on one thread, so the cache has one writer. */
static __always_inline void read_listener(struct nginxreq_event *e, __u64 ls, struct nginxreq_task *t)
{
	if (t) {
#pragma unroll
		for (int i = 0; i < TASK_LISTENERS; i++) {
			if (t->ls[i].ls == ls && ls) {
				e->family = t->ls[i].family;
				e->local_port = t->ls[i].port;
				return;
			}
		}
	}
	__u64 sa = 0;
	if (!ls || bpf_probe_read_user(&sa, sizeof(sa), (void *)(ls + ngx_ls_to_sockaddr)) || !sa ||
	    bpf_probe_read_user(&e->family, sizeof(e->family) + sizeof(e->local_port), (void *)sa)) {
		e->flags |= F_LISTEN_ERR;
		return;
	}
	if (t) {
		__u32 i = t->nls++ & (TASK_LISTENERS - 1);
		t->ls[i].family = e->family;
		t->ls[i].port = e->local_port;
		t->ls[i].ls = ls;
	}
}

static __always_inline void read_conn(struct nginxreq_event *e, __u64 c, __u32 sent_off, __u32 addr_off,
				      __u32 listening_off, int want_addr, struct nginxreq_task *t)
{
	__u64 addr[2] = {}; /* ngx_str_t: len, data */
	__u64 v[2] = {};    /* listening, sent */
	if (!c) {
		e->flags |= F_READ_ERR | F_LISTEN_ERR;
		return;
	}
	if (listening_off + 8 == sent_off) {
		/* Adjacent in every nginx checked (64, 72): one read for both. */
		if (bpf_probe_read_user(v, sizeof(v), (void *)(c + listening_off)))
			e->flags |= F_READ_ERR;
		e->sent = v[1];
	} else {
		if (bpf_probe_read_user(&e->sent, sizeof(e->sent), (void *)(c + sent_off)))
			e->flags |= F_READ_ERR;
		bpf_probe_read_user(v, sizeof(v[0]), (void *)(c + listening_off));
	}
	read_listener(e, v[0], t);
	if (want_addr && bpf_probe_read_user(addr, sizeof(addr), (void *)(c + addr_off)) == 0) {
		e->addr_len = addr[0];
		KW_READ_STR(e->addr, ADDR_LEN, addr[1], addr[0]);
	}
}

/* start_sec, start_msec, method, http_version and the two strings at fixed distances from
 * start_sec (unparsed_uri at +96, method_name at +112), from v, the 128 bytes of r from
 * start_sec on: one read instead of three. by_bit: the layout is known (not calibration), so
 * a known method's name can be left to user space. uri: if set, the URI's bytes are not read
 * and this gets their address. */
static __always_inline void from_start(struct nginxreq_event *e, const __u64 *v, int by_bit, __u64 *uri)
{
	/* The indexes are the loader's constants; the masks keep them inside v for the verifier. */
	__u32 iu = (ngx_s_to_unparsed_uri / 8) & 14, im = (ngx_s_to_method_name / 8) & 14;
	e->start_sec = v[0];
	e->start_msec = v[(ngx_s_to_msec / 8) & 15];
	e->method_bit = v[(ngx_s_to_method / 8) & 15];
	e->http_version = v[(ngx_s_to_httpver / 8) & 15];
	e->uri_len = v[iu];
	if (v[iu] > URI_LEN)
		e->flags |= F_URI_TRUNC;
	if (uri)
		*uri = v[iu + 1]; /* the caller reads it (read_host_uri) */
	else
		KW_READ_STR(e->uri, URI_LEN, v[iu + 1], v[iu]);
	e->method_len = v[im];
	/* nginx names a method it knows by its bit only when the name is that method's
	 * (case-sensitive parsing): user space writes the name, one read fewer per request. */
	__u64 mb = e->method_bit;
	if (by_bit && mb >= 2 && mb <= 0x10000 && (mb & (mb - 1)) == 0) {
		e->flags |= F_METHOD_BIT;
		return;
	}
	KW_READ_STR(e->method, METHOD_LEN, v[im + 1], v[im]);
}

static __always_inline void read_from_start(struct nginxreq_event *e, __u64 r, __u32 s, int by_bit)
{
	__u64 v[16] = {};
	if (bpf_probe_read_user(v, sizeof(v), (void *)(r + s))) {
		e->flags |= F_READ_ERR;
		return;
	}
	from_start(e, v, by_bit, 0);
}

/* host_from copies the ngx_str_t (len, data) into dst; it returns len (0: none). */
static __always_inline __u32 host_from(char *dst, __u64 len, __u64 data, __u32 *flags)
{
	if (len > 0xffffffff)
		return 0;
	if (len > HOST_LEN)
		*flags |= F_HOST_TRUNC;
	KW_READ_STR(dst, HOST_LEN, data, len);
	return len;
}

static __always_inline __u32 read_host(char *dst, __u64 r, __u32 off, __u32 *flags)
{
	__u64 str[2] = {};
	if (bpf_probe_read_user(str, sizeof(str), (void *)(r + off)))
		return 0;
	return host_from(dst, str[0], str[1], flags);
}

/* put_host copies the Host (the ngx_str_t len, data) into e, whose URI is there already:
 * right after the URI's bytes (F_HOST_IN_URI, host_off), running on into host when the URI is
 * long, so the record ends after the Host and carries no byte of an earlier request. */
static __always_inline void put_host(struct nginxreq_event *e, __u64 len, __u64 data)
{
	__u32 ul = e->uri_len < URI_LEN ? e->uri_len : URI_LEN;
	kw_barrier_var(ul);
	if (!len || ul > URI_LEN) /* ul's bound is known already; for the verifier */
		return;
	e->host_len = host_from(e->uri + ul, len, data, &e->flags);
	if (e->host_len) {
		e->host_off = ul;
		e->flags |= F_HOST_IN_URI;
	}
}

/* read_put_host reads the ngx_str_t at addr and puts it into e as the Host (put_host). */
static __always_inline void read_put_host(struct nginxreq_event *e, __u64 addr)
{
	__u64 str[2] = {};
	if (bpf_probe_read_user(str, sizeof(str), (void *)addr) == 0)
		put_host(e, str[0], str[1]);
}

/* The span read_host_status reads at once: headers_in.server to headers_out.status is 152
 * bytes in every nginx checked (1.22 to 1.27). */
#define HS_SPAN 160

/* read_host_status reads headers_in.server's string and headers_out.status; in one read
 * when status lies within HS_SPAN bytes after server (an 8-aligned distance). */
static __always_inline void read_host_status(struct nginxreq_event *e, __u64 r, struct nginxreq_layout *l)
{
	__u32 d = l->off_status - l->off_server;
	if (l->off_status > l->off_server && d + 8 <= HS_SPAN && (d & 7) == 0) {
		__u64 buf[HS_SPAN / 8];
		if (bpf_probe_read_user(buf, sizeof(buf), (void *)(r + l->off_server))) {
			e->flags |= F_READ_ERR;
			return;
		}
		put_host(e, buf[0], buf[1]);
		__u32 i = d / 8;
		kw_barrier_var(i);
		if (i < HS_SPAN / 8)
			e->status = buf[i];
		return;
	}
	read_put_host(e, r + l->off_server);
	if (bpf_probe_read_user(&e->status, sizeof(e->status), (void *)(r + l->off_status)))
		e->flags |= F_READ_ERR;
}

/* $host when the client sent no Host (headers_in.server empty): the server_name of the
 * server that handled the request, ((ngx_http_core_srv_conf_t *) r->srv_conf[0])->server_name.
 * Only on that (rare) path, so the common path costs nothing more. */
static __always_inline void read_server_name(struct nginxreq_event *e, __u64 r, struct nginxreq_layout *l)
{
	__u64 sc = 0, cscf = 0;
	if (bpf_probe_read_user(&sc, sizeof(sc), (void *)(r + l->off_srv_conf)) || !sc)
		return;
	if (bpf_probe_read_user(&cscf, sizeof(cscf), (void *)sc) || !cscf)
		return;
	e->flags |= F_HOST_SERVER_NAME;
	read_put_host(e, cscf + l->cscf_name);
}

/* The span read_upstream reads first: the ngx_array_t (40 bytes) and the start of the first
 * element when the elements follow the header, as ngx_array_create allocates them. */
#define UP_SPAN 64

/* Sum response_time over the first tries of an ngx_array_t of ngx_http_upstream_state_t,
 * using the array's own element size as stride (72 in nginx, 112 in Kong 3.10+). The header
 * and the first try's response_time come in one read when the elements follow the header. */
static __always_inline int read_upstream(__u64 arr, __u32 rt_off, __u64 hdr[5], __u64 *sum)
{
	/* ngx_array_t: elts, nelts, size, nalloc, pool */
	__u64 buf[UP_SPAN / 8];
	int span = rt_off + 8 <= UP_SPAN - 40 && (rt_off & 7) == 0 &&
		   bpf_probe_read_user(buf, sizeof(buf), (void *)arr) == 0;
	if (!span && bpf_probe_read_user(buf, 5 * sizeof(__u64), (void *)arr))
		return -1;
#pragma unroll
	for (int i = 0; i < 5; i++)
		hdr[i] = buf[i];
	if (hdr[1] == 0)
		return 0;
	if (hdr[2] < 16 || hdr[2] > 512 || hdr[1] > 64)
		return -1;
	span = span && hdr[0] == arr + 40;
	__u64 total = 0;
#pragma unroll
	for (int i = 0; i < MAX_UP_TRIES; i++) {
		if (i >= hdr[1])
			break;
		__u64 rt = 0;
		if (i == 0 && span)
			rt = buf[((40 + rt_off) / 8) & (UP_SPAN / 8 - 1)];
		else if (bpf_probe_read_user(&rt, sizeof(rt), (void *)(hdr[0] + i * hdr[2] + rt_off)))
			return -1;
		if (rt != (__u64)-1)
			total += rt;
	}
	*sum = total;
	return 0;
}

static __always_inline __u64 wake_flags(void)
{
	return bpf_ringbuf_query(&nginxreq_events, BPF_RB_AVAIL_DATA) >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP
										       : BPF_RB_NO_WAKEUP;
}

struct s_scan_ctx {
	__u8 *snap;
	__u64 now;
	__u32 found;
};

static long s_scan_cb(__u32 i, struct s_scan_ctx *c)
{
	__u32 off = S_SCAN_LO + i * 8;
	if (off > S_SCAN_HI)
		return 1;
	__u64 *v = (__u64 *)(c->snap + off);
	__u64 sec = v[0], msec = v[(ngx_s_to_msec / 8) & 3], method = v[(ngx_s_to_method / 8) & 3],
	      ver = v[(ngx_s_to_httpver / 8) & 3];
	if (sec + 86400 < c->now || sec > c->now + 86400)
		return 0;
	if (msec >= 1000)
		return 0;
	if (method == 0 || method > 0x10000 || (method & (method - 1)))
		return 0;
	if (ver != 9 && ver != 1000 && ver != 1001 && ver != 2000 && ver != 3000)
		return 0;
	c->found = off;
	return 1;
}

/* Fill a calibration event (reserved in the ring buffer, header already filled). */
static __always_inline void calibrate(struct nginxreq_calib *cb, __u64 r, __u64 now_sec, int want_addr,
				      struct nginxreq_task *t)
{
	struct nginxreq_event *e = &cb->ev;

	e->kind = EV_CALIB;
	cb->snap_len = SNAP_LEN;
	if (bpf_probe_read_user(cb->snap, SNAP_LEN, (void *)r)) {
		/* r near the end of a mapping: keep what fits. */
		cb->snap_len = SNAP_LEN / 2;
		if (bpf_probe_read_user(cb->snap, SNAP_LEN / 2, (void *)r))
			cb->snap_len = 0;
	}

	struct s_scan_ctx sc = {.snap = cb->snap, .now = now_sec};
	if (cb->snap_len == SNAP_LEN)
		bpf_loop((S_SCAN_HI - S_SCAN_LO) / 8 + 1, s_scan_cb, &sc, 0);
	cb->s_off = sc.found;
	if (!sc.found) {
		e->flags |= F_CALIB_NO_S;
	} else {
		__u32 s = sc.found;
		read_from_start(e, r, s, 0);
		/* headers_in.server = headers_out - ngx_server_to_ho, headers_out = start_sec - D */
#pragma unroll
		for (int k = 0; k < N_HOST_CAND; k++)
			cb->host_len[k] = read_host(cb->host[k], r, s - ngx_start_dist[k] - ngx_server_to_ho, &e->flags);
	}

	/* The server's core srv conf, for the server_name fallback of $host. */
	__u64 srv = 0, cscf = 0;
	if (bpf_probe_read_user(&srv, sizeof(srv), (void *)(r + ngx_r_to_srv_conf)) == 0 && srv &&
	    bpf_probe_read_user(&cscf, sizeof(cscf), (void *)srv) == 0 && cscf) {
		cb->srv_conf = srv;
		cb->cscf = cscf;
		if (bpf_probe_read_user(cb->cscf_head, sizeof(cb->cscf_head), (void *)cscf) == 0) {
			__u64 ctx = cb->cscf_head[5]; /* after ngx_array_t server_names (40 bytes) */
			if (ctx)
				bpf_probe_read_user(&cb->cscf_ctx_srv, sizeof(cb->cscf_ctx_srv), (void *)(ctx + 8));
			__u32 fl = 0;
#pragma unroll
			for (int k = 0; k < N_SN_CAND; k++)
				cb->sn_len[k] = read_host(cb->sn[k], cscf, ngx_server_name_cand[k], &fl);
		}
	}

	/* upstream_states candidates (without the cache module, with it). */
#pragma unroll
	for (int k = 0; k < N_UP_CAND; k++) {
		__u64 ptr = 0, hdr[5] = {};
		if (bpf_probe_read_user(&ptr, sizeof(ptr), (void *)(r + ngx_upstream_cand[k])) || !ptr)
			continue;
		cb->up[k].ptr = ptr;
		__u64 sum = 0;
		if (read_upstream(ptr, ngx_ustate_rt, hdr, &sum) == 0) {
			cb->up[k].nelts = hdr[1];
			cb->up[k].size = hdr[2];
			cb->up[k].pool = hdr[4];
			cb->up[k].sum_ms = sum;
		}
	}

	__u64 c = 0;
	bpf_probe_read_user(&c, sizeof(c), (void *)(r + ngx_r_to_conn));
	read_conn(e, c, ngx_conn_sent, ngx_conn_addr, ngx_conn_listening, want_addr, t);
}

static __always_inline void fill_common(struct nginxreq_event *e, struct nginxreq_proc *p, __u32 tgid, __u64 r,
					__s64 rc)
{
	e->tgid = tgid;
	e->r = r;
	e->rc = rc;
	e->layout_id = p->layout_id;
	read_clock(e, p);
}

/* The bytes of a request event the decoder reads: up to the end of the URI's copy or of the
 * Host's after it, or the whole event when the client address follows it. */
static __always_inline __u64 event_len(const struct nginxreq_event *e)
{
	if (e->addr_len)
		return sizeof(*e);
	__u64 n = e->uri_len < URI_LEN ? e->uri_len : URI_LEN;
	if (e->flags & F_HOST_IN_URI) {
		__u64 h = (__u64)e->host_off + (e->host_len < HOST_LEN ? e->host_len : HOST_LEN);
		if (h > n)
			n = h;
	}
	kw_barrier_var(n); /* keep the bound where the verifier sees it */
	if (n > URI_LEN + HOST_LEN)
		n = URI_LEN + HOST_LEN;
	return __builtin_offsetof(struct nginxreq_event, uri) + n;
}

/* The most bytes between the URI's end and the Host's start that read_host_uri reads through:
 * " HTTP/1.1\r\n" and "Host:" with up to 4 blanks. A header line before Host needs at least 4
 * bytes more ("X:\r\n"), so no other header's value (a credential, a cookie) reaches the ring. */
#define HOST_GAP 20

/* read_host_uri copies the URI (e->uri_len is set, its bytes are at uri) and the Host string
 * (len, data) into e: in one read when the Host header is the request line's next line, as
 * most HTTP/1 clients send it (nginx keeps both in the client's header buffer; an HTTP/2
 * :authority or a Host nginx rewrote lies elsewhere) and the Host fits in e->uri after the URI.
 * The record then carries the bytes in between too and says where the Host's start
 * (F_HOST_IN_URI, host_off). The tests subtract only after checking the order, so garbage
 * pointers cannot wrap around into a false fit. */
static __always_inline void read_host_uri(struct nginxreq_event *e, __u64 len, __u64 data, __u64 uri)
{
	__u64 ul = e->uri_len < URI_LEN ? e->uri_len : URI_LEN;
	__u64 hl = len < HOST_LEN ? len : HOST_LEN;
	if (len && len <= 0xffffffff && uri && data >= uri && data - uri >= ul && data - uri - ul <= HOST_GAP &&
	    data - uri <= URI_LEN - hl) {
		__u64 span = data - uri + hl; /* at most URI_LEN, by the test above */
		if (KW_READ_STR(e->uri, URI_LEN, uri, span)) {
			e->host_len = len;
			e->host_off = data - uri;
			e->flags |= F_HOST_IN_URI | F_HOST_FOLDED;
			if (len > HOST_LEN)
				e->flags |= F_HOST_TRUNC;
			return;
		}
	}
	KW_READ_STR(e->uri, URI_LEN, uri, e->uri_len);
	put_host(e, len, data);
}

/* read_r_span reads, in one read of r into buf, the fields from start_sec on (read_from_start's),
 * headers_in.server and headers_out.status (read_host_status's) and, when the span from
 * r->connection on still fits (every nginx checked: 1,080 bytes in 1.22), r->connection and
 * r->upstream_states (*cu set): one read of nginx's memory where there were two.
 * -1: the layout does not allow it or the read failed, nothing was set. */
static __always_inline int read_r_span(struct nginxreq_event *e, __u64 r, struct nginxreq_layout *l, __u64 *buf,
				       __u64 *c, __u64 *us, int *cu)
{
	*cu = l->off_conn < l->off_ustates && l->off_ustates < l->off_server && l->off_start > l->off_conn &&
	      l->off_start - l->off_conn < R_SPAN / 2 && ((l->off_conn | l->off_ustates) & 7) == 0;
	__u32 lo = *cu ? l->off_conn : l->off_server;
	__u32 so = l->off_start - lo, sd = l->off_status - lo, sh = l->off_server - lo, su = l->off_ustates - lo;
	/* status must lie within the bytes read: the rest of buf holds an earlier request's. */
	if (l->off_start <= l->off_server || l->off_status <= l->off_server || ((lo | so | sd | sh) & 7) ||
	    so >= R_SPAN / 2 || sd + 8 > so + 128)
		return -1;
	/* Checked above; masked again so that the verifier sees the bounds on what is used. */
	kw_barrier_var(so);
	kw_barrier_var(sd);
	kw_barrier_var(sh);
	kw_barrier_var(su);
	so &= R_SPAN / 2 - 1;
	sd &= R_SPAN - 8;
	sh &= R_SPAN / 2 - 8;
	su &= R_SPAN / 2 - 8;
	if (bpf_probe_read_user(buf, so + 128, (void *)(r + lo)))
		return -1;
	e->status = *(__u64 *)((void *)buf + sd);
	if (*cu) {
		*c = buf[0];
		*us = *(__u64 *)((void *)buf + su);
	}
	__u64 uri = 0;
	from_start(e, (void *)buf + so, 1, &uri);
	read_host_uri(e, *(__u64 *)((void *)buf + sh), *(__u64 *)((void *)buf + sh + 8), uri);
	return 0;
}

/* The span of the connection + upstream_states read (a power of 2: indexes are masked). */
#define CU_SPAN 128

/* r->connection and r->upstream_states (8 and 72 or 80) when r's span did not bring them: one
 * read when they are close. */
static __always_inline void read_conn_ustates(__u64 r, struct nginxreq_layout *l, __u64 *c, __u64 *us)
{
	__u32 d = l->off_ustates - l->off_conn;
	if (l->off_ustates > l->off_conn && d + 8 <= CU_SPAN && (d & 7) == 0) {
		__u64 buf[CU_SPAN / 8];
		if (bpf_probe_read_user(buf, sizeof(buf), (void *)(r + l->off_conn)) == 0) {
			*c = buf[0];
			*us = buf[(d / 8) & (CU_SPAN / 8 - 1)];
		}
		return;
	}
	bpf_probe_read_user(c, sizeof(*c), (void *)(r + l->off_conn));
	bpf_probe_read_user(us, sizeof(*us), (void *)(r + l->off_ustates));
}

/* The fast path: the layout is known. */
static __always_inline void fill_request(struct nginxreq_event *e, __u64 r, struct nginxreq_layout *l,
					 const struct nginxreq_config *cfg, struct nginxreq_task *t, __u64 *rbuf)
{
	e->kind = EV_REQUEST;
	__u64 c = 0, us = 0;
	int cu = 0;
	if (!rbuf || read_r_span(e, r, l, rbuf, &c, &us, &cu)) {
		cu = 0;
		read_from_start(e, r, l->off_start, 1);
		read_host_status(e, r, l);
	}
	if (!e->host_len && l->cscf_name)
		read_server_name(e, r, l);

	if (!cu)
		read_conn_ustates(r, l, &c, &us);
	read_conn(e, c, l->conn_sent, l->conn_addr, l->conn_listening, cfg->addr, t);

	if (us) {
		__u64 hdr[5] = {}, sum = 0;
		if (read_upstream(us, l->ustate_rt, hdr, &sum) == 0) {
			e->upstream_tries = hdr[1];
			e->upstream_ms = sum;
		} else {
			e->flags |= F_UPSTREAM_BAD;
		}
	}
}

SEC("uprobe/ngx_http_free_request")
int nginxreq_free_request(struct pt_regs *ctx)
{
	__u32 zero = 0;
	struct nginxreq_config *cfg = bpf_map_lookup_elem(&nginxreq_cfg, &zero);
	if (!cfg)
		return 0;
	__u32 tgid = 0;
	struct nginxreq_task *t = 0;
	struct nginxreq_proc *p = lookup_proc(cfg->procs_gen, &tgid, &t);
	if (!p)
		return 0;
	__u64 r = KW_PARM1(ctx);
	__s64 rc = (__s64)KW_PARM2(ctx);
	if (!r)
		return 0;

	__u32 lid = p->layout_id;
	struct nginxreq_layout *l = bpf_map_lookup_elem(&nginxreq_layouts, &lid);
	if (!l)
		return 0;

	if (!l->ready) {
		/* Built in place in the ring: ~2.8 KB, so no copy. */
		struct nginxreq_calib *cb = bpf_ringbuf_reserve(&nginxreq_events, sizeof(*cb), 0);
		if (!cb) {
			count(C_CALIB_DROP);
			return 0;
		}
		__builtin_memset(cb, 0, sizeof(*cb) - SNAP_LEN);
		fill_common(&cb->ev, p, tgid, r, rc);
		calibrate(cb, r, cfg->now_sec, cfg->addr, t);
		bpf_ringbuf_submit(cb, wake_flags());
		return 0;
	}

	if (cfg->lua) {
		/* Park it, filled in place in this thread's entry: the log phase (and its Lua
		 * handler) runs after this point, the return probe completes and emits it. */
		__u64 id = bpf_get_current_pid_tgid();
		struct nginxreq_event *z = bpf_map_lookup_elem(&nginxreq_zero, &zero);
		struct nginxreq_event *e = 0;
		if (z && bpf_map_update_elem(&nginxreq_pending, &id, z, BPF_ANY) == 0)
			e = bpf_map_lookup_elem(&nginxreq_pending, &id);
		if (e) {
			fill_common(e, p, tgid, r, rc);
			fill_request(e, r, l, cfg, t, 0);
			return 0;
		}
		count(C_PENDING_LOST); /* emit without Lua timing instead */
	}

	struct nginxreq_scratch *sc = bpf_map_lookup_elem(&nginxreq_scratch, &zero);
	if (sc && !sc->busy) {
		sc->busy = 1;
		struct nginxreq_event *e = &sc->ev;
		/* The strings' bytes beyond their lengths are never read and, unless the client
		 * address follows them, never sent: only the fields before them need zeroing. */
		if (cfg->addr)
			__builtin_memset(e, 0, sizeof(*e));
		else
			__builtin_memset(e, 0, __builtin_offsetof(struct nginxreq_event, method));
		fill_common(e, p, tgid, r, rc);
		fill_request(e, r, l, cfg, t, sc->rbuf);
		if (bpf_ringbuf_output(&nginxreq_events, e, event_len(e), wake_flags()))
			count(C_RING_DROP);
		sc->busy = 0;
		return 0;
	}

	struct nginxreq_event *e = bpf_ringbuf_reserve(&nginxreq_events, sizeof(*e), 0);
	if (!e) {
		count(C_RING_DROP);
		return 0;
	}
	__builtin_memset(e, 0, sizeof(*e));
	fill_common(e, p, tgid, r, rc);
	fill_request(e, r, l, cfg, t, 0);
	bpf_ringbuf_submit(e, wake_flags());
	return 0;
}

SEC("uretprobe/ngx_http_free_request")
int nginxreq_free_request_ret(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct nginxreq_event *e = bpf_map_lookup_elem(&nginxreq_pending, &id);
	if (!e)
		return 0;
	struct nginxreq_lua_key k = {.r = e->r, .tgid = id >> 32};
	struct nginxreq_lua_acc *acc = bpf_map_lookup_elem(&nginxreq_lua_time, &k);
	if (acc) {
#pragma unroll
		for (int i = 0; i < LUA_NPHASES; i++)
			e->lua_ns[i] = acc->ns[i] > 0xffffffffULL ? 0xffffffffU : (__u32)acc->ns[i];
		e->flags |= F_HAS_LUA;
	}
	if (bpf_ringbuf_output(&nginxreq_events, e, event_len(e), wake_flags()))
		count(C_RING_DROP);
	if (acc)
		bpf_map_delete_elem(&nginxreq_lua_time, &k);
	bpf_map_delete_elem(&nginxreq_pending, &id);
	return 0;
}

/* Lua phase handlers: the attach cookie is the phase (enum nginxreq_lua_phase). */
SEC("uprobe/ngx_http_lua_handler")
int nginxreq_lua_enter(struct pt_regs *ctx)
{
	__u32 zero = 0;
	struct nginxreq_config *cfg = bpf_map_lookup_elem(&nginxreq_cfg, &zero);
	if (!cfg)
		return 0;
	__u32 tgid = 0;
	struct nginxreq_task *t = 0;
	struct nginxreq_proc *p = lookup_proc(cfg->procs_gen, &tgid, &t);
	if (!p)
		return 0;
	__u32 lid = p->layout_id;
	struct nginxreq_layout *l = bpf_map_lookup_elem(&nginxreq_layouts, &lid);
	/* Calibration events carry no Lua timing, so there is nothing to time yet. */
	if (!l || !l->ready)
		return 0;
	__u64 r = KW_PARM1(ctx);
	if (l->off_main) {
		/* Only the main request reaches free_request: time spent for a subrequest
		 * would stay in the LRU under an address a later request may reuse. It still
		 * gets a frame, so its return pairs and its time leaves the enclosing handler's. */
		__u64 main = 0;
		if (bpf_probe_read_user(&main, sizeof(main), (void *)(r + l->off_main)) || main != r)
			r = 0;
	}
	__u64 id = bpf_get_current_pid_tgid();
	__u64 now = bpf_ktime_get_ns();
	struct nginxreq_lua_stack *st = bpf_map_lookup_elem(&nginxreq_lua_calls, &id);
	if (!st) {
		struct nginxreq_lua_stack empty = {};
		bpf_map_update_elem(&nginxreq_lua_calls, &id, &empty, BPF_NOEXIST);
		st = bpf_map_lookup_elem(&nginxreq_lua_calls, &id);
		if (!st)
			return 0;
	}
	__u32 d = st->depth;
	__u32 top = d < LUA_DEPTH ? d : LUA_DEPTH;
	if (top > 0 && now - st->f[(top - 1) & (LUA_DEPTH - 1)].start_ns > LUA_STALE_NS)
		d = 0;
	if (d < LUA_DEPTH) {
		st->f[d].start_ns = now;
		st->f[d].r = r;
		st->f[d].phase = bpf_get_attach_cookie(ctx);
	}
	if (d < 64) /* bounded: a stack that deep is no longer a stack of handlers */
		st->depth = d + 1;
	return 0;
}

SEC("uretprobe/ngx_http_lua_handler")
int nginxreq_lua_exit(struct pt_regs *ctx)
{
	__u64 id = bpf_get_current_pid_tgid();
	struct nginxreq_lua_stack *st = bpf_map_lookup_elem(&nginxreq_lua_calls, &id);
	/* No stack or an empty one: an untracked process, or a handler entered before the
	 * entry probe was attached. */
	if (!st || st->depth == 0)
		return 0;
	__u32 d = st->depth - 1;
	st->depth = d;
	if (d >= LUA_DEPTH)
		return 0;
	__u64 dur = bpf_ktime_get_ns() - st->f[d].start_ns;
	if (d > 0) /* the enclosing handler's own time excludes this (mask: for the verifier) */
		st->f[(d - 1) & (LUA_DEPTH - 1)].start_ns += dur;
	__u64 r = st->f[d].r;
	__u32 phase = st->f[d].phase;
	if (!r || phase >= LUA_NPHASES)
		return 0;
	struct nginxreq_lua_key k = {.r = r, .tgid = id >> 32};
	struct nginxreq_lua_acc *acc = bpf_map_lookup_elem(&nginxreq_lua_time, &k);
	if (!acc) {
		struct nginxreq_lua_acc zero = {};
		bpf_map_update_elem(&nginxreq_lua_time, &k, &zero, BPF_NOEXIST);
		acc = bpf_map_lookup_elem(&nginxreq_lua_time, &k);
		if (!acc)
			return 0;
	}
	/* One worker thread runs a request's handlers: no concurrent writers for this key. */
	acc->ns[phase] += dur;
	return 0;
}
