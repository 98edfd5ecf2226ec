/* SPDX-License-Identifier: LGPL-2.1 OR MIT */
/* nolibc's <string.h> plus memchr(), strstr(), strncasecmp(). */
#ifndef _UKL_STRING_H
#define _UKL_STRING_H
#include_next <string.h>

static __attribute__((unused))
void *memchr(const void *s, int c, size_t n)
{
	const unsigned char *p = s;

	for (; n; n--, p++)
		if (*p == (unsigned char)c)
			return (void *)p;
	return NULL;
}

static __attribute__((unused))
int strncasecmp(const char *a, const char *b, size_t n)
{
	for (; n; n--, a++, b++) {
		int ca = (*a >= 'A' && *a <= 'Z') ? *a + 32 : *a;
		int cb = (*b >= 'A' && *b <= 'Z') ? *b + 32 : *b;

		if (ca != cb || !ca)
			return ca - cb;
	}
	return 0;
}

static __attribute__((unused))
char *strstr(const char *hay, const char *needle)
{
	size_t n = strlen(needle);

	for (; *hay; hay++)
		if (!strncmp(hay, needle, n))
			return (char *)hay;
	return n ? NULL : (char *)hay;
}
#endif
