/*
 * Stand-in for QEMU's qemu/osdep.h, enough to compile QEMU's
 * migration/xbzrle.c alone (livemig's scripts/qemu-xbzrle-bench.sh).
 * Written for livemig; not QEMU code.
 */
#ifndef LIVEMIG_QEMU_OSDEP_H
#define LIVEMIG_QEMU_OSDEP_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* glib's g_assert, which QEMU keeps enabled in its builds. */
#define g_assert(expr)                                                      \
    do {                                                                    \
        if (__builtin_expect(!(expr), 0)) {                                 \
            fprintf(stderr, "assertion failed: %s\n", #expr);               \
            abort();                                                        \
        }                                                                   \
    } while (0)
#endif
