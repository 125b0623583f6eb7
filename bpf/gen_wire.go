package bpf

// Wire: the wire-level fallback (libc socket I/O + OpenSSL) parsed as HTTP/1 in user space.
// Loaded and attached by agent/wire. The wire_fn/wire_stat enum values are mirrored by
// hand in agent/wire (enums no type refers to do not reach BTF).
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target amd64 -type wire_event_hdr -type wire_call Wire wire.c -- -I.
