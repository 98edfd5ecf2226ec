/* SPDX-License-Identifier: LGPL-2.1 OR MIT */
#ifndef _UKL_SYS_EPOLL_H
#define _UKL_SYS_EPOLL_H
#include <ukl_runtime.h>
#include <linux/eventpoll.h>

static __attribute__((unused))
int epoll_create1(int flags)
{
	return __ukl_ret(int, my_syscall1(__NR_epoll_create1, flags));
}

static __attribute__((unused))
int epoll_ctl(int epfd, int op, int fd, struct epoll_event *ev)
{
	return __ukl_ret(int, my_syscall4(__NR_epoll_ctl, epfd, op, fd, ev));
}

static __attribute__((unused))
int epoll_wait(int epfd, struct epoll_event *evs, int max, int timeout)
{
	return __ukl_ret(int, my_syscall4(__NR_epoll_wait, epfd, evs, max, timeout));
}
#endif
