/* SPDX-License-Identifier: LGPL-2.1 OR MIT */
#ifndef _UKL_SYS_UIO_H
#define _UKL_SYS_UIO_H
#include <ukl_runtime.h>
#include <linux/uio.h>

static __attribute__((unused))
ssize_t readv(int fd, const struct iovec *iov, int n)
{
	return __ukl_ret(ssize_t, my_syscall3(__NR_readv, fd, iov, n));
}

static __attribute__((unused))
ssize_t writev(int fd, const struct iovec *iov, int n)
{
	return __ukl_ret(ssize_t, my_syscall3(__NR_writev, fd, iov, n));
}
#endif
