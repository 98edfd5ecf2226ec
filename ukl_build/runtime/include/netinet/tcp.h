/* SPDX-License-Identifier: LGPL-2.1 OR MIT */
#ifndef _UKL_NETINET_TCP_H
#define _UKL_NETINET_TCP_H
#include <netinet/in.h>
#define TCP_NODELAY 1
#endif
