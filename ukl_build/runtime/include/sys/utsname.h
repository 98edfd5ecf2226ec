/* SPDX-License-Identifier: LGPL-2.1 OR MIT */
#ifndef _UKL_SYS_UTSNAME_H
#define _UKL_SYS_UTSNAME_H
#include <ukl_runtime.h>

/* Newer nolibc (6.12's) has its own */
#ifndef UKL_NOLIBC_HAS_UNAME
struct utsname {
	char sysname[65];
	char nodename[65];
	char release[65];
	char version[65];
	char machine[65];
	char domainname[65];
};

static __attribute__((unused))
int uname(struct utsname *u)
{
	return __ukl_ret(int, my_syscall1(__NR_uname, u));
}
#endif
#endif
