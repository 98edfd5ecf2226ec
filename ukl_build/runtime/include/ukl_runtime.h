/* SPDX-License-Identifier: LGPL-2.1 OR MIT */
/*
 * ukl-build runtime: what the kernel tree's nolibc lacks, as thin wrappers.
 *
 * Every wrapper goes through nolibc's my_syscallN() macros, so the same
 * source runs as a user-mode /init (the macros issue `syscall`) and, in UKL
 * mode, linked into the kernel (the macros are redirected to the bridge).
 */
#ifndef _UKL_RUNTIME_H
#define _UKL_RUNTIME_H

#include <nolibc.h>

/* A raw syscall result (-errno on failure) to the libc convention. */
#define __ukl_ret(type, expr) ({					\
	long __ukl_r = (long)(expr);					\
	if (__ukl_r < 0 && __ukl_r > -4096) {				\
		SET_ERRNO(-__ukl_r);					\
		__ukl_r = -1;						\
	}								\
	(type)__ukl_r;							\
})

#endif /* _UKL_RUNTIME_H */
