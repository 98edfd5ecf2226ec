/* SPDX-License-Identifier: LGPL-2.1 OR MIT */
#ifndef _UKL_FCNTL_H
#define _UKL_FCNTL_H
#include <ukl_runtime.h>

static __attribute__((unused))
int fcntl(int fd, int cmd, long arg)
{
	return __ukl_ret(int, my_syscall3(__NR_fcntl, fd, cmd, arg));
}
#endif
