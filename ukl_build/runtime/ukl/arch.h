/* SPDX-License-Identifier: LGPL-2.1 OR MIT */
/*
 * nolibc's arch.h for UKL mode: the tree's own x86-64 definitions, with the
 * system call macros redirected from the `syscall` instruction to a plain
 * call into the kernel (ukl_syscall(), see kernel_patches/).  The app's
 * symbols get the "ukl_" prefix; ukl-build renames this one reference back.
 */
#ifndef _UKL_NOLIBC_ARCH_H
#define _UKL_NOLIBC_ARCH_H

#include "arch-x86_64.h"

long __ukl_syscall(long nr, long a1, long a2, long a3, long a4, long a5, long a6);

#undef my_syscall0
#undef my_syscall1
#undef my_syscall2
#undef my_syscall3
#undef my_syscall4
#undef my_syscall5
#undef my_syscall6

#define my_syscall0(n) __ukl_syscall((long)(n), 0, 0, 0, 0, 0, 0)
#define my_syscall1(n, a) __ukl_syscall((long)(n), (long)(a), 0, 0, 0, 0, 0)
#define my_syscall2(n, a, b) __ukl_syscall((long)(n), (long)(a), (long)(b), 0, 0, 0, 0)
#define my_syscall3(n, a, b, c) \
	__ukl_syscall((long)(n), (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define my_syscall4(n, a, b, c, d) \
	__ukl_syscall((long)(n), (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)
#define my_syscall5(n, a, b, c, d, e) \
	__ukl_syscall((long)(n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), 0)
#define my_syscall6(n, a, b, c, d, e, f) \
	__ukl_syscall((long)(n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))

#endif /* _UKL_NOLIBC_ARCH_H */
