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
#include <ukl_nolibc_has.h>	/* written into the sysroot by ukl-build */

/* File flags nolibc's arch.h leaves out (values from asm-generic/fcntl.h). */
#ifndef O_CLOEXEC
#define O_CLOEXEC	02000000
#endif
#ifndef O_ACCMODE
#define O_ACCMODE	00000003
#endif
#ifndef O_NOFOLLOW
#define O_NOFOLLOW	00400000
#endif
#ifndef F_GETFD
#define F_DUPFD		0
#define F_GETFD		1
#define F_SETFD		2
#define F_GETFL		3
#define F_SETFL		4
#endif
#ifndef FD_CLOEXEC
#define FD_CLOEXEC	1
#endif

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
