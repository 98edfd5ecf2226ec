/* SPDX-License-Identifier: LGPL-2.1 OR MIT */
/*
 * ukl-build runtime: the stack protector for a nolibc program in user mode.
 *
 * nolibc sets up no canary.  ukl-build compiles such programs with
 * -fstack-protector-strong -mstack-protector-guard=global and includes this
 * header in every file (-include): the guard is a global, filled from the 16
 * random bytes the kernel points AT_RANDOM at, by an entry stub that runs
 * before nolibc's _start (the program's entry point is __ukl_ssp_start,
 * -Wl,-e).  A failed check writes a line to stderr and ends the program
 * with SIGILL.  Everything is weak: one copy per program, whatever the
 * number of files.  In UKL mode none of this is used: app code checks the
 * kernel's own canary and fails into the kernel's __stack_chk_fail.
 */
#ifndef _UKL_SSP_H
#define _UKL_SSP_H

__attribute__((weak)) unsigned long __stack_chk_guard;

__attribute__((weak, noreturn, used, no_stack_protector))
void __stack_chk_fail(void)
{
	static const char msg[] = "*** stack smashing detected ***: terminated\n";
	long ret;

	/* write(2, msg, len) */
	__asm__ volatile ("syscall"
			  : "=a" (ret)
			  : "0" (1L), "D" (2L), "S" (msg), "d" (sizeof(msg) - 1)
			  : "rcx", "r11", "memory");
	(void)ret;
	__builtin_trap();
}

/*
 * The entry point: find AT_RANDOM (25) in the auxiliary vector above the
 * environment, take 8 of its bytes as the guard with the lowest one zeroed
 * (a string overflow then cannot copy the canary through), jump to _start
 * with the stack as the kernel left it.
 */
__asm__ (
	".pushsection .text\n"
	".weak __ukl_ssp_start\n"
	".type __ukl_ssp_start, @function\n"
	"__ukl_ssp_start:\n"
	"	mov (%rsp), %rcx\n"
	"	lea 16(%rsp,%rcx,8), %rsi\n"
	"1:	mov (%rsi), %rax\n"
	"	add $8, %rsi\n"
	"	test %rax, %rax\n"
	"	jnz 1b\n"
	"2:	mov (%rsi), %rax\n"
	"	test %rax, %rax\n"
	"	jz 4f\n"
	"	cmp $25, %rax\n"
	"	je 3f\n"
	"	add $16, %rsi\n"
	"	jmp 2b\n"
	"3:	mov 8(%rsi), %rax\n"
	"	mov (%rax), %rax\n"
	"	xor %al, %al\n"
	"	mov %rax, __stack_chk_guard(%rip)\n"
	"4:	jmp _start\n"
	".size __ukl_ssp_start, . - __ukl_ssp_start\n"
	".popsection\n"
);

#endif /* _UKL_SSP_H */
