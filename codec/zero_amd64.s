//go:build !purego

#include "textflag.h"

// func isZeroAVX512(p *byte, n int) bool
//
// Whether the n bytes at p (n a multiple of 64, at least 64) are all
// zero: the first 64 bytes, then 256 bytes a
// step ORed together (VPTERNLOGQ $0xFE is a|b|c) and tested once, then 64
// bytes a step for the rest. Reads nothing past p+n.
TEXT ·isZeroAVX512(SB), NOSPLIT, $0-17
	MOVQ p+0(FP), SI
	MOVQ n+8(FP), CX
	VMOVDQU64 (SI), Z0 // the first 64 bytes alone: a page with data
	VPTESTMQ  Z0, Z0, K1 // mostly has some there
	KORTESTW  K1, K1
	JNZ       nonzero
	ADDQ      $64, SI
	SUBQ      $64, CX

loop256:
	CMPQ       CX, $256
	JLT        loop64
	VMOVDQU64  (SI), Z0
	VMOVDQU64  64(SI), Z1
	VPTERNLOGQ $0xFE, 128(SI), Z1, Z0
	VPORQ      192(SI), Z0, Z0
	VPTESTMQ   Z0, Z0, K1
	KORTESTW   K1, K1
	JNZ        nonzero
	ADDQ       $256, SI
	SUBQ       $256, CX
	JMP        loop256

loop64:
	TESTQ     CX, CX
	JZ        zero
	VMOVDQU64 (SI), Z0
	VPTESTMQ  Z0, Z0, K1
	KORTESTW  K1, K1
	JNZ       nonzero
	ADDQ      $64, SI
	SUBQ      $64, CX
	JMP       loop64

zero:
	VZEROUPPER
	MOVB $1, ret+16(FP)
	RET

nonzero:
	VZEROUPPER
	MOVB $0, ret+16(FP)
	RET
