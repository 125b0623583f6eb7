// Package insn finds where a uprobe on an x86-64 function is cheap.
//
// The kernel runs the instruction under a uprobe's breakpoint either by emulating it (a few
// instruction kinds: push reg, nop, jmp/jcc rel, call rel32) or by single-stepping a copy of
// it out of line, which costs ~15 us per hit in our VMs against ~1 us for an emulated one
// (measured on the development VMs, docs/design.md). glibc's recv/write/writev start with a RIP-relative cmpb that must be
// single-stepped; a few bytes further is a je that is emulated. Putting the probe there is
// only correct if no instruction before it changes what the probe reads: the argument
// registers and, for a uretprobe (which hijacks the return address at [rsp]), rsp itself.
package insn

import (
	"debug/elf"
	"errors"
	"fmt"

	"golang.org/x/arch/x86/x86asm"
)

// Reg is a 64-bit general purpose register, as a bit in a RegSet.
type Reg uint8

const (
	RAX Reg = iota
	RCX
	RDX
	RBX
	RSP
	RBP
	RSI
	RDI
	R8
	R9
	R10
	R11
	R12
	R13
	R14
	R15
	numRegs
)

var regNames = [numRegs]string{"rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"}

func (r Reg) String() string {
	if r < numRegs {
		return regNames[r]
	}
	return fmt.Sprintf("reg%d", r)
}

// RegSet is a set of registers.
type RegSet uint16

// Of builds a RegSet.
func Of(regs ...Reg) RegSet {
	var s RegSet
	for _, r := range regs {
		s |= 1 << r
	}
	return s
}

// Has reports whether r is in s.
func (s RegSet) Has(r Reg) bool { return s&(1<<r) != 0 }

// Args returns the System V argument registers of the first n integer arguments, plus rsp
// when stack is true (needed by a uretprobe at that point, and by anything reading
// stack-passed arguments).
func Args(n int, stack bool) RegSet {
	order := []Reg{RDI, RSI, RDX, RCX, R8, R9}
	var s RegSet
	for i := 0; i < n && i < len(order); i++ {
		s |= 1 << order[i]
	}
	if stack {
		s |= 1 << RSP
	}
	return s
}

// Site is a probe location inside a function.
type Site struct {
	// Offset from the function's first byte.
	Offset uint64
	// Emulated is true when the kernel emulates the instruction at Offset (cheap); false
	// when the search failed and Offset is 0, where the probe is single-stepped.
	Emulated bool
	// Insn is the instruction at Offset in GNU syntax, for logs.
	Insn string
}

// MaxScan bounds how far into a function the search goes: a prologue, not the body.
const MaxScan = 64

// ErrNotFound is returned (wrapped) when no emulated instruction precedes a write to a
// preserved register or an instruction the analysis does not understand.
var ErrNotFound = errors.New("no emulated instruction before the preserved registers change")

// FirstEmulated returns the first instruction in code (a function's first bytes) that the
// kernel emulates, provided no instruction before it may write a register in preserve.
// Instructions whose register effects are not modelled stop the search (conservative).
// On failure it returns Site{Offset: 0} with the reason.
func FirstEmulated(code []byte, preserve RegSet) (Site, error) {
	off := 0
	for off < len(code) && off < MaxScan {
		if len(code)-off >= 4 && isEndbr(code[off:off+4]) { // x86asm does not know endbr64; it writes nothing
			off += 4
			continue
		}
		inst, err := x86asm.Decode(code[off:], 64)
		if err != nil {
			return Site{}, fmt.Errorf("%w: decode at +%d: %v", ErrNotFound, off, err)
		}
		if Emulated(code[off : off+inst.Len]) {
			return Site{Offset: uint64(off), Emulated: true, Insn: x86asm.GNUSyntax(inst, uint64(off), nil)}, nil
		}
		w, ok := Writes(inst)
		if !ok {
			return Site{}, fmt.Errorf("%w: +%d %s not modelled", ErrNotFound, off, x86asm.GNUSyntax(inst, uint64(off), nil))
		}
		if w&preserve != 0 {
			return Site{}, fmt.Errorf("%w: +%d %s writes a preserved register", ErrNotFound, off, x86asm.GNUSyntax(inst, uint64(off), nil))
		}
		off += inst.Len
	}
	return Site{}, fmt.Errorf("%w within %d bytes", ErrNotFound, MaxScan)
}

func isEndbr(b []byte) bool {
	return len(b) == 4 && b[0] == 0xf3 && b[1] == 0x0f && b[2] == 0x1e && (b[3] == 0xfa || b[3] == 0xfb)
}

func isLegacyPrefix(b byte) bool {
	switch b {
	case 0x66, 0x67, 0xf0, 0xf2, 0xf3, 0x2e, 0x3e, 0x26, 0x36, 0x64, 0x65:
		return true
	}
	return false
}

// Emulated reports whether the kernel (x86 arch_uprobe_analyze_insn: branch_setup_xol_ops,
// push_setup_xol_ops, and the nop emulation of recent kernels) emulates the instruction
// encoded by b rather than single-stepping it. It mirrors the kernel's byte-level checks.
func Emulated(b []byte) bool {
	i := 0
	has66 := false
	for i < len(b) && isLegacyPrefix(b[i]) {
		if b[i] == 0x66 {
			has66 = true
		}
		if b[i] == 0xf3 && i+1 < len(b) && b[i+1] == 0x90 {
			return false // pause, not nop
		}
		i++
	}
	nLegacy := i
	rex := byte(0)
	if i < len(b) && b[i]&0xf0 == 0x40 {
		rex = b[i]
		i++
	}
	if i >= len(b) {
		return false
	}
	op := b[i]
	switch {
	case op == 0x90 && rex&0x01 == 0: // nop (prefixes allowed); REX.B 0x90 is xchg r8,rax
		return true
	case op >= 0x50 && op <= 0x57: // push reg: the kernel accepts no prefix or exactly REX.B (0x41)
		return nLegacy == 0 && (rex == 0 || rex == 0x41)
	case op == 0xeb || op == 0xe9 || op == 0xe8 || (op >= 0x70 && op <= 0x7f):
		return !has66 // 16-bit operand branches are refused
	case op == 0x0f && i+1 < len(b):
		op2 := b[i+1]
		if op2 >= 0x80 && op2 <= 0x8f {
			return !has66
		}
		if op2 == 0x1f { // multi-byte nop (nopl/nopw), emulated since the nop5 uprobe work
			return true
		}
	}
	return false
}

// full maps any sub-register of a general purpose register to its 64-bit register.
func full(r x86asm.Reg) (Reg, bool) {
	switch {
	case r >= x86asm.AL && r <= x86asm.BL:
		return [...]Reg{RAX, RCX, RDX, RBX}[r-x86asm.AL], true
	case r >= x86asm.AH && r <= x86asm.BH:
		return [...]Reg{RAX, RCX, RDX, RBX}[r-x86asm.AH], true
	case r >= x86asm.SPB && r <= x86asm.R15B:
		return Reg(4 + int(r-x86asm.SPB)), true
	case r >= x86asm.AX && r <= x86asm.R15W:
		return Reg(r - x86asm.AX), true
	case r >= x86asm.EAX && r <= x86asm.R15L:
		return Reg(r - x86asm.EAX), true
	case r >= x86asm.RAX && r <= x86asm.R15:
		return Reg(r - x86asm.RAX), true
	}
	return 0, false
}

// Writes returns the general purpose registers inst may write, and false if inst is not
// modelled (the caller must then assume it writes everything).
func Writes(inst x86asm.Inst) (RegSet, bool) {
	dst := func() RegSet {
		if r, ok := inst.Args[0].(x86asm.Reg); ok {
			if g, ok := full(r); ok {
				return 1 << g
			}
			return 0 // vector/segment register: not a GPR
		}
		return 0 // memory destination
	}
	switch inst.Op {
	case x86asm.NOP, x86asm.CMP, x86asm.TEST, x86asm.BT,
		x86asm.PREFETCHT0, x86asm.PREFETCHT1, x86asm.PREFETCHT2, x86asm.PREFETCHNTA:
		return 0, true
	case x86asm.PUSH:
		return Of(RSP), true
	case x86asm.POP:
		return Of(RSP) | dst(), true
	case x86asm.MOV, x86asm.MOVZX, x86asm.MOVSX, x86asm.MOVSXD, x86asm.LEA,
		x86asm.ADD, x86asm.SUB, x86asm.AND, x86asm.OR, x86asm.XOR, x86asm.ADC, x86asm.SBB,
		x86asm.INC, x86asm.DEC, x86asm.NEG, x86asm.NOT, x86asm.SHL, x86asm.SHR, x86asm.SAR,
		x86asm.ROL, x86asm.ROR, x86asm.IMUL, x86asm.BSWAP,
		x86asm.SETE, x86asm.SETNE, x86asm.SETL, x86asm.SETLE, x86asm.SETG, x86asm.SETGE,
		x86asm.SETA, x86asm.SETAE, x86asm.SETB, x86asm.SETBE, x86asm.SETS, x86asm.SETNS,
		x86asm.CMOVE, x86asm.CMOVNE, x86asm.CMOVL, x86asm.CMOVLE, x86asm.CMOVG, x86asm.CMOVGE,
		x86asm.CMOVA, x86asm.CMOVAE, x86asm.CMOVB, x86asm.CMOVBE, x86asm.CMOVS, x86asm.CMOVNS,
		x86asm.MOVD, x86asm.MOVQ, x86asm.MOVAPS, x86asm.MOVUPS, x86asm.MOVDQA, x86asm.MOVDQU,
		x86asm.PXOR, x86asm.XORPS:
		if inst.Op == x86asm.IMUL && inst.Args[1] == nil {
			return Of(RAX, RDX), true // one-operand form writes rdx:rax
		}
		return dst(), true
	case x86asm.XCHG, x86asm.XADD:
		var s RegSet
		for _, a := range inst.Args[:2] {
			if r, ok := a.(x86asm.Reg); ok {
				if g, ok := full(r); ok {
					s |= 1 << g
				}
			}
		}
		return s, true
	case x86asm.CDQ, x86asm.CQO, x86asm.CWD:
		return Of(RDX), true
	case x86asm.CDQE, x86asm.CWDE, x86asm.CBW:
		return Of(RAX), true
	}
	// Control flow that is not emulated (ret, indirect jmp/call), syscalls, string ops,
	// everything else: unknown.
	return 0, false
}

// FunctionBytes returns up to n bytes of the code at virtual address addr of an ELF file
// (a symbol's value), for FirstEmulated.
func FunctionBytes(f *elf.File, addr uint64, n int) ([]byte, error) {
	for _, p := range f.Progs {
		if p.Type != elf.PT_LOAD || p.Flags&elf.PF_X == 0 || addr < p.Vaddr || addr >= p.Vaddr+p.Filesz {
			continue
		}
		if rem := p.Vaddr + p.Filesz - addr; uint64(n) > rem {
			n = int(rem)
		}
		b := make([]byte, n)
		if _, err := p.ReadAt(b, int64(addr-p.Vaddr)); err != nil {
			return nil, err
		}
		return b, nil
	}
	return nil, fmt.Errorf("address %#x is in no executable segment", addr)
}

// ReturnSite finds a cheap stand-in for a uretprobe in a function whose prologue moves rsp
// before any emulated instruction (OpenSSL's SSL_read/SSL_write: `sub $0x18,%rsp` first, so a
// uretprobe there is single-stepped, ~15 us). code is the whole function (its symbol size).
//
// It returns the offset of the stack-protector check's jne right before the function's only
// ret: an emulated instruction that every returning path executes exactly once, after which
// rax is not written again, so a plain uprobe there sees the return value. Its taken branch
// goes to __stack_chk_fail, which does not return. Conditions checked, else ErrNotFound:
// exactly one ret; no indirect or out-of-function jumps (tail calls would return elsewhere);
// the instructions between the jne and the ret are modelled and leave rax alone; the jne
// follows a `sub/xor/cmp %fs:0x28` (the canary check); nothing jumps past the jne.
func ReturnSite(code []byte) (Site, error) {
	type ins struct {
		off  int
		inst x86asm.Inst
	}
	var all []ins
	retIdx := -1
	var targets []int
	for off := 0; off < len(code); {
		if len(code)-off >= 4 && isEndbr(code[off:off+4]) {
			off += 4
			continue
		}
		inst, err := x86asm.Decode(code[off:], 64)
		if err != nil {
			return Site{}, fmt.Errorf("%w: decode at +%d: %v", ErrNotFound, off, err)
		}
		switch inst.Op {
		case x86asm.RET:
			if retIdx >= 0 {
				return Site{}, fmt.Errorf("%w: more than one ret", ErrNotFound)
			}
			retIdx = len(all)
		case x86asm.JMP, x86asm.JA, x86asm.JAE, x86asm.JB, x86asm.JBE, x86asm.JE, x86asm.JNE,
			x86asm.JG, x86asm.JGE, x86asm.JL, x86asm.JLE, x86asm.JO, x86asm.JNO, x86asm.JP,
			x86asm.JNP, x86asm.JS, x86asm.JNS, x86asm.JCXZ, x86asm.JECXZ, x86asm.JRCXZ:
			rel, ok := inst.Args[0].(x86asm.Rel)
			if !ok {
				return Site{}, fmt.Errorf("%w: indirect jump at +%d", ErrNotFound, off)
			}
			tgt := off + inst.Len + int(rel)
			if tgt < 0 || tgt >= len(code) {
				return Site{}, fmt.Errorf("%w: jump out of the function at +%d (tail call?)", ErrNotFound, off)
			}
			targets = append(targets, tgt)
		}
		all = append(all, ins{off, inst})
		off += inst.Len
	}
	if retIdx < 0 {
		return Site{}, fmt.Errorf("%w: no ret", ErrNotFound)
	}
	i := retIdx - 1
	for ; i >= 0; i-- {
		a := all[i]
		if Emulated(code[a.off : a.off+a.inst.Len]) {
			break
		}
		w, ok := Writes(a.inst)
		if !ok || w.Has(RAX) {
			return Site{}, fmt.Errorf("%w: +%d %s before the ret", ErrNotFound, a.off, x86asm.GNUSyntax(a.inst, uint64(a.off), nil))
		}
	}
	if i < 1 || all[i].inst.Op != x86asm.JNE {
		return Site{}, fmt.Errorf("%w: no stack-protector jne before the ret", ErrNotFound)
	}
	e, prev := all[i], all[i-1].inst
	canary := false
	for _, a := range prev.Args {
		if m, ok := a.(x86asm.Mem); ok && m.Segment == x86asm.FS && m.Disp == 0x28 && m.Base == 0 && m.Index == 0 {
			canary = prev.Op == x86asm.SUB || prev.Op == x86asm.XOR || prev.Op == x86asm.CMP
		}
	}
	if !canary {
		return Site{}, fmt.Errorf("%w: the jne at +%d is not a stack-protector check", ErrNotFound, e.off)
	}
	for _, tgt := range targets {
		if tgt > e.off && tgt <= all[retIdx].off {
			return Site{}, fmt.Errorf("%w: a jump lands at +%d, between the check and the ret", ErrNotFound, tgt)
		}
	}
	return Site{Offset: uint64(e.off), Emulated: true, Insn: x86asm.GNUSyntax(e.inst, uint64(e.off), nil)}, nil
}
