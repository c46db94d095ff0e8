/*
 * Stand-in for QEMU's host/cpuinfo.h: the one bit migration/xbzrle.c asks
 * for, from GCC's CPU detection. Written for livemig.
 */
#ifndef LIVEMIG_HOST_CPUINFO_H
#define LIVEMIG_HOST_CPUINFO_H
#define CPUINFO_AVX512BW (1u << 0)
static inline unsigned cpuinfo_init(void)
{
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512bw") ? CPUINFO_AVX512BW : 0;
}
#endif
