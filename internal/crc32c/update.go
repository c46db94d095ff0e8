package crc32c

import "hash/crc32"

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// foldBlock is how many bytes the vector path folds at a time: four
// 512-bit registers.
const foldBlock = 256

// Update returns the CRC32C of p appended to data whose CRC32C is crc:
// hash/crc32.Update with the Castagnoli table, the same value. Where the
// CPU has AVX-512 with carry-less multiplication (VPCLMULQDQ) it folds
// blocks of 256 bytes at a time with it, which runs at several times the
// speed of the CRC32 instruction (BenchmarkUpdate); elsewhere, and for
// what is left over, it is hash/crc32's own code.
func Update(crc uint32, p []byte) uint32 {
	if hasFold && len(p) >= 2*foldBlock {
		n := len(p) &^ (foldBlock - 1)
		crc = ^foldUpdate(^crc, p[:n])
		p = p[n:]
	}
	return crc32.Update(crc, castagnoli, p)
}

// Checksum returns the CRC32C of p: Update(0, p).
func Checksum(p []byte) uint32 { return Update(0, p) }

// xPow returns x^e modulo the polynomial, reflected, for e ≥ 0.
func xPow(e int) uint32 {
	return mulmod(xPow8n(e/8), 1<<(31-e%8))
}

// foldConst is the 64-bit operand of a carry-less multiplication that
// moves a 64-bit half of a 128-bit lane forward by x^e: the reflected
// remainder of x^e in the operand's high 32 bits, where the product's
// bits line up with the lane's (see foldKeys).
func foldConst(e int) uint64 { return uint64(xPow(e)) << 32 }

// foldKeys are the vector path's constants. Reflected, a 128-bit lane
// read from memory holds its 16 bytes' polynomial with bit m the
// coefficient of x^(127-m); to move it d bits forward (multiply it by
// x^d), its low half (the first 8 bytes, the higher powers) is multiplied
// by x^(d+63) and its high half by x^(d-1), each from the operand of
// foldConst: the products land in the lane's own bit order.
//
//   - fold: d = 2048, the four registers' distance from one block of 256
//     bytes to the next;
//   - reduce: for lane k of 16 (k = 4·register + lane) of the last block,
//     d = 128·(15-k), bringing every lane onto the last; the last lane's
//     high half is already there and its constant is 0.
type foldKeys struct {
	fold   [2]uint64
	reduce [16][2]uint64
}

var keys = func() *foldKeys {
	k := new(foldKeys)
	k.fold = [2]uint64{foldConst(2048 + 63), foldConst(2048 - 1)}
	for i := range 16 {
		d := 128 * (15 - i)
		k.reduce[i][0] = foldConst(d + 63)
		if d > 0 {
			k.reduce[i][1] = foldConst(d - 1)
		}
	}
	return k
}()
