package bpf

// Wire: the wire-level fallback (libc socket I/O + OpenSSL) parsed as HTTP/1 in user space.
// Loaded and attached by agent/wire, which uses the generated enums (wire.c puts them in BTF).
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu" -target amd64 -type wire_event_hdr -type wire_event -type wire_call -type wire_fn -type wire_kind -type wire_dir -type wire_stat Wire wire.c -- -I.
