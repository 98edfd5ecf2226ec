/* SPDX-License-Identifier: LGPL-2.1 OR MIT */
#ifndef _UKL_SYS_EPOLL_H
#define _UKL_SYS_EPOLL_H
#include <ukl_runtime.h>

/*
 * The POSIX layout (a union for data), not <linux/eventpoll.h>'s plain u64:
 * same size and, on x86-64, the same packing as the kernel's.
 */
typedef union epoll_data {
	void *ptr;
	int fd;
	uint32_t u32;
	uint64_t u64;
} epoll_data_t;

struct epoll_event {
	uint32_t events;
	epoll_data_t data;
} __attribute__((packed));

#define EPOLLIN		0x00000001
#define EPOLLPRI	0x00000002
#define EPOLLOUT	0x00000004
#define EPOLLERR	0x00000008
#define EPOLLHUP	0x00000010
#define EPOLLRDHUP	0x00002000
#define EPOLLEXCLUSIVE	(1U << 28)
#define EPOLLONESHOT	(1U << 30)
#define EPOLLET		(1U << 31)
#define EPOLL_CTL_ADD	1
#define EPOLL_CTL_DEL	2
#define EPOLL_CTL_MOD	3
#define EPOLL_CLOEXEC	O_CLOEXEC

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
