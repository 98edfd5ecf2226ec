/*
 * firewall: a packet filter on the kernel's IPv4 receive path, its rules
 * compiled into C when the image is built (gen/fwc.py), and the small
 * servers it guards.
 *
 * The app is linked into vmlinux (UKL mode): ukl_filter_ipv4() (kernel patch
 * 0026) puts fw_filter() on netfilter's PRE_ROUTING hook, so every IPv4
 * packet the VM receives is judged here, in softirq context, before routing.
 * The rules are code (fw_compiled()), or with -DFW_INTERPRET a first-match
 * scan of a table of the same rules (the baseline), chosen at build time;
 * with -DFW_NFTABLES the app registers nothing and loads the same rules into
 * the kernel's nf_tables instead (nftables.c; the second baseline, whose
 * packets the per-rule counters here do not see).
 *
 * Ports: 8080 and 8081 answer one line and close (the example's rules let
 * 8080 in and drop 8081); 9100 answers with the counters of every rule, or,
 * sent "inject COUNT PORT [SPAN]", has pktgen put COUNT UDP packets into the
 * receive path (to PORT, PORT+1, ... PORT+SPAN-1 in turn; SPAN 3 unless
 * given) and answers when they are through, with pktgen's time for them:
 * the benchmark's load (needs CONFIG_NET_PKTGEN and CONFIG_PROC_FS).
 */
/* The filter runs in softirq context, where the app's vector registers are
 * not saved: nothing in this file uses them (the generated file says so too).
 */
#pragma GCC target("general-regs-only")
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <unistd.h>

#include "fw_rules.h"

#if defined(FW_NFTABLES)
#define FW_ENGINE_NAME "loaded into nf_tables"
#elif defined(FW_INTERPRET)
#define FW_ENGINE fw_interpret
#define FW_ENGINE_NAME "interpreted"
#else
#define FW_ENGINE fw_compiled
#define FW_ENGINE_NAME "compiled"
#endif

#define STATS_PORT 9100

/* kernel patch 0026; ukl-build binds __ukl_filter_ipv4 to the kernel's function */
int __ukl_filter_ipv4(unsigned int (*filter)(const void *iph, unsigned int len));

/* nftables.c: the same rules as nf_tables rules (the benchmark's baseline) */
int fw_load_nftables(char *why, size_t size);

static unsigned long long fw_hits[FW_RULES + 1];

#ifndef FW_NFTABLES
static unsigned int fw_filter(const void *iph, unsigned int len)
{
	struct fw_pkt p;
	unsigned i = FW_RULES;

	if (fw_parse(iph, len, &p))
		i = FW_ENGINE(FW_ARGS(&p));
	__atomic_fetch_add(&fw_hits[i], 1, __ATOMIC_RELAXED);
	return fw_verdict[i];
}
#endif

static int listener(int port)
{
	struct sockaddr_in a = { .sin_family = AF_INET, .sin_port = htons(port) };
	int one = 1, fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) ||
	    bind(fd, (struct sockaddr *)&a, sizeof(a)) || listen(fd, 16)) {
		printf("firewall: cannot listen on port %d: %s\n", port, strerror(errno));
		exit(1);
	}
	return fd;
}

static void put(int fd, const char *s)
{
	size_t n = strlen(s);

	while (n) {
		ssize_t w = write(fd, s, n);

		if (w <= 0)
			return;
		s += w;
		n -= (size_t)w;
	}
}

static void counters(int fd)
{
	char line[512];
	unsigned i;

	snprintf(line, sizeof(line), "firewall: %u rules, %s\n", FW_RULES, FW_ENGINE_NAME);
	put(fd, line);
	for (i = 0; i <= FW_RULES; i++) {
		snprintf(line, sizeof(line), "%u %llu %s %s\n", fw_line[i],
			 __atomic_load_n(&fw_hits[i], __ATOMIC_RELAXED),
			 fw_verdict[i] ? "ACCEPT" : "DROP", fw_text[i]);
		put(fd, line);
	}
}

/* pktgen's netif_receive mode: COUNT UDP packets from 10.9.0.1 to this VM's
 * address and MAC (so the stack takes them as its own), to PORT..PORT+SPAN-1.
 */
static int inject(unsigned long count, unsigned port, unsigned span, char *why, size_t size)
{
	static const char thread[] = "/proc/net/pktgen/kpktgend_0";
	static const char dev[] = "/proc/net/pktgen/eth0";
	struct ifreq ifr = { .ifr_name = "eth0" };
	const unsigned char *m = (const unsigned char *)ifr.ifr_hwaddr.sa_data;
	char mac[18], ip[16], cmds[16][48];
	const char *files[16];
	int s = socket(AF_INET, SOCK_DGRAM, 0), n = 0, i;

	if (mount("proc", "/proc", "proc", 0, NULL) && errno != EBUSY)
		return snprintf(why, size, "mount /proc: %s", strerror(errno));
	if (s < 0 || ioctl(s, SIOCGIFHWADDR, &ifr))
		return snprintf(why, size, "eth0's MAC: %s", strerror(errno));
	snprintf(mac, sizeof(mac), "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4],
		 m[5]);
	if (ioctl(s, SIOCGIFADDR, &ifr))
		return snprintf(why, size, "eth0's address: %s", strerror(errno));
	close(s);
	inet_ntop(AF_INET, &((struct sockaddr_in *)&ifr.ifr_addr)->sin_addr, ip, sizeof(ip));
#define PG(file, ...) (files[n] = (file), snprintf(cmds[n++], sizeof(cmds[0]), __VA_ARGS__))
	PG(thread, "rem_device_all");
	PG(thread, "add_device eth0");
	PG(dev, "xmit_mode netif_receive");
	PG(dev, "count %lu", count);
	PG(dev, "pkt_size 60");
	PG(dev, "delay 0");
	PG(dev, "dst_min %s", ip);
	PG(dev, "dst_max %s", ip);
	PG(dev, "dst_mac %s", mac);
	PG(dev, "src_min 10.9.0.1");
	PG(dev, "src_max 10.9.0.1");
	PG(dev, "udp_src_min 9");
	PG(dev, "udp_src_max 9");
	PG(dev, "udp_dst_min %u", port);
	/* pktgen: min <= port < max, in turn; one port when they are equal */
	PG(dev, "udp_dst_max %u", span > 1 ? port + span : port);
	PG("/proc/net/pktgen/pgctrl", "start");
#undef PG
	for (i = 0; i < n; i++) {
		int fd = open(files[i], O_WRONLY), err = 0;
		char line[64];

		/* one command per write, ended by a newline (pgctrl cuts off the last byte) */
		snprintf(line, sizeof(line), "%s\n", cmds[i]);
		if (fd < 0 || write(fd, line, strlen(line)) < 0)
			err = errno;
		if (fd >= 0)
			close(fd);
		if (err)
			return snprintf(why, size, "%s: %s: %s", files[i], cmds[i], strerror(err));
	}
	return 0;
}

/* How long pktgen took, in the guest's microseconds ("Result: OK: 1234(c...": its
 * own clock, from the first packet to the last; 0 if it does not say).
 */
static unsigned long pktgen_usec(void)
{
	char text[4096];
	const char *at;
	int fd = open("/proc/net/pktgen/eth0", O_RDONLY);
	ssize_t n = fd < 0 ? -1 : read(fd, text, sizeof(text) - 1);

	if (fd >= 0)
		close(fd);
	text[n > 0 ? n : 0] = '\0';
	at = strstr(text, "Result: OK: ");
	return at ? strtoul(at + 12, NULL, 10) : 0;
}

static void stats(int fd)
{
	struct pollfd p = { .fd = fd, .events = POLLIN };
	char buf[128] = "", why[128] = "";
	unsigned long count;
	unsigned port, span = 3;
	ssize_t n = 0;

	if (poll(&p, 1, 200) == 1)  /* a client that sends nothing gets the counters */
		n = read(fd, buf, sizeof(buf) - 1);
	buf[n > 0 ? n : 0] = '\0';
	if (sscanf(buf, "inject %lu %u %u", &count, &port, &span) >= 2) {
		if (!span || span > 100 || port + span > 65536)
			snprintf(why, sizeof(why), "ports %u..%u", port, port + span - 1);
		else
			inject(count, port, span, why, sizeof(why));
		if (why[0])
			snprintf(buf, sizeof(buf), "error: %s\n", why);
		else
			snprintf(buf, sizeof(buf), "injected %lu in %lu us\n", count, pktgen_usec());
		put(fd, buf);
		return;
	}
	counters(fd);
}

int main(void)
{
	static const int ports[] = { 8080, 8081, STATS_PORT };
	struct pollfd fds[3];
	char hello[64];
	int i, err;

#ifdef FW_NFTABLES
	{
		char why[160] = "";

		err = fw_load_nftables(why, sizeof(why));
		if (err) {
			printf("firewall: %s\n", why);
			return 1;
		}
	}
#else
	err = __ukl_filter_ipv4(fw_filter);
	if (err) {
		printf("firewall: the kernel refused the filter: %s\n", strerror(-err));
		return 1;
	}
#endif
	printf("firewall: %u rules %s into the receive path, policy %s\n", FW_RULES,
	       FW_ENGINE_NAME, fw_verdict[FW_RULES] ? "ACCEPT" : "DROP");
	for (i = 0; i < 3; i++)
		fds[i] = (struct pollfd){ .fd = listener(ports[i]), .events = POLLIN };
	printf("firewall: listening on ports 8080, 8081 and %d (counters)\n", STATS_PORT);
	fflush(stdout);
	for (;;) {
		if (poll(fds, 3, -1) < 0 && errno != EINTR)
			return 1;
		for (i = 0; i < 3; i++) {
			int c;

			if (!(fds[i].revents & POLLIN))
				continue;
			c = accept(fds[i].fd, NULL, NULL);
			if (c < 0)
				continue;
			if (ports[i] == STATS_PORT) {
				stats(c);
			} else {
				snprintf(hello, sizeof(hello), "hello from port %d\n", ports[i]);
				put(c, hello);
			}
			close(c);
		}
	}
}
