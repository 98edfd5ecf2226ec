// SPDX-License-Identifier: MIT
/*
 * sysbench ITERATIONS: time ITERATIONS calls of a few cheap system calls
 * and print "bench NAME PICOSECONDS_PER_CALL" lines, then "sysbench: done".
 */
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <sys/syscall.h>

static unsigned long long now_ns(void)
{
	struct timespec ts;

	syscall(__NR_clock_gettime, 1 /* CLOCK_MONOTONIC */, (long)&ts, 0, 0, 0, 0);
	return ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static char buf[4096];

#define BENCH(name, n, expr) do {					\
	unsigned long long t0 = now_ns();				\
	for (long i = 0; i < (n); i++)					\
		expr;							\
	printf("bench %s %llu\n", name, (now_ns() - t0) * 1000 / (n));	\
} while (0)

int main(int argc, char **argv)
{
	long n = argc > 1 ? atol(argv[1]) : 200000;
	int zero = open("/dev/zero", O_RDONLY, 0);
	int null = open("/dev/null", O_WRONLY, 0);

	if (zero < 0 || null < 0 || n <= 0) {
		printf("sysbench: setup failed\n");
		return 1;
	}
	printf("sysbench: ready, %ld iterations\n", n);
	BENCH("getppid", n, getppid());
	BENCH("read_1B_dev_zero", n, read(zero, buf, 1));
	BENCH("write_1B_dev_null", n, write(null, buf, 1));
	BENCH("read_4KiB_dev_zero", n, read(zero, buf, 4096));
	printf("sysbench: done\n");
	return 0;
}
