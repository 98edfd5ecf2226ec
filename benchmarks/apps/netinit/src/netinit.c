// SPDX-License-Identifier: MIT
/*
 * /init for a stock distribution kernel in the benchmarks, where the
 * network driver is a module and nothing configures the address (no
 * ip= autoconfiguration): load every module in /modules in name order
 * (NN-name.ko) with its parameters from the kernel command line
 * ("name.param=value", which modprobe would pass: the kernel does not),
 * bring up lo and eth0 with QEMU's user-network address, then run /app
 * with this program's arguments (the kernel passes the words after "--").
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define ADDRESS "10.0.2.15"
#define NETMASK "255.255.255.0"

static char cmdline[4096];

/* "name.a=1 name.b=2" on the command line -> "a=1 b=2" for module "name". */
static void module_params(const char *name, char *out, size_t size)
{
	size_t len = strlen(name), used = 0;
	char copy[sizeof(cmdline)];

	out[0] = '\0';
	strcpy(copy, cmdline);
	for (char *save, *w = strtok_r(copy, " \n", &save); w; w = strtok_r(NULL, " \n", &save)) {
		if (strncmp(w, name, len) != 0 || w[len] != '.')
			continue;
		used += snprintf(out + used, size - used, "%s%s", used ? " " : "", w + len + 1);
		if (used >= size)
			break;
	}
}

static void load_modules(const char *dir)
{
	struct dirent **names;
	int n = scandir(dir, &names, NULL, alphasort);

	for (int i = 0; i < n; i++) {
		char path[512], name[256], params[1024];
		const char *base = strchr(names[i]->d_name, '-');
		char *dot;
		int fd;

		if (names[i]->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, names[i]->d_name);
		/* NN-name.ko: the module's name has '_' where the file may have '-' */
		snprintf(name, sizeof(name), "%s", base ? base + 1 : names[i]->d_name);
		dot = strchr(name, '.');
		if (dot)
			*dot = '\0';
		for (char *c = name; *c; c++)
			if (*c == '-')
				*c = '_';
		module_params(name, params, sizeof(params));
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd < 0 || (syscall(SYS_finit_module, fd, params, 0) != 0 && errno != EEXIST))
			fprintf(stderr, "netinit: %s: %s\n", path, strerror(errno));
		if (fd >= 0)
			close(fd);
	}
}

static void read_cmdline(void)
{
	int fd;
	ssize_t n = -1;

	if (mount("proc", "/proc", "proc", 0, NULL) == 0) {
		fd = open("/proc/cmdline", O_RDONLY | O_CLOEXEC);
		if (fd >= 0) {
			n = read(fd, cmdline, sizeof(cmdline) - 1);
			close(fd);
		}
		umount("/proc");
	}
	cmdline[n > 0 ? n : 0] = '\0';
}

static int set_address(int s, const char *ifname, unsigned long request, const char *addr)
{
	struct ifreq ifr = {0};
	struct sockaddr_in *sin = (struct sockaddr_in *)&ifr.ifr_addr;

	strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
	sin->sin_family = AF_INET;
	inet_pton(AF_INET, addr, &sin->sin_addr);
	return ioctl(s, request, &ifr);
}

static int bring_up(int s, const char *ifname)
{
	struct ifreq ifr = {0};

	strncpy(ifr.ifr_name, ifname, IFNAMSIZ - 1);
	if (ioctl(s, SIOCGIFFLAGS, &ifr) != 0)
		return -1;
	ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
	return ioctl(s, SIOCSIFFLAGS, &ifr);
}

int main(int argc, char **argv)
{
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct timespec tick = {0, 10 * 1000 * 1000};

	(void)argc;
	read_cmdline();
	load_modules("/modules");
	if (s < 0 || bring_up(s, "lo") != 0) {
		perror("netinit: lo");
		return 1;
	}
	/* The driver may bind the device after its module returned: wait up to 2 s. */
	for (int i = 0; if_nametoindex("eth0") == 0; i++) {
		if (i == 200) {
			fprintf(stderr, "netinit: no eth0\n");
			return 1;
		}
		nanosleep(&tick, NULL);
	}
	if (set_address(s, "eth0", SIOCSIFADDR, ADDRESS) != 0 ||
	    set_address(s, "eth0", SIOCSIFNETMASK, NETMASK) != 0 || bring_up(s, "eth0") != 0) {
		perror("netinit: eth0");
		return 1;
	}
	close(s);
	argv[0] = "/app";
	execv("/app", argv);
	perror("netinit: /app");
	return 1;
}
