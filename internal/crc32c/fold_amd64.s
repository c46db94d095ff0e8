//go:build !purego

#include "textflag.h"

// func foldAVX512(s uint32, p *byte, n int, k *foldKeys) uint32
//
// CRC32C by folding (carry-less multiplication), 256 bytes a step in four
// 512-bit registers of four 128-bit lanes each. The state s is XORed into
// the first 4 bytes (the CRC of data from state s is that of the data
// with s in its first bytes, from 0). Each step moves every lane 2048
// bits forward (its low half times k.fold[0], its high half times
// k.fold[1]) and XORs in the next block. At the end the sixteen lanes are
// moved onto the last one (k.reduce) and XORed together: a 128-bit
// polynomial congruent to the data, whose CRC the CRC32 instruction
// gives from state 0, 8 bytes at a time. n is a multiple of 256, at
// least 512. Layout of k: fold at 0, reduce at 16 (16 lanes of 16
// bytes: register r's constants at 16+64r).
TEXT ·foldAVX512(SB), NOSPLIT, $0-36
	MOVL s+0(FP), AX
	MOVQ p+8(FP), SI
	MOVQ n+16(FP), CX
	MOVQ k+24(FP), DX

	VMOVDQU64 (SI), Z0
	VMOVDQU64 64(SI), Z1
	VMOVDQU64 128(SI), Z2
	VMOVDQU64 192(SI), Z3
	VMOVD     AX, X4       // zero-extended to Z4
	VPXORQ    Z4, Z0, Z0
	ADDQ      $256, SI
	SUBQ      $256, CX

	VBROADCASTI32X4 (DX), Z8 // the fold constants, in every lane

loop:
	VPCLMULQDQ $0x00, Z8, Z0, Z4
	VPCLMULQDQ $0x11, Z8, Z0, Z0
	VPTERNLOGQ $0x96, (SI), Z4, Z0 // Z0 = Z0 ^ Z4 ^ next
	VPCLMULQDQ $0x00, Z8, Z1, Z5
	VPCLMULQDQ $0x11, Z8, Z1, Z1
	VPTERNLOGQ $0x96, 64(SI), Z5, Z1
	VPCLMULQDQ $0x00, Z8, Z2, Z6
	VPCLMULQDQ $0x11, Z8, Z2, Z2
	VPTERNLOGQ $0x96, 128(SI), Z6, Z2
	VPCLMULQDQ $0x00, Z8, Z3, Z7
	VPCLMULQDQ $0x11, Z8, Z3, Z3
	VPTERNLOGQ $0x96, 192(SI), Z7, Z3
	ADDQ       $256, SI
	SUBQ       $256, CX
	JNZ        loop

	// The last lane's high half stays where it is: keep it aside.
	VEXTRACTI32X4 $3, Z3, X9
	VPSRLDQ       $8, X9, X9
	VPSLLDQ       $8, X9, X9

	// Every lane onto the last, all XORed together.
	VMOVDQU64  16(DX), Z10
	VMOVDQU64  80(DX), Z11
	VMOVDQU64  144(DX), Z12
	VMOVDQU64  208(DX), Z13
	VPCLMULQDQ $0x00, Z10, Z0, Z4
	VPCLMULQDQ $0x11, Z10, Z0, Z0
	VPCLMULQDQ $0x00, Z11, Z1, Z5
	VPCLMULQDQ $0x11, Z11, Z1, Z1
	VPTERNLOGQ $0x96, Z4, Z5, Z0
	VPCLMULQDQ $0x00, Z12, Z2, Z6
	VPCLMULQDQ $0x11, Z12, Z2, Z2
	VPTERNLOGQ $0x96, Z1, Z6, Z0
	VPCLMULQDQ $0x00, Z13, Z3, Z7
	VPCLMULQDQ $0x11, Z13, Z3, Z3
	VPTERNLOGQ $0x96, Z2, Z7, Z0
	VPXORQ     Z3, Z0, Z0

	// The four lanes of Z0 into one, and the kept half.
	VEXTRACTI64X4 $1, Z0, Y1
	VPXORQ        Y1, Y0, Y0
	VEXTRACTI32X4 $1, Y0, X1
	VPXORQ        X1, X0, X0
	VPXORQ        X9, X0, X0

	// Its CRC from state 0.
	VMOVQ     X0, BX
	VPEXTRQ   $1, X0, R8
	XORL      AX, AX
	CRC32Q    BX, AX
	CRC32Q    R8, AX
	VZEROUPPER
	MOVL      AX, ret+32(FP)
	RET
