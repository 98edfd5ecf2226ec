/* SPDX-License-Identifier: LGPL-2.1 OR MIT */
#ifndef _UKL_SYS_SYSCALL_H
#define _UKL_SYS_SYSCALL_H
#include <ukl_runtime.h>

/*
 * syscall(2) for up to six arguments; goes through the same path as every wrapper.
 * Newer nolibc (6.12's) has its own, a macro.
 */
#ifndef UKL_NOLIBC_HAS_SYSCALL
static __attribute__((unused))
long syscall(long nr, long a, long b, long c, long d, long e, long f)
{
	return __ukl_ret(long, my_syscall6(nr, a, b, c, d, e, f));
}
#endif
#endif
