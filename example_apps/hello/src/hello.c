// SPDX-License-Identifier: MIT
/*
 * The smallest ukl-build app: one line to the console, then exit status 3,
 * which `python -m ukl_build run` hands back to the host.
 */
#include <stdio.h>

/* The privilege level this code runs at: 3 as /init, 0 linked into the kernel. */
static int current_cpl(void)
{
	unsigned short cs;

	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	return cs & 3;
}

int main(int argc, char **argv)
{
	printf("Hello, %s, from a unikernel! (CPL %d)\n",
	       argc > 1 ? argv[1] : "world", current_cpl());
	return 3;
}
