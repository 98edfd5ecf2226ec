// SPDX-License-Identifier: MIT
/*
 * sysbench ITERATIONS: time ITERATIONS calls of a few cheap system calls,
 * and ITERATIONS/10 round trips of 64 bytes over a loopback TCP connection
 * (write, read, write back, read back), and print
 * "bench NAME PICOSECONDS_PER_CALL" lines, then "sysbench: done".
 */
#include <stdio.h>
#include <stdlib.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <netinet/in.h>
#include <netinet/tcp.h>

static unsigned long long now_ns(void)
{
	struct timespec ts;

	syscall(__NR_clock_gettime, 1 /* CLOCK_MONOTONIC */, (long)&ts, 0, 0, 0, 0);
	return ts.tv_sec * 1000000000ULL + ts.tv_nsec;
}

static char buf[4096];

/* A connected pair of TCP sockets over loopback: *a the client, *b the server's end. */
static int tcp_pair(int *a, int *b)
{
	struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(7100) };
	int one = 1, lfd = socket(AF_INET, SOCK_STREAM, 0);

	addr.sin_addr.s_addr = htonl(0x7f000001);
	setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(lfd, (struct sockaddr *)&addr, sizeof(addr)) < 0 || listen(lfd, 1) < 0)
		return -1;
	*a = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(*a, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		return -1;
	*b = accept4(lfd, NULL, NULL, 0);
	close(lfd);
	setsockopt(*a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	setsockopt(*b, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return *b < 0 ? -1 : 0;
}

static int pingpong(int a, int b)
{
	return write(a, buf, 64) == 64 && read(b, buf, 64) == 64 &&
	       write(b, buf, 64) == 64 && read(a, buf, 64) == 64;
}

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
	int a, b;

	if (zero < 0 || null < 0 || n <= 0 || tcp_pair(&a, &b) < 0) {
		printf("sysbench: setup failed\n");
		return 1;
	}
	printf("sysbench: ready, %ld iterations\n", n);
	BENCH("getppid", n, getppid());
	BENCH("read_1B_dev_zero", n, read(zero, buf, 1));
	BENCH("write_1B_dev_null", n, write(null, buf, 1));
	BENCH("read_4KiB_dev_zero", n, read(zero, buf, 4096));
	BENCH("tcp_roundtrip_64B", n / 10 + 1, pingpong(a, b));
	printf("sysbench: done\n");
	return 0;
}
