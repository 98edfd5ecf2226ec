// SPDX-License-Identifier: MIT
/*
 * ukl-build test app.  `probe syscalls` calls every system call wrapper the
 * runtime offers and prints one line per check, "name: result", with results
 * that do not depend on the mode (user or UKL), so the two outputs compare
 * equal.  `probe null`, `overflow`, `smash` (stack protector), `write-text`
 * and `write-rodata` crash on purpose; `probe address` prints where main is
 * (KASLR).  It builds on
 * nolibc (with ukl-build's runtime headers) and on musl; on musl, `probe
 * threads` also checks what the C library itself does per thread (TLS,
 * errno, mutexes and condition variables, malloc, clocks, atexit).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/utsname.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <pthread.h>
#include <signal.h>
#ifndef NOLIBC
#include <errno.h>
#include <sched.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#define inet_pton4(s, addr) inet_pton(AF_INET, s, addr)
#endif

static int failures;

/*
 * Wait until the console has sent what was written (TCSBRK with a non-zero
 * argument is tcdrain()).  In user mode the kernel panics ("Attempted to kill
 * init!") as soon as init's last thread is exiting, while a thread that exits
 * beside it may still hold the console open: what its close would have
 * drained is then lost (docs/design.md).  UKL mode drains in the kernel.
 */
#define PROBE_TCSBRK	0x5409

static void drain_output(void)
{
#ifndef NOLIBC
	fflush(stdout);
#endif
	ioctl(1, PROBE_TCSBRK, (void *)1);
}

static void check(const char *name, long got, long want)
{
	printf("%s: %s\n", name, got == want ? "ok" : "FAIL");
	if (got != want) {
		printf("  got %ld, want %ld (errno %d)\n", got, want, errno);
		failures++;
	}
}

static int cpl(void)
{
	unsigned short cs;

	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	return cs & 3;
}

static int tcp_listener(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);

	inet_pton4("127.0.0.1", &a.sin_addr);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 8) < 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static void net_checks(void)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(7001) }, peer;
	socklen_t len = sizeof(peer);
	struct epoll_event ev = { .events = EPOLLIN }, out[4];
	int lfd, cfd, sfd, ep, one = 1, val = 0;
	char buf[16];
	struct iovec iov[2] = { { "ab", 2 }, { "cd", 2 } };

	lfd = tcp_listener(7001);
	check("socket+bind+listen", lfd >= 0, 1);
	inet_pton4("127.0.0.1", &a.sin_addr);
	cfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	check("connect", connect(cfd, (struct sockaddr *)&a, sizeof(a)), 0);
	check("setsockopt(TCP_NODELAY)", setsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)), 0);
	len = sizeof(val);
	check("getsockopt(TCP_NODELAY)", getsockopt(cfd, IPPROTO_TCP, TCP_NODELAY, &val, &len) == 0 && val, 1);
	len = sizeof(peer);
	sfd = accept4(lfd, (struct sockaddr *)&peer, &len, SOCK_NONBLOCK);
	check("accept4", sfd >= 0 && len == sizeof(peer) && peer.sin_family == AF_INET, 1);
	len = sizeof(peer);
	check("getsockname", getsockname(lfd, (struct sockaddr *)&peer, &len) == 0 &&
	      ntohs(peer.sin_port) == 7001, 1);

	ep = epoll_create1(EPOLL_CLOEXEC);
	ev.data.u64 = 42;
	check("epoll_ctl", epoll_ctl(ep, EPOLL_CTL_ADD, sfd, &ev), 0);
	check("epoll_wait(empty)", epoll_wait(ep, out, 4, 0), 0);
	check("send", send(cfd, "ping", 4, 0), 4);
	check("epoll_wait", epoll_wait(ep, out, 4, 1000) == 1 && out[0].data.u64 == 42, 1);
	check("recv", recv(sfd, buf, sizeof(buf), 0) == 4 && !memcmp(buf, "ping", 4), 1);
	check("writev", writev(sfd, iov, 2), 4);
	iov[0].iov_base = buf;
	iov[0].iov_len = 3;
	iov[1].iov_base = buf + 3;
	iov[1].iov_len = 8;
	check("readv", readv(cfd, iov, 2) == 4 && !memcmp(buf, "abcd", 4), 1);
	/* readv()/writev(): on sockets the UKL shortcuts' own vector path, else the generic one */
	{
		struct iovec bad = { buf, (size_t)-1 };

		check("writev(socket, no buffers)", writev(cfd, iov, 0), 0);
		check("readv(socket, negative length)", readv(sfd, &bad, 1) == -1 && errno == EINVAL, 1);
		check("readv(epoll fd, EINVAL)", readv(ep, iov, 2) == -1 && errno == EINVAL, 1);
		check("readv(EBADF)", readv(999, iov, 2) == -1 && errno == EBADF, 1);
	}
	{
		struct iovec mv[2] = { { "ms", 2 }, { "g!", 2 } }, rv = { buf, sizeof(buf) };
		struct msghdr mh = { .msg_iov = mv, .msg_iovlen = 2 };
		struct msghdr rh = { .msg_iov = &rv, .msg_iovlen = 1 };

		check("sendmsg", sendmsg(cfd, &mh, 0), 4);
		check("epoll_wait(msg)", epoll_wait(ep, out, 4, 1000), 1);
		check("recvmsg", recvmsg(sfd, &rh, 0) == 4 && !memcmp(buf, "msg!", 4), 1);
		check("recvmsg(EAGAIN)", recvmsg(sfd, &rh, 0) == -1 && errno == EAGAIN, 1);
		check("recvmsg(ENOTSOCK)", recvmsg(ep, &rh, 0) == -1 && errno == ENOTSOCK, 1);
	}
	check("recv(EAGAIN)", recv(sfd, buf, sizeof(buf), MSG_DONTWAIT) == -1 && errno == EAGAIN, 1);
	/* read()/write() on sockets: the paths UKL shortcuts take straight to TCP */
	check("read(socket, EAGAIN)", read(sfd, buf, sizeof(buf)) == -1 && errno == EAGAIN, 1);
	check("write(socket)", write(cfd, "pong", 4), 4);
	check("write(socket, 0 bytes)", write(cfd, buf, 0), 0);
	check("read(socket, 0 bytes)", read(sfd, buf, 0), 0);
	check("epoll_wait(pong)", epoll_wait(ep, out, 4, 1000), 1);
	check("read(socket)", read(sfd, buf, sizeof(buf)) == 4 && !memcmp(buf, "pong", 4), 1);
	check("read(EBADF)", read(999, buf, 1) == -1 && errno == EBADF, 1);
	check("send(ENOTSOCK)", send(ep, "x", 1, 0) == -1 && errno == ENOTSOCK, 1);
	check("shutdown", shutdown(cfd, SHUT_WR), 0);
	check("read(EOF)", read(sfd, buf, sizeof(buf)), 0);
	close(cfd);
	close(sfd);
	close(ep);

	/* UDP: sendto()/recvfrom() with addresses, and an empty datagram */
	{
		struct sockaddr_in ua = { .sin_family = AF_INET, .sin_port = htons(7002) };
		struct sockaddr_in from;
		int u1 = socket(AF_INET, SOCK_DGRAM, 0), u2 = socket(AF_INET, SOCK_DGRAM, 0);

		inet_pton4("127.0.0.1", &ua.sin_addr);
		check("udp bind", bind(u1, (struct sockaddr *)&ua, sizeof(ua)), 0);
		check("sendto(udp)", sendto(u2, "dgram", 5, 0, (struct sockaddr *)&ua, sizeof(ua)), 5);
		len = sizeof(from);
		check("recvfrom(udp)", recvfrom(u1, buf, sizeof(buf), 0, (struct sockaddr *)&from, &len)
		      == 5 && !memcmp(buf, "dgram", 5) && len == sizeof(from) &&
		      from.sin_family == AF_INET, 1);
		{
			struct iovec dv = { "vec", 3 }, rv = { buf, sizeof(buf) };
			struct msghdr dm = { .msg_name = &ua, .msg_namelen = sizeof(ua),
					     .msg_iov = &dv, .msg_iovlen = 1 };
			struct msghdr rm = { .msg_name = &from, .msg_namelen = sizeof(from),
					     .msg_iov = &rv, .msg_iovlen = 1 };

			check("sendmsg(udp, address)", sendmsg(u2, &dm, 0), 3);
			check("recvmsg(udp, address)", recvmsg(u1, &rm, 0) == 3 &&
			      !memcmp(buf, "vec", 3) && rm.msg_namelen == sizeof(from) &&
			      from.sin_family == AF_INET, 1);
		}
		check("connect(udp)", connect(u2, (struct sockaddr *)&ua, sizeof(ua)), 0);
		check("write(udp, 0 bytes)", write(u2, buf, 0), 0);
		check("recv(udp, empty datagram)", recv(u1, buf, sizeof(buf), 0), 0);
		close(u1);
		close(u2);
	}

	/* The final fput() of close() runs as task_work: the port must be free again. */
	close(lfd);
	lfd = tcp_listener(7001);
	check("close+bind same port", lfd >= 0, 1);
	close(lfd);
}

/* Signals taken synchronously: the way that works in both modes. */
static void signal_checks(void)
{
	sigset_t set;
	siginfo_t info;

	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	check("sigprocmask(SIG_BLOCK)", sigprocmask(SIG_BLOCK, &set, NULL), 0);
	check("kill(self, SIGUSR1)", kill(getpid(), SIGUSR1), 0);
	check("sigwaitinfo", sigwaitinfo(&set, &info) == SIGUSR1 && info.si_signo == SIGUSR1, 1);
}

static void file_checks(void)
{
	char buf[64];
	struct utsname u;
	void *p;
	int fd;

	check("getpid", getpid(), 1);
	check("getppid", getppid(), 0);
	check("uname", uname(&u) == 0 && !strcmp(u.sysname, "Linux"), 1);
	check("mkdir", mkdir("/tmp/d", 0755), 0);
	fd = open("/tmp/d/f", O_CREAT | O_RDWR | O_TRUNC, 0644);
	check("open", fd >= 0, 1);
	check("write", write(fd, "hello ukl", 9), 9);
	check("lseek", lseek(fd, 0, SEEK_SET), 0);
	check("read", read(fd, buf, sizeof(buf)) == 9 && !memcmp(buf, "hello ukl", 9), 1);
	check("fcntl(F_GETFL)", fcntl(fd, F_GETFL, 0) & O_ACCMODE, O_RDWR);
	check("fcntl(F_SETFL)", fcntl(fd, F_SETFL, O_NONBLOCK), 0);
	check("close", close(fd), 0);
	check("close(EBADF)", close(fd) == -1 && errno == EBADF, 1);
	check("open(ENOENT)", open("/nope", O_RDONLY, 0) == -1 && errno == ENOENT, 1);
	check("unlink", unlink("/tmp/d/f"), 0);
	check("chdir", chdir("/tmp"), 0);
	check("dup2", dup2(1, 9), 9);
	check("syscall(getpid)", syscall(__NR_getpid, 0, 0, 0, 0, 0, 0), 1);

	p = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	check("mmap", p != MAP_FAILED, 1);
	memset(p, 7, 1 << 20);	/* demand paging from ring 0 in UKL mode */
	check("mmap touch", ((char *)p)[(1 << 20) - 1], 7);
	check("munmap", munmap(p, 1 << 20), 0);
	p = malloc(100000);
	check("malloc", p != NULL, 1);
	free(p);
#ifdef NOLIBC
	check("brk", sbrk(4096) != (void *)-1, 1);
#else
	/* musl's sbrk() refuses to grow the heap (its malloc owns brk): ask the kernel. */
	long cur = syscall(SYS_brk, 0);

	check("brk", syscall(SYS_brk, cur + 4096) == cur + 4096, 1);
#endif
	check("nanosleep", usleep(10000), 0);
}

#define NTHREADS	4
#define ROUNDS		2000

/* Floating point work whose result is known: any lost FPU state changes it. */
static double fp_work(int seed)
{
	double x = seed, y = 1.0;
	int i;

	for (i = 0; i < 200; i++) {
		x = x * 1.0001 + 0.5;
		y = y / 1.0003 + x * 1e-6;
	}
	return x + y;
}

static double expected[NTHREADS];

static void *worker(void *arg)
{
	long id = (long)arg, bad = 0;
	int round;

	for (round = 0; round < ROUNDS; round++) {
		double v = fp_work(id + 1);

		if (getppid() != 0 || getpid() != 1)	/* a system call between FP steps */
			bad++;
		if (round % 16 == 0)
			sched_yield();
		if (v != expected[id] || fp_work(id + 1) != expected[id])
			bad++;
	}
	return (void *)bad;
}

static void thread_checks(void)
{
	pthread_t t[NTHREADS];
	long i, bad = 0, started = 0;

	for (i = 0; i < NTHREADS; i++)
		expected[i] = fp_work(i + 1);
	for (i = 0; i < NTHREADS; i++)
		started += pthread_create(&t[i], NULL, worker, (void *)i) == 0;
	check("pthread_create", started, NTHREADS);
	for (i = 0; i < started; i++) {
		void *r;

		pthread_join(t[i], &r);
		bad += (long)r;
	}
	check("threads: syscalls + FP math", bad, 0);
}

#ifndef NOLIBC
static __thread long tls_counter = 100;	/* .tdata: each thread starts from 100 */
static __thread char tls_zeroes[256];	/* .tbss */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int turn, shared_total;

static void *libc_worker(void *arg)
{
	long id = (long)arg, bad = 0, i;
	char *blocks[64];

	for (i = 0; i < 256; i++)
		bad += tls_zeroes[i] != 0;
	for (i = 0; i < 1000; i++)
		tls_counter++;
	bad += tls_counter != 1100;
	/* errno is per thread: this thread's failure does not show in the others'. */
	errno = 0;
	bad += close(-1 - (int)id) != -1 || errno != EBADF;
	for (i = 0; i < 64; i++) {	/* small blocks from brk, big ones from mmap */
		blocks[i] = malloc(i % 2 ? 200000 : 100);
		bad += blocks[i] == NULL;
		if (blocks[i])
			memset(blocks[i], (int)id, i % 2 ? 200000 : 100);
	}
	for (i = 0; i < 64; i++)
		free(blocks[i]);
	/* Take turns through a mutex and a condition variable (futexes). */
	for (i = 0; i < 50; i++) {
		pthread_mutex_lock(&lock);
		while (turn % NTHREADS != id)
			pthread_cond_wait(&cond, &lock);
		shared_total++;
		turn++;
		pthread_cond_broadcast(&cond);
		pthread_mutex_unlock(&lock);
	}
	return (void *)bad;
}

static void at_exit_handler(void)
{
	printf("atexit handler: ran\n");
}

static void libc_checks(void)
{
	struct timespec a, b, req = { 0, 1000000 };
	pthread_t t[NTHREADS];
	long i, bad = 0;

	check("tls initial value", tls_counter, 100);
	for (i = 0; i < NTHREADS; i++)
		bad += pthread_create(&t[i], NULL, libc_worker, (void *)i) != 0;
	for (i = 0; i < NTHREADS; i++) {
		void *r;

		pthread_join(t[i], &r);
		bad += (long)r;
	}
	check("threads: tls, errno, malloc, mutex + condvar", bad, 0);
	check("turns taken in order", shared_total, NTHREADS * 50);
	check("tls of the main thread untouched", tls_counter, 100);
	check("clock_gettime(MONOTONIC)", clock_gettime(CLOCK_MONOTONIC, &a), 0);
	nanosleep(&req, NULL);
	clock_gettime(CLOCK_MONOTONIC, &b);
	check("clock advances over nanosleep(1 ms)",
	      (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec) >= 1000000, 1);
	check("clock_gettime(REALTIME) after 2020", clock_gettime(CLOCK_REALTIME, &a) == 0 &&
	      a.tv_sec > 1577836800, 1);
	/*
	 * In ring 0 the wall, monotonic and boot-time clocks are read without a
	 * system call (kernel patch 0018, as the vDSO does in user mode); other
	 * clocks, and bad ones, still take it.  The answers are user mode's.
	 */
	struct timespec boot, cpu;
	struct timeval tv;
	time_t now;

	check("clock_gettime(BOOTTIME) >= MONOTONIC", clock_gettime(CLOCK_MONOTONIC, &a) == 0 &&
	      clock_gettime(CLOCK_BOOTTIME, &boot) == 0 &&
	      (boot.tv_sec - a.tv_sec) * 1000000000L + (boot.tv_nsec - a.tv_nsec) >= 0, 1);
	check("gettimeofday() and time() agree with REALTIME",
	      clock_gettime(CLOCK_REALTIME, &a) == 0 && gettimeofday(&tv, NULL) == 0 &&
	      (now = time(NULL)) >= a.tv_sec && now - a.tv_sec <= 1 &&
	      tv.tv_sec >= a.tv_sec && tv.tv_sec - a.tv_sec <= 1, 1);
	check("clock_gettime(PROCESS_CPUTIME_ID) runs", clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &cpu) == 0 &&
	      cpu.tv_sec >= 0 && cpu.tv_nsec >= 0 && cpu.tv_nsec < 1000000000L, 1);
	errno = 0;
	check("clock_gettime(no such clock) fails with EINVAL",
	      clock_gettime((clockid_t)1000, &cpu) == -1 && errno == EINVAL, 1);
	/* A fine clock: consecutive readings differ by < 100 us, a 1 ms sleep ends < 2 ms. */
	long worst_step = 0, worst_sleep = 0, coarse = 0, zero = 0;

	for (i = 0; i < 101; i++) {
		long d;

		clock_gettime(CLOCK_MONOTONIC, &a);
		clock_gettime(CLOCK_MONOTONIC, &b);
		d = (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
		worst_step = d > worst_step ? d : worst_step;
		coarse += d >= 100000;
		zero += d == 0;	/* a tick-based clock: readings within one tick are equal */
	}
	/* Emulation stalls the odd sleep: the typical one (the median of 21) is judged. */
	long sleeps[21], late = 0;

	for (i = 0; i < 21; i++) {
		clock_gettime(CLOCK_MONOTONIC, &a);
		nanosleep(&req, NULL);
		clock_gettime(CLOCK_MONOTONIC, &b);
		sleeps[i] = (b.tv_sec - a.tv_sec) * 1000000000L + (b.tv_nsec - a.tv_nsec);
		worst_sleep = sleeps[i] > worst_sleep ? sleeps[i] : worst_sleep;
	}
	for (i = 0; i < 21; i++)
		late += sleeps[i] >= 2000000;
	printf("probe: clock: worst step %ld ns (%ld of 101 >= 100 us, %ld zero), "
	       "worst 1 ms sleep %ld ns, %ld of 21 sleeps >= 2 ms\n",
	       worst_step, coarse, zero, worst_sleep, late);
	check("clock_gettime(MONOTONIC) steps < 100 us (median of 101)", coarse <= 50 && zero <= 50, 1);
	check("nanosleep(1 ms) ends within 2 ms (median of 21)", late <= 10, 1);
	check("atexit", atexit(at_exit_handler), 0);
}

/* The wall clock, five times 0.2 s apart: the host compares each line with its own. */
static void wallclock(void)
{
	struct timespec now, pause = { 0, 200000000 };
	int i;

	for (i = 0; i < 5; i++) {
		clock_gettime(CLOCK_REALTIME, &now);
		printf("probe: wallclock %lld.%09ld\n", (long long)now.tv_sec, now.tv_nsec);
		fflush(stdout);
		nanosleep(&pause, NULL);
	}
}
#endif

/* Each frame holds 1 KiB; recursion without end overflows any stack. */
static int overflow(volatile int depth)
{
	volatile char pad[1024];

	pad[0] = depth;
	return overflow(depth + 1) + pad[0];
}

/*
 * The stack protector: write 64 bytes into a 16-byte local array (the length
 * comes through a volatile, so the compiler cannot see the overflow), then
 * return through the smashed frame.  With canaries the check before the
 * return fails; without, the return jumps to 0x4141414141414141.
 */
static __attribute__((noinline)) int smash(volatile unsigned long n)
{
	char buf[16];
	volatile char *p = buf;
	unsigned long i;

	for (i = 0; i < n; i++)
		p[i] = 'A';
	return buf[1];
}

static const char probe_rodata[] = "probe: read-only data";
int main(int argc, char **argv);

/* Writes that read-only mappings of the app's text and const data must stop. */
static __attribute__((noinline)) int write_protected(const char *what)
{
	volatile unsigned char *target = !strcmp(what, "write-text") ?
		(volatile unsigned char *)(unsigned long)main :
		(volatile unsigned char *)(unsigned long)probe_rodata;

	*target = 0xcc;
	printf("probe: %s: the write went through\n", what);
	return 0;
}

int main(int argc, char **argv)
{
	const char *what = argc > 1 ? argv[1] : "syscalls";

	printf("probe: %s (CPL %d)\n", what, cpl());
	if (!strcmp(what, "null")) {
		volatile int *p = NULL;

		return *p;
	}
	if (!strcmp(what, "overflow"))
		return overflow(0);
	if (!strcmp(what, "smash")) {
		smash(64);
		printf("probe: smash: returned through a smashed frame\n");
		return 0;
	}
	if (!strcmp(what, "write-text") || !strcmp(what, "write-rodata"))
		return write_protected(what);
	if (!strcmp(what, "address")) {
		printf("probe: main at %p, rodata at %p\n", (void *)(unsigned long)main,
		       (void *)probe_rodata);
		return 0;
	}
#ifndef NOLIBC
	if (!strcmp(what, "wallclock")) {
		wallclock();
		return 0;
	}
#endif
	if (!strcmp(what, "threads")) {
		thread_checks();
#ifndef NOLIBC
		libc_checks();
#endif
		printf("probe: %d failures\n", failures);
		drain_output();
		return failures ? 1 : 0;
	}
	file_checks();
	signal_checks();
	net_checks();
	printf("probe: %d failures\n", failures);
	return failures ? 1 : 0;
}
