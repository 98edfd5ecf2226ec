/* SPDX-License-Identifier: LGPL-2.1 OR MIT */
#ifndef _UKL_SYS_SOCKET_H
#define _UKL_SYS_SOCKET_H
#include <ukl_runtime.h>
#include <linux/socket.h>
#include <linux/uio.h>
#include <asm/socket.h>

typedef unsigned int socklen_t;
typedef unsigned short sa_family_t;

struct sockaddr {
	sa_family_t sa_family;
	char sa_data[14];
};

struct sockaddr_storage {
	sa_family_t ss_family;
	char __ss_data[126];
};

#define AF_UNSPEC	0
#define AF_UNIX		1
#define AF_INET		2
#define AF_INET6	10
#define PF_UNIX		AF_UNIX
#define PF_INET		AF_INET
#define SOCK_STREAM	1
#define SOCK_DGRAM	2
#define SOCK_NONBLOCK	O_NONBLOCK
#define SOCK_CLOEXEC	O_CLOEXEC
#define SHUT_RD		0
#define SHUT_WR		1
#define SHUT_RDWR	2
#define MSG_PEEK	0x2
#define MSG_DONTWAIT	0x40
#define MSG_NOSIGNAL	0x4000
#define SOMAXCONN	4096

static __attribute__((unused))
int socket(int domain, int type, int protocol)
{
	return __ukl_ret(int, my_syscall3(__NR_socket, domain, type, protocol));
}

static __attribute__((unused))
int bind(int fd, const struct sockaddr *addr, socklen_t len)
{
	return __ukl_ret(int, my_syscall3(__NR_bind, fd, addr, len));
}

static __attribute__((unused))
int listen(int fd, int backlog)
{
	return __ukl_ret(int, my_syscall2(__NR_listen, fd, backlog));
}

static __attribute__((unused))
int accept4(int fd, struct sockaddr *addr, socklen_t *len, int flags)
{
	return __ukl_ret(int, my_syscall4(__NR_accept4, fd, addr, len, flags));
}

static __attribute__((unused))
int accept(int fd, struct sockaddr *addr, socklen_t *len)
{
	return accept4(fd, addr, len, 0);
}

static __attribute__((unused))
int connect(int fd, const struct sockaddr *addr, socklen_t len)
{
	return __ukl_ret(int, my_syscall3(__NR_connect, fd, addr, len));
}

static __attribute__((unused))
int shutdown(int fd, int how)
{
	return __ukl_ret(int, my_syscall2(__NR_shutdown, fd, how));
}

static __attribute__((unused))
int setsockopt(int fd, int level, int name, const void *val, socklen_t len)
{
	return __ukl_ret(int, my_syscall5(__NR_setsockopt, fd, level, name, val, len));
}

static __attribute__((unused))
int getsockopt(int fd, int level, int name, void *val, socklen_t *len)
{
	return __ukl_ret(int, my_syscall5(__NR_getsockopt, fd, level, name, val, len));
}

static __attribute__((unused))
int getsockname(int fd, struct sockaddr *addr, socklen_t *len)
{
	return __ukl_ret(int, my_syscall3(__NR_getsockname, fd, addr, len));
}

static __attribute__((unused))
ssize_t sendto(int fd, const void *buf, size_t n, int flags,
	       const struct sockaddr *addr, socklen_t len)
{
	return __ukl_ret(ssize_t, my_syscall6(__NR_sendto, fd, buf, n, flags, addr, len));
}

static __attribute__((unused))
ssize_t recvfrom(int fd, void *buf, size_t n, int flags, struct sockaddr *addr, socklen_t *len)
{
	return __ukl_ret(ssize_t, my_syscall6(__NR_recvfrom, fd, buf, n, flags, addr, len));
}

/* The kernel's layout (struct user_msghdr), as glibc's */
struct msghdr {
	void *msg_name;
	socklen_t msg_namelen;
	struct iovec *msg_iov;
	size_t msg_iovlen;
	void *msg_control;
	size_t msg_controllen;
	int msg_flags;
};

static __attribute__((unused))
ssize_t sendmsg(int fd, const struct msghdr *msg, int flags)
{
	return __ukl_ret(ssize_t, my_syscall3(__NR_sendmsg, fd, msg, flags));
}

static __attribute__((unused))
ssize_t recvmsg(int fd, struct msghdr *msg, int flags)
{
	return __ukl_ret(ssize_t, my_syscall3(__NR_recvmsg, fd, msg, flags));
}

static __attribute__((unused))
ssize_t send(int fd, const void *buf, size_t n, int flags)
{
	return sendto(fd, buf, n, flags, NULL, 0);
}

static __attribute__((unused))
ssize_t recv(int fd, void *buf, size_t n, int flags)
{
	return recvfrom(fd, buf, n, flags, NULL, NULL);
}
#endif
