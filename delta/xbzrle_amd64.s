//go:build !purego

#include "textflag.h"

// func eqMasksAVX2(a, b *byte, nblocks int, masks *uint64) (all, any uint64)
// For each 64-byte block j < nblocks, masks[j] gets bit k set where
// a[64j+k] == b[64j+k]; returns the AND and the OR of the masks.
// nblocks >= 1.
TEXT ·eqMasksAVX2(SB), NOSPLIT, $0-48
	MOVQ a+0(FP), SI
	MOVQ b+8(FP), DI
	MOVQ nblocks+16(FP), CX
	MOVQ masks+24(FP), R8
	MOVQ $-1, R9
	XORQ R10, R10

loop:
	VMOVDQU   (SI), Y0
	VMOVDQU   32(SI), Y1
	VPCMPEQB  (DI), Y0, Y0
	VPCMPEQB  32(DI), Y1, Y1
	VPMOVMSKB Y0, AX
	VPMOVMSKB Y1, BX
	SHLQ      $32, BX
	ORQ       BX, AX
	MOVQ      AX, (R8)
	ANDQ      AX, R9
	ORQ       AX, R10
	ADDQ      $64, SI
	ADDQ      $64, DI
	ADDQ      $8, R8
	DECQ      CX
	JNZ       loop
	VZEROUPPER
	MOVQ      R9, all+32(FP)
	MOVQ      R10, any+40(FP)
	RET
