/* Shared helpers for kong-watcher's eBPF programs.
 *
 * We deliberately avoid vmlinux.h: the programs mostly read user memory (nginx's structs, whose
 * layout is learnt at run time, not known from BTF) and the uprobe register context, so the
 * UAPI <linux/bpf.h> plus libbpf's helper declarations are all we need; the few kernel fields
 * nginxreq reads (a task's parent) are declared for CO-RE in task.h. Regenerating needs
 * linux-libc-dev and libbpf-dev (see hack/install-deps.sh); building the Go package does not,
 * because the generated objects are committed.
 */
#ifndef KW_COMMON_H
#define KW_COMMON_H

#include <linux/types.h>
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

/* The uprobe context is the kernel's struct pt_regs. Only x86-64 is built today; the field
 * order below is the kernel's (arch/x86/include/asm/ptrace.h), which is what the BPF context
 * really is, not the UAPI user_regs_struct. */
#if defined(__TARGET_ARCH_x86)
struct pt_regs {
	unsigned long r15, r14, r13, r12, bp, bx, r11, r10, r9, r8;
	unsigned long ax, cx, dx, si, di, orig_ax, ip, cs, flags, sp, ss;
};
#define KW_PARM1(ctx) ((ctx)->di)
#define KW_PARM2(ctx) ((ctx)->si)
#define KW_RC(ctx) ((ctx)->ax)
#else
#error "kong-watcher's eBPF programs are only written for x86-64 (bpf2go -target amd64)"
#endif

/* Keep the verifier's knowledge of a bound after clang has moved a value between registers. */
#define kw_barrier_var(var) asm volatile("" : "+r"(var))

/* Read a length-prefixed string (nginx's ngx_str_t data) into a fixed buffer of cap bytes.
 * Returns the number of bytes copied (0 on fault). cap must be a compile-time constant. */
#define KW_READ_STR(dst, cap, src, len)                                                 \
	({                                                                                  \
		__u32 __n = (len) > (cap) ? (cap) : (__u32)(len);                             \
		kw_barrier_var(__n);                                                          \
		if (__n > (cap))                                                              \
			__n = (cap);                                                          \
		long __e = __n ? bpf_probe_read_user((dst), __n, (const void *)(src)) : 0;     \
		__e ? 0 : __n;                                                                \
	})

#endif
