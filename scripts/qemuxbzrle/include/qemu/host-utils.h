/*
 * Stand-in for QEMU's qemu/host-utils.h: its ctz64, which
 * scripts/qemu-xbzrle-bench.sh cuts out of QEMU's header into
 * qemu_ctz64.h. Written for livemig.
 */
#ifndef LIVEMIG_QEMU_HOST_UTILS_H
#define LIVEMIG_QEMU_HOST_UTILS_H
#include <stdint.h>
#include "qemu_ctz64.h"
#endif
