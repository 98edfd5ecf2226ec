/* SPDX-License-Identifier: LGPL-2.1 OR MIT */
/*
 * nolibc's <signal.h> plus signal masks and synchronous waiting.  In UKL mode
 * signal handlers do not run (no return to user mode, see docs/ukl.md), so
 * block a signal and take it with sigwaitinfo()/sigtimedwait().
 */
#ifndef _UKL_SIGNAL_H
#define _UKL_SIGNAL_H
#include_next <signal.h>
#include <ukl_runtime.h>
#include <asm/siginfo.h>

static __attribute__((unused))
int sigemptyset(sigset_t *set)
{
	*set = 0;
	return 0;
}

static __attribute__((unused))
int sigaddset(sigset_t *set, int sig)
{
	*set |= 1UL << (sig - 1);
	return 0;
}

static __attribute__((unused))
int sigprocmask(int how, const sigset_t *set, sigset_t *old)
{
	return __ukl_ret(int, my_syscall4(__NR_rt_sigprocmask, how, set, old, sizeof(sigset_t)));
}

static __attribute__((unused))
int sigtimedwait(const sigset_t *set, siginfo_t *info, const struct timespec *timeout)
{
	return __ukl_ret(int, my_syscall4(__NR_rt_sigtimedwait, set, info, timeout,
					  sizeof(sigset_t)));
}

static __attribute__((unused))
int sigwaitinfo(const sigset_t *set, siginfo_t *info)
{
	return sigtimedwait(set, info, NULL);
}
#endif
