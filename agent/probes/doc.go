// Package probes loads kong-watcher's nginx eBPF program (bpf/nginxreq.c), attaches it to the
// nginx executables of the gateways discovery finds, keeps the in-kernel process filter up
// to date, learns each binary's ngx_http_request_t layout (agent/nginxlayout) and turns ring
// buffer events into model.Requests.
//
// # Data path
//
// One uprobe hit per request, on ngx_http_free_request(r, rc) (first instruction `push`, so
// the kernel emulates it instead of single-stepping). At that point nginx has not yet written
// its access log nor destroyed r's pool, so the program reads from r exactly what the log
// would show: method_name, unparsed_uri ($request_uri), headers_in.server ($host),
// headers_out.status (+ nginx's own "rc > 0 && (status == 0 || sent == 0)" rule, applied in
// user space), start_sec/start_msec and nginx's cached clock (ngx_cached_time, resolved per
// process from the ELF symbol + load base) for $request_time to the millisecond,
// upstream_states (response_time summed over up to 4 tries, stride = the array's own
// element size) for $upstream_response_time, connection->sent ($bytes_sent; the HTTP/2
// stream's fake connection carries the stream's bytes) and connection->addr_text. Each
// request becomes one event in a BPF ring buffer, cut after its Host's bytes: they follow the
// URI's in the URI's buffer, read with them when an HTTP/1 request's Host header is the
// request line's next line, or put right after them (after a long URI it runs on into the
// Host's buffer, which follows the URI's); the client address follows only when it was read.
// Wake-ups are batched (BPF_RB_NO_WAKEUP until a quarter of the ring is full) and Run polls
// every 150 ms (every 500 ms after 2 s without a record: kernel.IdlePoll).
// Lost events (ring full) are counted per CPU and reported in Status.Dropped.
//
// Processes are filtered in the kernel by the PID the agent sees: bpf_get_ns_current_pid_tgid
// with the agent's own PID namespace (dev, ino set as load-time constants), once per process:
// the PID and a copy of the process's filter entry are kept in its thread group leader's task
// storage, the copy used while the config's procs_gen is unchanged (SetPIDs and Untrack move
// it), so a request looks up no hash map. When the agent runs in the initial namespace and
// nginx in a container, the helper cannot match and the program falls back to global PIDs
// (what such an agent sees in /proc).
//
// New workers are not lost while user space has not listed them yet (nginx forks them at
// start, on reload and to replace a crashed one; discovery scans /proc once a second): the
// filter also holds each gateway's master (it serves no requests in master/worker mode), and
// on a filter miss the program looks at the process's parent (task_struct through CO-RE,
// bpf/headers/task.h): the real parent's thread group leader's PID at the agent's namespace
// level (the current task's own level, since the helper matched; the namespace is checked),
// or its global tgid in the fallback mode. If that is a tracked master, the event is
// accepted with the master's entry (same binary and address space layout, so the same
// ngx_cached_time address) and the process is added to the filter in the kernel
// (BPF_NOEXIST), so its next requests take the fast path; Status.AdoptedPIDs counts these.
// Only a master's entry adopts (its value names itself as master), so processes forked by
// workers (Lua's os.execute) are not. The next SetPIDs keeps adopted entries of live
// children of the master, removes those of processes that are gone, never removes the
// master; Untrack removes them all. A worker dropped from SetPIDs while still running is
// therefore adopted again at its next request.
//
// # Layout learning
//
// Offsets in ngx_http_request_t move with nginx version and build options and Kong's binary
// has no debug info. Until a binary's layout is known its requests are sent as calibration
// events: a 2 KB snapshot of r, plus what the BPF program can find without the layout
// (start_sec by a bounded scan for a plausible time/msec/method-bit/version run, the strings
// at fixed distances from it, headers_in.server at the three known distances, the
// upstream_states candidates at 72 and 80, the server's core srv conf for the server_name
// fallback of $host, see Decisions). agent/nginxlayout finds headers_out (its two
// ngx_list_t, headers then trailers, on r's pool), start_sec at a known distance from it and
// upstream_states next to r->pool, and needs 5 agreeing requests (80% majority) with
// plausible values. Calibration events are decoded too, so no request is lost while
// learning. After the switch the first 64 fast-path events are checked again; if most are
// implausible the binary goes back to calibration. If no layout is found within 200 requests
// the binary is detached, Status reports Mode "failed" with the reason, and Failed lists the
// gateways that run it (the agent follows those, and only those, on the wire data path).
//
// # Decisions
//
//   - Host: exactly nginx's $host. headers_in.server, lower-cased by nginx, without port;
//     when that is empty (HTTP/1.0 without Host, a 400 on the request line) $host is the
//     server_name of the server that handled the request, and so is Host:
//     ((ngx_http_core_srv_conf_t *) r->srv_conf[0])->server_name (srv_conf at r+32 in every
//     version, ngx_http_core_module is HTTP module 0). nginx stores it lower-cased, without
//     a leading dot, at config time; the agent copies it as is (event flag
//     F_HOST_SERVER_NAME). Its offset in the struct moved (48 in old nginx, 64 once file_name
//     and line were added, as in Debian 1.22.1), so calibration events also carry r->srv_conf,
//     the first 96 bytes of the core srv conf, cscf->ctx->srv_conf and the strings at both
//     candidates; nginxlayout.ServerName accepts an offset only if ctx->srv_conf points back
//     to r->srv_conf, server_names looks like an array of ngx_http_server_name_t and the
//     neighbouring fields fit, and the learner needs 3 samples and an 80% majority for it,
//     separately from the request layout. Without it the fallback stays off (Host "").
//     The extra reads (srv_conf, cscf, the string) happen only when headers_in.server is
//     empty, so requests with a Host cost nothing more.
//   - URI: the first 160 bytes of $request_uri (longer ones are truncated).
//   - $status: r->err_status did not need handling: nginx copies it into headers_out.status
//     when it sends the header; 404 through error_page, 499, 502 and 400 all match the access
//     log (TestAgainstAccessLog).
//   - free_request calls that were no client request (no request line, no status, nothing
//     sent: TLS certificate evaluation, failed HTTP/2 stream setup) are not reported; they
//     are counted in Status.Ignored. nginx does not log them either.
//   - Lua phases (Options.LuaPhases): uprobe + uretprobe on the lua module's function that
//     runs each phase's code (luaHandlers: ngx_http_lua_{rewrite,access,content,log}_handler,
//     and ngx_http_lua_{header_filter,body_filter,balancer_handler}_{inline,file}, exported,
//     so found in stripped builds; in the executable for OpenResty/Kong, else in a mapped
//     *lua* module), the phase in the attach cookie, paired on a per-thread stack (4 deep)
//     that takes a nested call's time out of its caller's (the header filter runs inside an
//     access handler that answers with ngx.say/ngx.exit), and summed per request keyed by
//     (tgid, r). A phase is counted in the requests where its handler ran. The log phase
//     runs inside free_request, after the entry probe, so in this mode the event is parked
//     per thread and a uretprobe on free_request completes it. The time is the handlers'
//     own: rewrite/access re-entries after a yield are summed, but content-phase code resumed
//     after a yield (ngx.sleep, cosockets) runs from another handler and is not included.
//     Only main requests are timed (r->main == r, at start_sec+168, used only once every
//     calibration sample confirmed it), and only once the layout is known: calibration
//     events carry no Lua timing. Cost: 2 probe hits per Lua handler call and one uretprobe
//     per request; SetLuaPhases switches it at run time without losing requests.
//   - request_length is not read (model.Request has no field for it).
//
// # Measured (Debian nginx 1.22.1 + lua module, kernel 6.18, 2 vCPUs shared with other work)
//
// Against the access log of a real nginx: every line matched (method, host, URI, status,
// latency in exact ms, upstream ms, bytes, protocol, client address, worker PID) for
// HTTP/1.0, HTTP/1.1 keep-alive, HTTP/2 over TLS, HEAD, POST, 400, 404 via error_page, 499,
// 502, proxied requests, in the agent's own child PID namespace, and with only CAP_BPF,
// CAP_PERFMON and CAP_SYS_PTRACE. Learnt layout = the offsets read under a debugger for that build.
// Cost (TestThroughput, KW_BENCH=1; wrk -t1 -c20 -d5s on `return 200`, 3 alternating
// rounds, medians). Other tenants kept the load average at 20-37, so req/s ratios were noise
// (the probed runs were sometimes faster than the bare one); the nginx workers' CPU time per
// request is the number to read. Two runs: no probes 16.9 / 18.4 us per request; the
// nginxreq probe 24.7 / 20.8 us; with Lua phase probes 43.3 / 31.8 us; an empty BPF program
// on ngx_http_free_request 23.1 / 22.7 us (the bare uprobe trap costs several us on this
// loaded VM; 0.5-1.3 us was measured on a quieter one). Time inside the BPF programs
// (kernel.bpf_stats): free_request 0.9-1.5 us, free_request return 0.7-1.1 us, Lua handler
// entry 0.55-0.75 us, exit 0.4-0.6 us. In that config each request runs one Lua handler
// (the log handler, registered globally once any location has log_by_lua), so Lua timing
// adds 3 probe hits per request; Kong runs handlers in every phase, so expect more there.
// Lua phase timing is worth duty-cycling (SetLuaPhases).
package probes
