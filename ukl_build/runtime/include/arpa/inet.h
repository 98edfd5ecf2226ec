/* SPDX-License-Identifier: LGPL-2.1 OR MIT */
#ifndef _UKL_ARPA_INET_H
#define _UKL_ARPA_INET_H
#include <netinet/in.h>

/* Dotted quad to network byte order; 0 on malformed input (like inet_pton's failure). */
static __attribute__((unused))
int inet_pton4(const char *s, struct in_addr *out)
{
	uint32_t addr = 0;
	int part;

	for (part = 0; part < 4; part++) {
		unsigned int v = 0, digits = 0;

		while (*s >= '0' && *s <= '9' && digits < 4) {
			v = v * 10 + (*s++ - '0');
			digits++;
		}
		if (!digits || v > 255 || (part < 3 && *s++ != '.'))
			return 0;
		addr = addr << 8 | v;
	}
	if (*s)
		return 0;
	out->s_addr = htonl(addr);
	return 1;
}
#endif
