/* SPDX-License-Identifier: LGPL-2.1 OR MIT */
/*
 * <limits.h>: the compiler's own, plus the kernel's POSIX limits.
 *
 * GCC's limits.h recurses into "the system's" limits.h with #include_next
 * unless a libc has claimed it by defining _LIBC_LIMITS_H_; under -nostdinc
 * there is none behind it, which stopped every program that included it
 * ("no include path in which to search for limits.h").  nolibc is that
 * libc here, so it claims it.
 */
#ifndef _UKL_LIMITS_H
#define _UKL_LIMITS_H
#ifndef _LIBC_LIMITS_H_
#define _LIBC_LIMITS_H_
#endif
#include_next <limits.h>
#include <linux/limits.h>	/* PATH_MAX, NAME_MAX, PIPE_BUF, ... */
#ifndef SSIZE_MAX
#define SSIZE_MAX LONG_MAX
#endif
#endif
