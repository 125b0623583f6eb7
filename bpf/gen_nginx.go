// Package bpf holds kong-watcher's eBPF programs and the Go bindings bpf2go generates for
// them. The generated objects are committed so building the agent needs no clang.
package bpf

// nginxReq: the per-request probe on ngx_http_free_request (plus optional Lua phase timing).
// Loaded and attached by agent/probes.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target amd64 -type nginxreq_event -type nginxreq_calib -type nginxreq_layout -type nginxreq_proc -type nginxreq_config -type nginxreq_upcand -type nginxreq_lua_phase -type nginxreq_kind -type nginxreq_flag -type nginxreq_counter NginxReq nginxreq.c -- -I.
