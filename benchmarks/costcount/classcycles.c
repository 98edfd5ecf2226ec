// SPDX-License-Identifier: MIT
/*
 * classcycles: what the instruction classes of ukl_cost cost on the host's
 * CPU, in TSC ticks, for those a user-mode program can execute: lfence,
 * mfence, verw, iretq to the same privilege level, cpuid, and a system call
 * round trip (syscall, the host kernel's entry and exit for an unknown call
 * number, sysret).  The classes only ring 0 can execute (swapgs, wrmsr, a
 * CR3 write) are not measured here; benchmarks/weights.py gives their
 * published figures.
 *
 * Each class runs in a loop of ROUNDS iterations of UNROLL copies; the same
 * loop with a plain "nop" in their place is subtracted; the best of REPEAT
 * loops is kept (the least disturbed by the host).  One line per class:
 * "NAME TICKS" (per instruction, or per round trip).  In a virtual machine,
 * cpuid and possibly others trap to the hypervisor: their figures are then
 * the hypervisor's, and say so only by being large.
 */
#include <stdint.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ROUNDS 2000
#define UNROLL 8
#define REPEAT 25

static inline uint64_t ticks(void)
{
	uint32_t lo, hi;

	__asm__ volatile("lfence; rdtsc; lfence" : "=a"(lo), "=d"(hi) :: "memory");
	return ((uint64_t)hi << 32) | lo;
}

static uint16_t selector;

static void run_nop(void)     { __asm__ volatile("nop"); }
static void run_lfence(void)  { __asm__ volatile("lfence" ::: "memory"); }
static void run_mfence(void)  { __asm__ volatile("mfence" ::: "memory"); }
static void run_verw(void)    { __asm__ volatile("verw %0" :: "m"(selector) : "cc"); }

static void run_cpuid(void)
{
	uint32_t a = 0, b, c = 0, d;

	__asm__ volatile("cpuid" : "+a"(a), "=b"(b), "+c"(c), "=d"(d));
}

static void run_iretq(void)
{
	__asm__ volatile("mov %%ss, %%eax\n\t"
			 "push %%rax\n\t"
			 "lea 8(%%rsp), %%rax\n\t"
			 "push %%rax\n\t"
			 "pushf\n\t"
			 "mov %%cs, %%eax\n\t"
			 "push %%rax\n\t"
			 "lea 1f(%%rip), %%rax\n\t"
			 "push %%rax\n\t"
			 "iretq\n"
			 "1:"
			 ::: "rax", "memory", "cc");
}

static void run_syscall(void)
{
	long ret;

	__asm__ volatile("syscall" : "=a"(ret) : "a"(-1L)
			 : "rcx", "r11", "memory");
}

static double per_op(void (*op)(void))
{
	uint64_t best = UINT64_MAX;

	for (int r = 0; r < REPEAT; r++) {
		uint64_t t0 = ticks();

		for (int i = 0; i < ROUNDS; i++) {
			op(); op(); op(); op();
			op(); op(); op(); op();
		}
		uint64_t t = ticks() - t0;

		if (t < best)
			best = t;
	}
	return (double)best / (ROUNDS * UNROLL);
}

int main(void)
{
	static const struct {
		const char *name;
		void (*op)(void);
	} classes[] = {
		{ "lfence", run_lfence }, { "mfence", run_mfence },
		{ "verw", run_verw }, { "iret", run_iretq },
		{ "serialising", run_cpuid }, { "syscall_round_trip", run_syscall },
	};
	double base = per_op(run_nop);

	__asm__ volatile("mov %%ds, %0" : "=r"(selector));
	printf("call_overhead %.1f\n", base);
	for (unsigned int i = 0; i < sizeof(classes) / sizeof(classes[0]); i++)
		printf("%s %.1f\n", classes[i].name, per_op(classes[i].op) - base);
	return 0;
}
