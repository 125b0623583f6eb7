// Package wire is the agent's fallback data path. When nginx's request object cannot be
// read (agent/probes could not learn its offsets, or the symbols are missing), it captures
// what the gateway's workers read from and write to their sockets and TLS sessions, and
// parses HTTP/1.x from those bytes in user space.
//
// # Kernel side (bpf/wire.c)
//
// Probes on libc recv, send, writev, sendfile and close, and on OpenSSL SSL_read, SSL_write
// and SSL_free (libssl, when the gateway maps it and Options.TLS is set). nginx reads
// requests with recv, writes responses with writev (send for single buffers, sendfile for
// static files); over TLS it calls SSL_read/SSL_write, whose encrypted read/write underneath
// are not probed at all. The access log's write is not probed either.
//
// Every probe sits on an instruction the kernel emulates (~1 us a hit) instead of the
// function's first one, which is single-stepped (~15 us): agent/insn finds it (recv+10,
// writev+7, close+7 on Debian 12's glibc) and checks that no instruction before it changes an
// argument register or rsp. A uretprobe shares that site (it needs rsp untouched). OpenSSL's
// SSL_read/SSL_write move rsp first, so their arguments are read a little later (+22) and
// their return value at the stack-protector check before the only ret (+56), a plain
// emulated uprobe (insn.ReturnSite). Only sendfile (mov, mov, syscall) stays single-stepped.
//
// Entry probes filter by process in the kernel: bpf_get_ns_current_pid_tgid in the agent's PID
// namespace, looked up in a PID set (the probes live in shared libraries and fire in every
// process using them). Arguments of a call in flight are kept per thread; at return, up to
// 8 events of 1 KiB captured bytes each are written per buffer (per iovec for writev), with
// the byte count from the return value: user space frames bodies by counts, so uncaptured
// bytes cost nothing. Each event is built in the ring record it reserves (32 bytes of header
// alone, or with room for 256 or 1024 captured bytes), never in a per-CPU buffer: uprobe
// programs are preemptible, and another run on the same CPU would overwrite it. Reads are
// stamped at return, writes at entry. The ring buffer is woken only past 1/16 of its size;
// the reader polls every 20 ms.
//
// # User space (Parser)
//
// Each ring record is checked before it is parsed (decodeEvent): one the kernel side cannot
// have written (short, oversized, fields out of range) is skipped and counted in
// Status.BadRecords, with a log line at most every 10 s.
//
// One parser per connection, keyed by (pid, fd) or (pid, SSL*): request heads are queued
// (pipelining), response heads paired in order; bodies are skipped by Content-Length or
// chunked framing (HEAD, 1xx, 204, 304 have none; a response without length ends at close).
// An exchange ends when the response is written and the request body read, and the last one
// of a connection (Connection: close, HTTP/1.0) when the connection closes: that is when
// nginx logs, so Latency matches $request_time. Heads nginx rejects before they are complete
// (400, 414) are reported from what was read. A PROXY protocol v1/v2 header is skipped.
// Host (as nginx's $host: no port, lower case) and URI ($request_uri) are cut at
// model.MaxHostLen and model.MaxURILen bytes and the cut flagged, exactly as the
// request-object path keeps them, so both paths report a long value the same way.
//
// Connections are classified by their first bytes: a request read = a client connection; a
// request written or a response read = an upstream connection (proxy_pass), parsed the other
// way round for Request.Upstream: from the upstream request written to its response read
// (nginx also counts the connect, which the wire does not see). It is attributed to the next
// response head the same worker writes to a client after reading the upstream's head: nginx
// relays a response in the handler that reads it (a Lua cosocket call-out right before a
// response is indistinguishable and counts too). The
// HTTP/2 preface = an HTTP/2 connection, counted in ParserStats.H2Conns and logged, never
// parsed (HPACK is out of scope); anything else (DNS, databases) = not HTTP, ignored. Garbage
// or lost framing on a client connection resets its parser (ParseErrors) until a captured
// chunk starts a new message.
//
// # Memory
//
// What the parser holds is bounded whatever clients send: at most MaxConns connections
// (16384, least recently used evicted) of ~0.6 KiB fixed state each, plus MaxBuffered bytes
// (8 MiB) for all of them together, so under 20 MiB at the defaults: heads and chunk lines arriving in pieces (a head that
// arrives whole is parsed in place and never copied; a buffer grows with what arrived, up to
// 32 KiB a head), requests waiting for their responses (64 at most a connection, Host and URI
// cut as above) and upstream exchanges in flight. ParserStats.Buffered is that total. Past
// the budget, the connections that have held bytes the longest are given up first (a slowloris
// client's head ages, a real one completes within milliseconds): a partial head is dropped
// and its connection resynchronises at its next message, or, with requests in flight whose
// responses could no longer be paired, the connection is ignored until it closes (OverBudget,
// Lost; logged at most every 10 s). Every second, heads still incomplete after 5 minutes are
// given up the same way (HeadTimeouts; nginx closes them after client_header_timeout first,
// this frees what a lost close event leaves) and HTTP/1 connections idle for 10 minutes
// between messages are forgotten (Reclaimed; nothing is lost). With 10,000 slowloris
// connections trickling 7 KiB heads, the tracer's Go heap grows by ~15 MiB.
//
// # Not covered
//
//   - HTTP/2 (and HTTP/3) requests: counted as connections only.
//   - The client address is not filled in; Upstream is one try (the last), not a sum.
//   - Reads through read/readv (nginx uses recv) and writes through write (nginx uses
//     writev/send) are not seen.
package wire
