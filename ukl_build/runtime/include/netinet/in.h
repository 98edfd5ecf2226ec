/* SPDX-License-Identifier: LGPL-2.1 OR MIT */
#ifndef _UKL_NETINET_IN_H
#define _UKL_NETINET_IN_H
#include <sys/socket.h>
#include <linux/in.h>

static __attribute__((unused)) uint16_t htons(uint16_t v) { return __builtin_bswap16(v); }
static __attribute__((unused)) uint16_t ntohs(uint16_t v) { return __builtin_bswap16(v); }
static __attribute__((unused)) uint32_t htonl(uint32_t v) { return __builtin_bswap32(v); }
static __attribute__((unused)) uint32_t ntohl(uint32_t v) { return __builtin_bswap32(v); }
#endif
