// SPDX-License-Identifier: MIT
/* Uses every freestanding header a C program may take from the compiler. */
#include <float.h>
#include <limits.h>
#include <stdalign.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdnoreturn.h>
#include <stdio.h>
#include <stdlib.h>

struct pair {
	char c;
	alignas(16) int n;
};

static int sum(int count, ...)
{
	va_list ap;
	int total = 0;

	va_start(ap, count);
	while (count--)
		total += va_arg(ap, int);
	va_end(ap);
	return total;
}

static noreturn void finish(bool ok)
{
	exit(ok ? 0 : 1);
	__builtin_unreachable();	/* nolibc's exit() is not declared noreturn */
}

int main(void)
{
	bool ok = CHAR_BIT == 8 && INT_MAX == 2147483647 && LONG_MAX == INT64_MAX &&
		  UCHAR_MAX == 255 && PATH_MAX == 4096 && SSIZE_MAX == LONG_MAX &&
		  FLT_RADIX == 2 && DBL_MANT_DIG == 53 && offsetof(struct pair, n) == 16 &&
		  alignof(struct pair) == 16 && sizeof(ptrdiff_t) == 8 && SIZE_MAX == UINT64_MAX &&
		  sum(3, 1, 2, 39) == 42;

	printf("stdheaders: %s (INT_MAX %d, DBL_DIG %d, sum %d)\n", ok ? "ok" : "WRONG", INT_MAX,
	       DBL_DIG, sum(3, 1, 2, 39));
	finish(ok);
}
