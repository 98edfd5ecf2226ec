/* SPDX-License-Identifier: LGPL-2.1 OR MIT */
/*
 * nolibc's arch.h for UKL mode: the tree's own x86-64 definitions, with the
 * system call macros redirected from the `syscall` instruction to a plain
 * call into the kernel (ukl_syscall(), see kernel_patches/).  The app's
 * symbols get the "ukl_app_" prefix; ukl-build binds these references to the
 * kernel's entry points.
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

/*
 * Shortcuts (built with -DUKL_SHORTCUTS, [tool.ukl-build] shortcuts = true):
 * the hottest calls go to the kernel's direct entry points instead of
 * ukl_syscall().  nolibc passes the call number as a constant, so each test
 * below folds at compile time and a call site names one function.
 */
#ifdef UKL_SHORTCUTS
long __ukl_sc_getppid(void);
long __ukl_sc_read(long fd, long buf, long count);
long __ukl_sc_write(long fd, long buf, long count);
long __ukl_sc_sendto(long fd, long buf, long len, long flags, long addr, long addrlen);
long __ukl_sc_recvfrom(long fd, long buf, long len, long flags, long addr, long addrlen);
long __ukl_sc_accept4(long fd, long addr, long len, long flags);
long __ukl_sc_readv(long fd, long vec, long vlen);
long __ukl_sc_writev(long fd, long vec, long vlen);
long __ukl_sc_sendmsg(long fd, long msg, long flags);
long __ukl_sc_recvmsg(long fd, long msg, long flags);
long __ukl_sc_epoll_wait(long epfd, long events, long maxevents, long timeout);
long __ukl_sc_epoll_ctl(long epfd, long op, long fd, long event);

#undef my_syscall0
#define my_syscall0(n) ((n) == __NR_getppid ? __ukl_sc_getppid() :			\
			__ukl_syscall((long)(n), 0, 0, 0, 0, 0, 0))
#undef my_syscall3
#define my_syscall3(n, a, b, c)							\
	((n) == __NR_read ? __ukl_sc_read((long)(a), (long)(b), (long)(c)) :		\
	 (n) == __NR_write ? __ukl_sc_write((long)(a), (long)(b), (long)(c)) :		\
	 (n) == __NR_readv ? __ukl_sc_readv((long)(a), (long)(b), (long)(c)) :		\
	 (n) == __NR_writev ? __ukl_sc_writev((long)(a), (long)(b), (long)(c)) :	\
	 (n) == __NR_sendmsg ? __ukl_sc_sendmsg((long)(a), (long)(b), (long)(c)) :	\
	 (n) == __NR_recvmsg ? __ukl_sc_recvmsg((long)(a), (long)(b), (long)(c)) :	\
	 __ukl_syscall((long)(n), (long)(a), (long)(b), (long)(c), 0, 0, 0))
#undef my_syscall4
#define my_syscall4(n, a, b, c, d)							\
	((n) == __NR_accept4 ? __ukl_sc_accept4((long)(a), (long)(b), (long)(c), (long)(d)) : \
	 (n) == __NR_epoll_wait ?							\
	 __ukl_sc_epoll_wait((long)(a), (long)(b), (long)(c), (long)(d)) :		\
	 (n) == __NR_epoll_ctl ?							\
	 __ukl_sc_epoll_ctl((long)(a), (long)(b), (long)(c), (long)(d)) :		\
	 __ukl_syscall((long)(n), (long)(a), (long)(b), (long)(c), (long)(d), 0, 0))
#undef my_syscall6
#define my_syscall6(n, a, b, c, d, e, f)						\
	((n) == __NR_sendto ?								\
	 __ukl_sc_sendto((long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f)) : \
	 (n) == __NR_recvfrom ?								\
	 __ukl_sc_recvfrom((long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f)) : \
	 __ukl_syscall((long)(n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f)))
#endif

#endif /* _UKL_NOLIBC_ARCH_H */
