//go:build !purego

#include "textflag.h"

// func eqLenAVX2(a, b *byte, n int) int
// Returns the index of the first i < n with a[i] != b[i], or n. n >= 32.
TEXT ·eqLenAVX2(SB), NOSPLIT, $0-32
	MOVQ a+0(FP), SI
	MOVQ b+8(FP), DI
	MOVQ n+16(FP), CX
	XORQ AX, AX

eq_loop64:
	LEAQ 64(AX), DX
	CMPQ DX, CX
	JA   eq_tail
	VMOVDQU  (SI)(AX*1), Y0
	VMOVDQU  32(SI)(AX*1), Y1
	VPCMPEQB (DI)(AX*1), Y0, Y0
	VPCMPEQB 32(DI)(AX*1), Y1, Y1
	VPAND    Y0, Y1, Y2
	VPMOVMSKB Y2, BX
	CMPL BX, $0xffffffff
	JNE  eq_found64
	MOVQ DX, AX
	JMP  eq_loop64

eq_found64:
	VPMOVMSKB Y0, BX
	NOTL BX
	TESTL BX, BX
	JNZ  eq_found
	VPMOVMSKB Y1, BX
	NOTL BX
	ADDQ $32, AX

eq_found:
	BSFL BX, BX
	ADDQ BX, AX
	VZEROUPPER
	MOVQ AX, ret+24(FP)
	RET

eq_tail:
	// Fewer than 64 bytes left from AX. One 32-byte step if possible.
	LEAQ 32(AX), DX
	CMPQ DX, CX
	JA   eq_last
	VMOVDQU  (SI)(AX*1), Y0
	VPCMPEQB (DI)(AX*1), Y0, Y0
	VPMOVMSKB Y0, BX
	NOTL BX
	TESTL BX, BX
	JNZ  eq_found
	MOVQ DX, AX

eq_last:
	// Fewer than 32 bytes left: compare the last 32 bytes of the buffers;
	// the ones before AX are known equal, so the first difference found
	// is at or after AX.
	CMPQ AX, CX
	JEQ  eq_done
	LEAQ -32(CX), AX
	VMOVDQU  (SI)(AX*1), Y0
	VPCMPEQB (DI)(AX*1), Y0, Y0
	VPMOVMSKB Y0, BX
	NOTL BX
	TESTL BX, BX
	JNZ  eq_found
	MOVQ CX, AX

eq_done:
	VZEROUPPER
	MOVQ AX, ret+24(FP)
	RET

// func neLenAVX2(a, b *byte, n int) int
// Returns the index of the first i < n with a[i] == b[i], or n. n >= 32.
TEXT ·neLenAVX2(SB), NOSPLIT, $0-32
	MOVQ a+0(FP), SI
	MOVQ b+8(FP), DI
	MOVQ n+16(FP), CX
	XORQ AX, AX

ne_loop64:
	LEAQ 64(AX), DX
	CMPQ DX, CX
	JA   ne_tail
	VMOVDQU  (SI)(AX*1), Y0
	VMOVDQU  32(SI)(AX*1), Y1
	VPCMPEQB (DI)(AX*1), Y0, Y0
	VPCMPEQB 32(DI)(AX*1), Y1, Y1
	VPOR     Y0, Y1, Y2
	VPTEST   Y2, Y2
	JNZ  ne_found64
	MOVQ DX, AX
	JMP  ne_loop64

ne_found64:
	VPMOVMSKB Y0, BX
	TESTL BX, BX
	JNZ  ne_found
	VPMOVMSKB Y1, BX
	ADDQ $32, AX

ne_found:
	BSFL BX, BX
	ADDQ BX, AX
	VZEROUPPER
	MOVQ AX, ret+24(FP)
	RET

ne_tail:
	LEAQ 32(AX), DX
	CMPQ DX, CX
	JA   ne_last
	VMOVDQU  (SI)(AX*1), Y0
	VPCMPEQB (DI)(AX*1), Y0, Y0
	VPMOVMSKB Y0, BX
	TESTL BX, BX
	JNZ  ne_found
	MOVQ DX, AX

ne_last:
	// Fewer than 32 bytes left: the bytes before AX are known to differ.
	CMPQ AX, CX
	JEQ  ne_done
	LEAQ -32(CX), AX
	VMOVDQU  (SI)(AX*1), Y0
	VPCMPEQB (DI)(AX*1), Y0, Y0
	VPMOVMSKB Y0, BX
	TESTL BX, BX
	JNZ  ne_found
	MOVQ CX, AX

ne_done:
	VZEROUPPER
	MOVQ AX, ret+24(FP)
	RET
