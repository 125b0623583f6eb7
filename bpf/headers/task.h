/* The few kernel task fields nginxreq reads to find a process's parent and its thread group
 * leader (whose task storage holds the process's entry), as CO-RE
 * (preserve_access_index) declarations: libbpf/cilium relocate the offsets against the running
 * kernel's BTF (/sys/kernel/btf/vmlinux) at load time, so no vmlinux.h is needed. Only the
 * fields used are declared; names and types are the kernel's (checked against 6.18's BTF:
 * bpftool btf dump file /sys/kernel/btf/vmlinux format c). */
#ifndef KW_TASK_H
#define KW_TASK_H

#include <bpf/bpf_core_read.h>

struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct pid_namespace {
	struct ns_common ns;
} __attribute__((preserve_access_index));

struct upid {
	int nr;
	struct pid_namespace *ns;
} __attribute__((preserve_access_index));

struct pid {
	unsigned int level;
	struct upid numbers[1]; /* numbers[level + 1] in the kernel */
} __attribute__((preserve_access_index));

struct task_struct {
	int tgid;
	struct task_struct *real_parent;
	struct task_struct *group_leader;
	struct pid *thread_pid;
} __attribute__((preserve_access_index));

#endif
