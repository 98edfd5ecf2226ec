/* SPDX-License-Identifier: LGPL-2.1 OR MIT */
/* nolibc's <stdio.h> plus snprintf()/vsnprintf(). */
#ifndef _UKL_STDIO_H
#define _UKL_STDIO_H
#include_next <stdio.h>
#include <stdarg.h>

struct __ukl_out {
	char *buf;
	size_t size;
	size_t len;
};

static __attribute__((unused))
void __ukl_putc(struct __ukl_out *o, char c)
{
	if (o->len + 1 < o->size)
		o->buf[o->len] = c;
	o->len++;
}

static __attribute__((unused))
void __ukl_pad(struct __ukl_out *o, const char *s, size_t n, int width, int left, char pad)
{
	int fill = width > (int)n ? width - (int)n : 0;

	while (!left && fill-- > 0)
		__ukl_putc(o, pad);
	while (n--)
		__ukl_putc(o, *s++);
	while (left && fill-- > 0)
		__ukl_putc(o, ' ');
}

/* %[-0][width][l|ll|z](d|i|u|x|X|s|c|p|%) */
static __attribute__((unused))
int vsnprintf(char *buf, size_t size, const char *fmt, va_list ap)
{
	struct __ukl_out o = { buf, size, 0 };
	char tmp[24];

	for (; *fmt; fmt++) {
		int left = 0, width = 0, lng = 0;
		char pad = ' ';
		unsigned long long v;
		const char *s;
		int neg = 0, base = 10, upper = 0, i;

		if (*fmt != '%') {
			__ukl_putc(&o, *fmt);
			continue;
		}
		fmt++;
		for (; *fmt == '-' || *fmt == '0'; fmt++) {
			if (*fmt == '-')
				left = 1;
			else
				pad = '0';
		}
		for (; *fmt >= '0' && *fmt <= '9'; fmt++)
			width = width * 10 + (*fmt - '0');
		for (; *fmt == 'l' || *fmt == 'z'; fmt++)
			lng++;
		switch (*fmt) {
		case 'd': case 'i': {
			long long sv = lng ? va_arg(ap, long long) : va_arg(ap, int);

			neg = sv < 0;
			v = neg ? -(unsigned long long)sv : (unsigned long long)sv;
			goto number;
		}
		case 'p':
			v = (unsigned long)va_arg(ap, void *);
			base = 16;
			__ukl_putc(&o, '0');
			__ukl_putc(&o, 'x');
			goto number;
		case 'X':
			upper = 1;
			/* fall through */
		case 'x':
			base = 16;
			/* fall through */
		case 'u':
			v = lng ? va_arg(ap, unsigned long long) : va_arg(ap, unsigned int);
number:
			i = sizeof(tmp);
			do {
				int d = v % base;

				tmp[--i] = d < 10 ? '0' + d : (upper ? 'A' : 'a') + d - 10;
				v /= base;
			} while (v);
			if (neg)
				tmp[--i] = '-';
			__ukl_pad(&o, tmp + i, sizeof(tmp) - i, width, left, pad);
			break;
		case 's':
			s = va_arg(ap, const char *);
			if (!s)
				s = "(null)";
			__ukl_pad(&o, s, strlen(s), width, left, ' ');
			break;
		case 'c':
			tmp[0] = (char)va_arg(ap, int);
			__ukl_pad(&o, tmp, 1, width, left, ' ');
			break;
		case '%':
			__ukl_putc(&o, '%');
			break;
		default:
			return -1;
		}
	}
	if (size)
		buf[o.len < size ? o.len : size - 1] = 0;
	return (int)o.len;
}

static __attribute__((unused, format(printf, 3, 4)))
int snprintf(char *buf, size_t size, const char *fmt, ...)
{
	va_list ap;
	int ret;

	va_start(ap, fmt);
	ret = vsnprintf(buf, size, fmt, ap);
	va_end(ap);
	return ret;
}
#endif
