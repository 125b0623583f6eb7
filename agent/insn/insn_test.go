package insn

import (
	"debug/elf"
	"errors"
	"os"
	"testing"

	"golang.org/x/arch/x86/x86asm"
)

// Prologues copied from Debian 12's glibc 2.36 and OpenSSL 3.0 (the machines' libraries).
var (
	glibcRecv   = []byte{0x80, 0x3d, 0xc1, 0x0c, 0x0d, 0x00, 0x00, 0x41, 0x89, 0xca, 0x74, 0x1c, 0x45, 0x31, 0xc9, 0x45, 0x31, 0xc0, 0xb8, 0x2d, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x48, 0x3d, 0x00, 0xf0, 0xff, 0xff, 0x77}
	glibcWritev = []byte{0x80, 0x3d, 0x81, 0xd7, 0x0d, 0x00, 0x00, 0x74, 0x17, 0xb8, 0x14, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x48, 0x3d, 0x00, 0xf0, 0xff, 0xff, 0x77, 0x58, 0xc3, 0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00}
	glibcClose  = []byte{0x80, 0x3d, 0xf1, 0x2b, 0x0e, 0x00, 0x00, 0x74, 0x17, 0xb8, 0x03, 0x00, 0x00, 0x00, 0x0f, 0x05, 0x48, 0x3d, 0x00, 0xf0, 0xff, 0xff, 0x77, 0x48, 0xc3, 0x0f, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x00}
	sslRead     = []byte{0x48, 0x83, 0xec, 0x18, 0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00, 0x48, 0x89, 0x44, 0x24, 0x08, 0x31, 0xc0, 0x85, 0xd2, 0x78, 0x2f, 0x48, 0x89, 0xe1, 0x48, 0x63, 0xd2, 0xe8, 0x3d}
	sslFree     = []byte{0x48, 0x85, 0xff, 0x0f, 0x84, 0x97, 0x03, 0x00, 0x00, 0x41, 0x55, 0xb8, 0xff, 0xff, 0xff, 0xff}
)

func TestFirstEmulated(t *testing.T) {
	for _, tc := range []struct {
		name     string
		code     []byte
		preserve RegSet
		want     uint64
		wantErr  bool
	}{
		// recv+10: `mov %ecx,%r10d` before the je only writes r10, which is no argument.
		{"recv", glibcRecv, Args(4, true), 10, false},
		{"writev", glibcWritev, Args(3, true), 7, false},
		{"close", glibcClose, Args(1, true), 7, false},
		// SSL_read starts with `sub $0x18,%rsp`: fine for reading arguments (js at +22)...
		{"SSL_read entry", sslRead, Args(3, false), 22, false},
		// ...but not for a uretprobe, which needs the return address at [rsp].
		{"SSL_read ret", sslRead, Args(3, true), 0, true},
		{"SSL_free", sslFree, Args(1, true), 3, false},
		{"push first", []byte{0x41, 0x54, 0x48, 0x89, 0xfb}, Args(1, true), 0, false},
		{"endbr64 then push", []byte{0xf3, 0x0f, 0x1e, 0xfa, 0x55}, Args(6, true), 4, false},
		{"nop5", []byte{0x0f, 0x1f, 0x44, 0x00, 0x00, 0xc3}, Args(6, true), 0, false},
		// mov %rdi,%rbx then je: rbx is not an argument, so +3 is fine.
		{"mov to callee-saved", []byte{0x48, 0x89, 0xfb, 0x74, 0x02}, Args(3, true), 3, false},
		// xor %esi,%esi clobbers the second argument before the jcc.
		{"clobber rsi", []byte{0x31, 0xf6, 0x74, 0x02}, Args(2, true), 0, true},
		// ret before anything emulated.
		{"ret", []byte{0xc3, 0x90}, Args(1, true), 0, true},
		// syscall is not modelled: stop.
		{"syscall", []byte{0x0f, 0x05, 0x90}, Args(1, true), 0, true},
		{"empty", nil, Args(1, true), 0, true},
		{"garbage", []byte{0x0f, 0xff, 0xff}, Args(1, true), 0, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, err := FirstEmulated(tc.code, tc.preserve)
			if tc.wantErr {
				if !errors.Is(err, ErrNotFound) {
					t.Fatalf("got %+v, %v; want ErrNotFound", s, err)
				}
				return
			}
			if err != nil || s.Offset != tc.want || !s.Emulated {
				t.Fatalf("got %+v, %v; want offset %d", s, err, tc.want)
			}
		})
	}
}

func TestEmulated(t *testing.T) {
	for _, tc := range []struct {
		b    []byte
		want bool
	}{
		{[]byte{0x55}, true},                         // push rbp
		{[]byte{0x41, 0x57}, true},                   // push r15
		{[]byte{0x48, 0x55}, false},                  // REX.W push: kernel accepts only 0x41
		{[]byte{0x90}, true},                         // nop
		{[]byte{0x66, 0x90}, true},                   // xchg ax,ax = 2-byte nop
		{[]byte{0xf3, 0x90}, false},                  // pause
		{[]byte{0x41, 0x90}, false},                  // xchg r8,rax
		{[]byte{0x74, 0x1c}, true},                   // je rel8
		{[]byte{0x0f, 0x84, 1, 0, 0, 0}, true},       // je rel32
		{[]byte{0x66, 0x0f, 0x84, 1, 0}, false},      // 16-bit jcc
		{[]byte{0xe8, 0, 0, 0, 0}, true},             // call rel32
		{[]byte{0xe9, 0, 0, 0, 0}, true},             // jmp rel32
		{[]byte{0xff, 0xe0}, false},                  // jmp *rax
		{[]byte{0xc3}, false},                        // ret
		{[]byte{0x48, 0x83, 0xec, 0x18}, false},      // sub rsp
		{[]byte{0x80, 0x3d, 1, 2, 3, 4, 0}, false},   // cmpb rip-relative
		{[]byte{0x0f, 0x1f, 0x44, 0x00, 0x00}, true}, // nop5
		{[]byte{0xf3, 0x0f, 0x1e, 0xfa}, false},      // endbr64 is single-stepped
		{nil, false},
	} {
		if got := Emulated(tc.b); got != tc.want {
			t.Errorf("Emulated(% x) = %v, want %v", tc.b, got, tc.want)
		}
	}
}

// TestSystemLibc runs the search on the machine's own libc so that a glibc update that moves
// the emulated instruction shows up here, not as a 10x slower agent.
func TestSystemLibc(t *testing.T) {
	const path = "/lib/x86_64-linux-gnu/libc.so.6"
	f, err := elf.Open(path)
	if err != nil {
		if os.Getenv("KW_REQUIRE_INTEGRATION") == "1" {
			t.Fatal(err)
		}
		t.Skip(err)
	}
	defer f.Close()
	syms, err := f.DynamicSymbols()
	if err != nil {
		t.Fatal(err)
	}
	found := 0
	for _, s := range syms {
		var nargs int
		switch s.Name {
		case "recv", "send":
			nargs = 4
		case "writev":
			nargs = 3
		case "close":
			nargs = 1
		default:
			continue
		}
		code, err := FunctionBytes(f, s.Value, 64)
		if err != nil {
			t.Fatal(err)
		}
		site, err := FirstEmulated(code, Args(nargs, true))
		if err != nil {
			t.Errorf("%s: %v", s.Name, err)
			continue
		}
		t.Logf("%s+%d: %s", s.Name, site.Offset, site.Insn)
		found++
	}
	if found < 4 {
		t.Fatalf("found %d of recv/send/writev/close", found)
	}
}

func FuzzFirstEmulated(f *testing.F) {
	for _, b := range [][]byte{glibcRecv, glibcWritev, sslRead, sslFree, {0x55}, {0xc3}} {
		f.Add(b, uint16(Args(3, true)))
	}
	f.Fuzz(func(t *testing.T, code []byte, preserve uint16) {
		s, err := FirstEmulated(code, RegSet(preserve))
		if err != nil {
			if s.Offset != 0 {
				t.Fatalf("error with offset %d", s.Offset)
			}
			return
		}
		if s.Offset >= uint64(len(code)) || !Emulated(code[s.Offset:s.Offset+uint64(instLen(t, code[s.Offset:]))]) {
			t.Fatalf("offset %d is not an emulated instruction in % x", s.Offset, code)
		}
	})
}

func instLen(t *testing.T, b []byte) int {
	inst, err := x86asm.Decode(b, 64)
	if err != nil {
		t.Fatalf("emulated site does not decode: %v", err)
	}
	return inst.Len
}

// OpenSSL 3.0.x SSL_read, whole function (symbol size 0x83) plus a few bytes of padding.
var sslReadFull = []byte{0x48, 0x83, 0xec, 0x18, 0x64, 0x48, 0x8b, 0x04, 0x25, 0x28, 0x00, 0x00, 0x00, 0x48, 0x89, 0x44, 0x24, 0x08, 0x31, 0xc0, 0x85, 0xd2, 0x78, 0x2f, 0x48, 0x89, 0xe1, 0x48, 0x63, 0xd2, 0xe8, 0x3d, 0xfe, 0xff, 0xff, 0x85, 0xc0, 0x7e, 0x03, 0x8b, 0x04, 0x24, 0x48, 0x8b, 0x54, 0x24, 0x08, 0x64, 0x48, 0x2b, 0x14, 0x25, 0x28, 0x00, 0x00, 0x00, 0x75, 0x44, 0x48, 0x83, 0xc4, 0x18, 0x31, 0xd2, 0x31, 0xc9, 0x31, 0xf6, 0x31, 0xff, 0xc3, 0xe8, 0x04, 0x9f, 0xfe, 0xff, 0x48, 0x8d, 0x15, 0xe5, 0xd4, 0x04, 0x00, 0xbe, 0x4c, 0x07, 0x00, 0x00, 0x48, 0x8d, 0x3d, 0x42, 0xcc, 0x04, 0x00, 0xe8, 0xdc, 0xa5, 0xfe, 0xff, 0x31, 0xc0, 0x31, 0xd2, 0xbe, 0x0f, 0x01, 0x00, 0x00, 0xbf, 0x14, 0x00, 0x00, 0x00, 0xe8, 0xf9, 0xa3, 0xfe, 0xff, 0xb8, 0xff, 0xff, 0xff, 0xff, 0xeb, 0xac, 0xe8, 0xed, 0xb0, 0xfe, 0xff}

func TestReturnSite(t *testing.T) {
	s, err := ReturnSite(sslReadFull)
	if err != nil || s.Offset != 0x38 {
		t.Fatalf("SSL_read: %+v %v, want the jne at +0x38", s, err)
	}
	mod := func(f func(b []byte) []byte) []byte { return f(append([]byte(nil), sslReadFull...)) }
	for name, code := range map[string][]byte{
		// `xor %edi,%edi` before the ret becomes `xor %eax,%eax`: rax changes after the check.
		"rax written": mod(func(b []byte) []byte { b[0x45] = 0xc0; return b }),
		// the error path's `jmp +0x2a` retargeted to +0x3a: it would skip the check.
		"jump past the check": mod(func(b []byte) []byte { b[0x7d] = 0xbb; return b }),
		// a second ret replaces `call __stack_chk_fail`.
		"two rets": mod(func(b []byte) []byte { b[0x7e] = 0xc3; return b[:0x7f] }),
		// the canary compare becomes a compare with an ordinary stack slot.
		"no canary": mod(func(b []byte) []byte { b[0x2f] = 0x90; return b }),
		"truncated": sslReadFull[:0x30],
		"empty":     nil,
	} {
		if s, err := ReturnSite(code); !errors.Is(err, ErrNotFound) {
			t.Errorf("%s: got %+v, %v; want ErrNotFound", name, s, err)
		}
	}
}

func FuzzReturnSite(f *testing.F) {
	f.Add(sslReadFull)
	f.Add(glibcRecv)
	f.Fuzz(func(t *testing.T, code []byte) {
		s, err := ReturnSite(code)
		if err != nil {
			return
		}
		if s.Offset >= uint64(len(code)) || !Emulated(code[s.Offset:s.Offset+uint64(instLen(t, code[s.Offset:]))]) {
			t.Fatalf("offset %d is not an emulated instruction", s.Offset)
		}
	})
}
