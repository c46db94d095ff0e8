/*
 * Stand-in for QEMU's qemu/cutils.h: the two ULEB128 helpers
 * migration/xbzrle.c calls. Their definitions are QEMU's own, cut out of
 * util/cutils.c by scripts/qemu-xbzrle-bench.sh. Written for livemig.
 */
#ifndef LIVEMIG_QEMU_CUTILS_H
#define LIVEMIG_QEMU_CUTILS_H
#include <stdint.h>
int uleb128_encode_small(uint8_t *out, uint32_t n);
int uleb128_decode_small(const uint8_t *in, uint32_t *n);
#endif
