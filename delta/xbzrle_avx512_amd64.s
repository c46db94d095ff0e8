//go:build !purego

#include "textflag.h"

// func encodeAVX512(out *byte, w int, old, new *byte, n, limit int) int
//
// The whole encoder of encode (xbzrle.go) with AVX-512BW: the same runs, the
// same result (length, 0 unchanged, -1 overflow) for the same limit. n >= 1,
// limit >= 2, w = len(out) >= min(limit, 2n+16).
//
// Each 64-byte block is compared once (VPCMPUB into a K register). From its
// mask X of the bytes in the state opposite to the current run's (changed
// bytes in an unchanged run, unchanged ones in a changed run), T = X ^ X<<1
// has a bit set at each run boundary of the block; the walk takes them in
// order with TZCNT and BLSR, so a boundary costs no shift by the run start.
// Stretches of one state are skipped four blocks at a time (KORTESTQ). A
// partial last block takes its bits from a compare of the page's last 64
// bytes (or, for a page shorter than 64 bytes, from loads masked by K7),
// and the bytes past the page count as unchanged, so a changed run at the
// end closes at n. Nothing past old or new is read: masked-out bytes on an
// unmapped page can cost some CPUs a slow assist.
//
// Room checks. QEMU's scalar encoder fails (-1) when fewer than 2 bytes are
// left before an unchanged run, or after its header, or when a changed
// run's header and bytes do not fit. Each pair of runs needs hz + hn + m
// bytes (headers and bytes); that check passing implies the first two,
// while any of them failing fails the encode; so one check per pair, made
// before anything of the pair is written, gives QEMU's result. It is made
// with two-byte headers assumed (d + 4 + m <= limit), and with the headers'
// real sizes only when that fails (tight). The final unchanged run, which
// is not written, keeps its 2-byte check. A changed run that already
// covers more than limit-d-2 bytes fails before its end is found.
//
// A changed run of up to 64 bytes is copied with one 64-byte load and
// store when both stay in new and out (the bytes past the run are
// overwritten next or lie past the result, within w), else eight bytes and
// then one at a time; a longer one in 64-byte chunks, the last of which
// ends with the run and overlaps the one before.
//
// Registers: R8 out, SI old, DI new, R14 n, R9 limit, R10 d (bytes written),
// R11 start of the current pair, R12 offset of the current block, R13 its
// boundaries not yet taken, BX/CX the pair's boundaries, K7 the partial
// block's byte mask, R15 w-64.
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
	JMP   zgroup

// An unchanged run starts at R11; R13 holds block R12's boundaries past it.
zrun:
	TZCNTQ R13, BX
	JCS    zskip
	BLSRQ  R13, R13
	ADDQ   R12, BX

// A changed run starts at BX.
nzrun:
	TZCNTQ R13, CX
	JCS    nzskip
	BLSRQ  R13, R13
	ADDQ   R12, CX

// The pair: unchanged [R11, BX), changed [BX, CX).
pair:
	MOVQ BX, AX
	SUBQ R11, AX            // AX = unchanged run's length
	MOVQ CX, R11
	MOVQ CX, DX
	SUBQ BX, DX             // DX = changed run's length
	LEAQ 4(R10)(DX*1), CX   // room for two-byte headers?
	CMPQ CX, R9
	JGT  tight

headers:
	CMPQ AX, $0x80
	JAE  zlong
	MOVB AX, (R8)(R10*1)
	INCQ R10
	JMP  nzhdr

zlong:
	MOVQ AX, CX
	ORQ  $0x80, CX
	MOVB CX, (R8)(R10*1)
	SHRQ $7, AX
	MOVB AX, 1(R8)(R10*1)
	ADDQ $2, R10

nzhdr:
	CMPQ DX, $0x80
	JAE  nzlong
	MOVB DX, (R8)(R10*1)
	INCQ R10
	JMP  copy

nzlong:
	MOVQ DX, AX
	ORQ  $0x80, AX
	MOVB AX, (R8)(R10*1)
	MOVQ DX, AX
	SHRQ $7, AX
	MOVB AX, 1(R8)(R10*1)
	ADDQ $2, R10

copy:
	CMPQ   DX, $64
	JGT    copylong
	CMPQ   R10, R15
	JGT    copyend          // out has no 64 bytes of room
	LEAQ   64(BX), AX
	CMPQ   AX, R14
	JGT    copyend          // a 64-byte load would leave new
	VMOVDQU64 (DI)(BX*1), Z0
	VMOVDQU64 Z0, (R8)(R10*1)

copied:
	ADDQ DX, R10
	CMPQ R11, R14
	JLT  zrun
	MOVQ R10, ret+48(FP)
	VZEROUPPER
	RET

// Near the end of new or of out: eight bytes at a time, then bytes, so
// that nothing past the run is read or written. (A masked load or store
// would not fault there, but on some CPUs it is very slow when the masked
// bytes lie on a page that is not mapped, as past a page at the end of an
// allocation can be.) R13 is kept in X2 meanwhile.
copyend:
	VMOVQ R13, X2
	LEAQ  (DI)(BX*1), AX
	LEAQ  (R8)(R10*1), BX
	MOVQ  DX, CX

copyend8:
	CMPQ CX, $8
	JLT  copyend1
	MOVQ (AX), R13
	MOVQ R13, (BX)
	ADDQ $8, AX
	ADDQ $8, BX
	SUBQ $8, CX
	JMP  copyend8

copyend1:
	TESTQ CX, CX
	JZ    copyend0
	MOVB  (AX), R13
	MOVB  R13, (BX)
	INCQ  AX
	INCQ  BX
	DECQ  CX
	JMP   copyend1

copyend0:
	VMOVQ X2, R13
	JMP   copied

copylong: // DX > 64: 64-byte chunks, the last one ending with the run
	LEAQ (DI)(BX*1), AX
	LEAQ (R8)(R10*1), BX
	MOVQ DX, CX

copyloop:
	VMOVDQU64 (AX), Z0
	VMOVDQU64 Z0, (BX)
	ADDQ      $64, AX
	ADDQ      $64, BX
	SUBQ      $64, CX
	CMPQ      CX, $64
	JGT       copyloop
	VMOVDQU64 -64(AX)(CX*1), Z0
	VMOVDQU64 Z0, -64(BX)(CX*1)
	JMP       copied

// The unchanged run goes on past block R12.
zskip:
	ADDQ      $64, R12
	LEAQ      64(R12), AX
	CMPQ      AX, R14
	JGT       zblock
	VMOVDQU64 (SI)(R12*1), Z0 // the next block alone first: changes
	VPCMPUB   $4, (DI)(R12*1), Z0, K1 // are often near each other
	KMOVQ     K1, AX
	TESTQ     AX, AX
	JNZ       zhit
	ADDQ      $64, R12

zgroup:
	LEAQ      256(R12), AX
	CMPQ      AX, R14
	JGT       zblock
	VMOVDQU64 (SI)(R12*1), Z0
	VMOVDQU64 64(SI)(R12*1), Z1
	VMOVDQU64 128(SI)(R12*1), Z2
	VMOVDQU64 192(SI)(R12*1), Z3
	VPCMPUB   $4, (DI)(R12*1), Z0, K1
	VPCMPUB   $4, 64(DI)(R12*1), Z1, K2
	VPCMPUB   $4, 128(DI)(R12*1), Z2, K3
	VPCMPUB   $4, 192(DI)(R12*1), Z3, K4
	KORQ      K1, K2, K5
	KORQ      K3, K4, K6
	KORTESTQ  K5, K6
	JNZ       zfind
	ADDQ      $256, R12
	JMP       zgroup

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

ztail: // the last block, partial: compare the page's last 64 bytes
	CMPQ      R14, $64
	JLT       ztiny
	VMOVDQU64 -64(SI)(R14*1), Z0
	VPCMPUB   $4, -64(DI)(R14*1), Z0, K1
	KMOVQ     K1, AX
	MOVQ      R12, CX
	SUBQ      R14, CX
	ADDQ      $64, CX
	SHRXQ     CX, AX, AX // bit 0 for byte R12; bytes past the page: unchanged
	TESTQ     AX, AX
	JZ        zend
	JMP       zhit

ztiny: // a page shorter than 64 bytes: loads masked to it
	VMOVDQU8.Z (SI)(R12*1), K7, Z0
	VMOVDQU8.Z (DI)(R12*1), K7, Z1
	VPCMPUB    $4, Z1, Z0, K1
	KMOVQ      K1, AX
	TESTQ      AX, AX
	JZ         zend

zhit: // AX: the changed-bytes mask of block R12, not 0
	MOVQ   AX, R13
	SHLQ   $1, R13
	XORQ   AX, R13
	TZCNTQ R13, BX
	BLSRQ  R13, R13
	ADDQ   R12, BX
	JMP    nzrun

zend: // no change up to the end of the page: the final run is not written
	LEAQ 2(R10), AX
	CMPQ AX, R9
	JGT  overflow
	MOVQ R10, ret+48(FP)
	VZEROUPPER
	RET

// The changed run from BX goes on past block R12.
nzskip:
	MOVQ R9, DX             // DX = BX + limit - d - 2: a run covering
	SUBQ R10, DX            // [BX, R12) with R12 > DX cannot fit
	LEAQ -2(DX)(BX*1), DX
	ADDQ $64, R12

nzgroup:
	CMPQ      R12, DX
	JGT       overflow
	LEAQ      256(R12), AX
	CMPQ      AX, R14
	JGT       nzblock
	VMOVDQU64 (SI)(R12*1), Z0
	VMOVDQU64 64(SI)(R12*1), Z1
	VMOVDQU64 128(SI)(R12*1), Z2
	VMOVDQU64 192(SI)(R12*1), Z3
	VPCMPUB   $0, (DI)(R12*1), Z0, K1
	VPCMPUB   $0, 64(DI)(R12*1), Z1, K2
	VPCMPUB   $0, 128(DI)(R12*1), Z2, K3
	VPCMPUB   $0, 192(DI)(R12*1), Z3, K4
	KORQ      K1, K2, K5
	KORQ      K3, K4, K6
	KORTESTQ  K5, K6
	JNZ       nzfind
	ADDQ      $256, R12
	JMP       nzgroup

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

nztail: // the last block, partial, where the run ends: the bytes past the
	// page count as unchanged
	CMPQ      R14, $64
	JLT       nztiny
	VMOVDQU64 -64(SI)(R14*1), Z0
	VPCMPUB   $0, -64(DI)(R14*1), Z0, K1
	KMOVQ     K1, AX
	MOVQ      R12, CX
	SUBQ      R14, CX
	ADDQ      $64, CX
	SHRXQ     CX, AX, AX
	KMOVQ     K7, R13
	NOTQ      R13
	ORQ       R13, AX
	JMP       nzhit

nztiny:
	VMOVDQU8.Z (SI)(R12*1), K7, Z0
	VMOVDQU8.Z (DI)(R12*1), K7, Z1
	VPCMPUB    $0, Z1, Z0, K1
	KMOVQ      K1, AX

nzhit: // AX: the equal-bytes mask of block R12, not 0
	MOVQ   AX, R13
	SHLQ   $1, R13
	XORQ   AX, R13
	TZCNTQ R13, CX
	BLSRQ  R13, R13
	ADDQ   R12, CX
	JMP    pair

nzend: // the run ends the page (n is a multiple of 64)
	MOVQ R14, CX
	XORQ R13, R13
	JMP  pair

tight: // the exact room check: d + both headers + DX <= limit
	LEAQ 0x3F80(AX), CX
	SHRQ $14, CX            // 1 if AX takes two bytes
	LEAQ 2(R10)(CX*1), CX
	ADDQ DX, CX
	CMPQ DX, $0x80
	SBBQ $-1, CX            // + 1 if DX takes two bytes
	CMPQ CX, R9
	JLE  headers

overflow:
	MOVQ $-1, ret+48(FP)
	VZEROUPPER
	RET
