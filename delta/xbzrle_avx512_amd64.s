//go:build !purego

#include "textflag.h"

// func encodeAVX512(out *byte, w int, old, new *byte, n, limit int) int
//
// The whole encoder of encode (xbzrle.go) with AVX-512BW: the same runs, the
// same room checks against limit, the same result (length, 0 unchanged, -1
// overflow). n >= 1, limit >= 2, w = len(out) >= min(limit, 2n+16).
//
// Each 64-byte block is compared once (VPCMPUB into a K register); the run
// walk then finds boundaries with TZCNT on that block's mask, kept in R13.
// Stretches of unchanged (or changed) bytes are skipped four blocks at a
// time with KORTESTQ. The last partial block is loaded with a zeroing mask
// (K7), so the bytes past the page compare equal. A changed run is copied
// with one 64-byte store when out has room behind it, else a masked store,
// or 64-byte chunks for longer runs.
//
// A changed run that already cannot fit (it covers [start, Q) with
// Q - start > limit - d - 1) ends the encode with -1 before its end is
// found: QEMU's scalar encoder fails on that run too, with any header.
//
// Registers: R8 out, R15 w-64, SI old, DI new, R14 n, R9 limit, R10 d (bytes
// written), R11 start of the current run, R12 offset of the current block,
// R13 its equal-bytes mask, K7 the mask of the bytes of a partial last block.
TEXT ·encodeAVX512(SB), NOSPLIT, $0-56
	MOVQ  out+0(FP), R8
	MOVQ  w+8(FP), R15
	SUBQ  $64, R15
	MOVQ  old+16(FP), SI
	MOVQ  new+24(FP), DI
	MOVQ  n+32(FP), R14
	MOVQ  limit+40(FP), R9
	MOVQ  R14, AX
	ANDQ  $63, AX
	MOVQ  $-1, BX
	BZHIQ AX, BX, BX
	KMOVQ BX, K7
	XORQ  R10, R10
	XORQ  R11, R11
	XORQ  R12, R12
	JMP   zgroup // limit >= 2: room for the first run

// An unchanged run starts at R11, inside block R12.
zrun:
	LEAQ   2(R10), AX
	CMPQ   AX, R9
	JGT    overflow
	MOVQ   R11, CX
	SUBQ   R12, CX
	MOVQ   R13, AX
	NOTQ   AX
	SHRXQ  CX, AX, AX
	TZCNTQ AX, BX
	JCC    zhdr // BX = run length

	ADDQ $64, R12

zgroup:
	LEAQ     256(R12), AX
	CMPQ     AX, R14
	JGT      zblock
	VMOVDQU64 (SI)(R12*1), Z0
	VMOVDQU64 64(SI)(R12*1), Z1
	VMOVDQU64 128(SI)(R12*1), Z2
	VMOVDQU64 192(SI)(R12*1), Z3
	VPCMPUB  $4, (DI)(R12*1), Z0, K1
	VPCMPUB  $4, 64(DI)(R12*1), Z1, K2
	VPCMPUB  $4, 128(DI)(R12*1), Z2, K3
	VPCMPUB  $4, 192(DI)(R12*1), Z3, K4
	KORQ     K1, K2, K5
	KORQ     K3, K4, K6
	KORTESTQ K5, K6
	JNZ      zfind
	ADDQ     $256, R12
	JMP      zgroup

zfind: // some byte of the four blocks changed
	KMOVQ K1, AX
	TESTQ AX, AX
	JNZ   zhit
	ADDQ  $64, R12
	KMOVQ K2, AX
	TESTQ AX, AX
	JNZ   zhit
	ADDQ  $64, R12
	KMOVQ K3, AX
	TESTQ AX, AX
	JNZ   zhit
	ADDQ  $64, R12
	KMOVQ K4, AX
	JMP   zhit

zblock: // fewer than four blocks left
	CMPQ      R12, R14
	JGE       zend
	LEAQ      64(R12), AX
	CMPQ      AX, R14
	JGT       ztail
	VMOVDQU64 (SI)(R12*1), Z0
	VPCMPUB   $4, (DI)(R12*1), Z0, K1
	KMOVQ     K1, AX
	TESTQ     AX, AX
	JNZ       zhit
	ADDQ      $64, R12
	JMP       zblock

ztail:
	VMOVDQU8.Z (SI)(R12*1), K7, Z0
	VMOVDQU8.Z (DI)(R12*1), K7, Z1
	VPCMPUB    $4, Z1, Z0, K1
	KMOVQ      K1, AX
	TESTQ      AX, AX
	JZ         zend

zhit: // AX: the changed-bytes mask of block R12, not 0
	MOVQ   AX, R13
	NOTQ   R13
	TZCNTQ AX, BX
	ADDQ   R12, BX
	SUBQ   R11, BX

zhdr: // BX: the unchanged run's length; write it, start the changed run
	ADDQ BX, R11
	CMPQ BX, $0x80
	JAE  zhdr2
	MOVB BX, (R8)(R10*1)
	INCQ R10
	JMP  nzrun

zhdr2:
	MOVQ BX, AX
	ORQ  $0x80, AX
	MOVB AX, (R8)(R10*1)
	SHRQ $7, BX
	MOVB BX, 1(R8)(R10*1)
	ADDQ $2, R10

// A changed run starts at R11, inside block R12.
nzrun:
	LEAQ   2(R10), AX
	CMPQ   AX, R9
	JGT    overflow
	MOVQ   R11, CX
	SUBQ   R12, CX
	SHRXQ  CX, R13, AX
	TZCNTQ AX, BX
	JCC    nzhdr // BX = run length

	// DX: a run that covers [R11, DX+1) cannot fit, whatever its header.
	MOVQ R9, DX
	SUBQ R10, DX
	ADDQ R11, DX
	DECQ DX
	ADDQ $64, R12

nzgroup: // the run covers [R11, R12)
	CMPQ     R12, DX
	JGT      overflow
	LEAQ     256(R12), AX
	CMPQ     AX, R14
	JGT      nzblock
	VMOVDQU64 (SI)(R12*1), Z0
	VMOVDQU64 64(SI)(R12*1), Z1
	VMOVDQU64 128(SI)(R12*1), Z2
	VMOVDQU64 192(SI)(R12*1), Z3
	VPCMPUB  $0, (DI)(R12*1), Z0, K1
	VPCMPUB  $0, 64(DI)(R12*1), Z1, K2
	VPCMPUB  $0, 128(DI)(R12*1), Z2, K3
	VPCMPUB  $0, 192(DI)(R12*1), Z3, K4
	KORQ     K1, K2, K5
	KORQ     K3, K4, K6
	KORTESTQ K5, K6
	JNZ      nzfind
	ADDQ     $256, R12
	JMP      nzgroup

nzfind: // some byte of the four blocks is unchanged
	KMOVQ K1, AX
	TESTQ AX, AX
	JNZ   nzhit
	ADDQ  $64, R12
	KMOVQ K2, AX
	TESTQ AX, AX
	JNZ   nzhit
	ADDQ  $64, R12
	KMOVQ K3, AX
	TESTQ AX, AX
	JNZ   nzhit
	ADDQ  $64, R12
	KMOVQ K4, AX
	JMP   nzhit

nzblock: // fewer than four blocks left
	CMPQ      R12, R14
	JGE       nzend
	LEAQ      64(R12), AX
	CMPQ      AX, R14
	JGT       nztail
	VMOVDQU64 (SI)(R12*1), Z0
	VPCMPUB   $0, (DI)(R12*1), Z0, K1
	KMOVQ     K1, AX
	TESTQ     AX, AX
	JNZ       nzhit
	ADDQ      $64, R12
	JMP       nzgroup

nztail: // the bytes past the page compare equal: the run ends in this block
	VMOVDQU8.Z (SI)(R12*1), K7, Z0
	VMOVDQU8.Z (DI)(R12*1), K7, Z1
	VPCMPUB    $0, Z1, Z0, K1
	KMOVQ      K1, AX

nzhit: // AX: the equal-bytes mask of block R12, not 0
	MOVQ   AX, R13
	TZCNTQ AX, BX
	ADDQ   R12, BX
	SUBQ   R11, BX
	JMP    nzhdr

nzend: // the run ends the page (n is a multiple of 64)
	MOVQ R14, BX
	SUBQ R11, BX

nzhdr: // BX: the changed run's length; write it and the run's bytes
	CMPQ BX, $0x80
	JAE  nzhdr2
	MOVB BX, (R8)(R10*1)
	INCQ R10
	JMP  nzcheck

nzhdr2:
	MOVQ BX, AX
	ORQ  $0x80, AX
	MOVB AX, (R8)(R10*1)
	MOVQ BX, AX
	SHRQ $7, AX
	MOVB AX, 1(R8)(R10*1)
	ADDQ $2, R10

nzcheck:
	LEAQ (R10)(BX*1), AX
	CMPQ AX, R9
	JGT  overflow
	CMPQ BX, $64
	JGT  copylong
	CMPQ R10, R15
	JGT  copymasked // out has no 64 bytes of room
	LEAQ 64(R11), AX
	CMPQ AX, R14
	JGT  copymasked // a 64-byte load would leave the page
	VMOVDQU64 (DI)(R11*1), Z0
	VMOVDQU64 Z0, (R8)(R10*1)

copied:
	ADDQ BX, R10
	ADDQ BX, R11
	CMPQ R11, R14
	JLT  zrun
	MOVQ R10, ret+48(FP)
	VZEROUPPER
	RET

copymasked:
	MOVQ       $-1, AX
	BZHIQ      BX, AX, AX
	KMOVQ      AX, K1
	VMOVDQU8.Z (DI)(R11*1), K1, Z0
	VMOVDQU8   Z0, K1, (R8)(R10*1)
	JMP        copied

copylong: // BX > 64: 64-byte chunks, the last one ending with the run
	LEAQ (DI)(R11*1), AX
	LEAQ (R8)(R10*1), DX
	MOVQ BX, CX

copyloop:
	VMOVDQU64 (AX), Z0
	VMOVDQU64 Z0, (DX)
	ADDQ      $64, AX
	ADDQ      $64, DX
	SUBQ      $64, CX
	CMPQ      CX, $64
	JGT       copyloop
	VMOVDQU64 -64(AX)(CX*1), Z0
	VMOVDQU64 Z0, -64(DX)(CX*1)
	JMP       copied

zend: // no change up to the end of the page: the final run is not written
	MOVQ R10, ret+48(FP)
	VZEROUPPER
	RET

overflow:
	MOVQ $-1, ret+48(FP)
	VZEROUPPER
	RET
