/* SPDX-License-Identifier: LGPL-2.1 OR MIT */
/*
 * Minimal threads: pthread_create() and pthread_join(), no attributes.
 *
 * User mode: clone(2) on a fresh mmap()ed stack.  UKL mode: the kernel's
 * ukl_clone_thread() starts the thread in ring 0 on a guarded kernel stack
 * (a clone(2) child would "return to user mode", which a UKL app has not).
 * Either way the kernel clears and futex-wakes the thread id on exit, which
 * is what pthread_join() waits for.  nolibc's malloc() and errno are not
 * thread-safe: allocate before starting threads.
 */
#ifndef _UKL_PTHREAD_H
#define _UKL_PTHREAD_H
#include <ukl_runtime.h>
#include <linux/futex.h>
#include <linux/sched.h>

#define __UKL_THREAD_STACK	(256UL << 10)

struct __ukl_thread {
	void *(*fn)(void *);
	void *arg;
	void *ret;
	volatile int tid;	/* cleared by the kernel when the thread exits */
	size_t map_size;
};

typedef struct __ukl_thread *pthread_t;
typedef struct { int unused; } pthread_attr_t;

#define __UKL_CLONE_FLAGS (CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | \
			   CLONE_THREAD | CLONE_SYSVSEM | CLONE_PARENT_SETTID | \
			   CLONE_CHILD_CLEARTID)

static __attribute__((unused))
void __ukl_thread_run(void *p)
{
	struct __ukl_thread *t = p;

	t->ret = t->fn(t->arg);
}

#ifdef UKL_MODE
long __ukl_clone_thread(void (*fn)(void *), void *arg, unsigned long flags,
			int *ptid, int *ctid, unsigned long tls);

static __attribute__((unused))
long __ukl_start_thread(struct __ukl_thread *t)
{
	return __ukl_clone_thread(__ukl_thread_run, t, __UKL_CLONE_FLAGS,
				  (int *)&t->tid, (int *)&t->tid, 0);
}
#else
/* The child starts here on its new stack, the thread in %r9; it never returns. */
static __attribute__((unused, noreturn))
void __ukl_thread_main(struct __ukl_thread *t)
{
	__ukl_thread_run(t);
	for (;;)
		my_syscall1(__NR_exit, 0);
}

static __attribute__((unused))
long __ukl_start_thread(struct __ukl_thread *t)
{
	register long r10 __asm__("r10") = (long)&t->tid;	/* child_tid */
	register long r8 __asm__("r8") = 0;			/* tls */
	register long r9 __asm__("r9") = (long)t;
	long ret;

	__asm__ volatile(
		"syscall\n\t"
		"test %%rax, %%rax\n\t"
		"jnz 1f\n\t"
		"xor %%ebp, %%ebp\n\t"
		"mov %%r9, %%rdi\n\t"
		"call %P[entry]\n\t"
		"hlt\n"
		"1:"
		: "=a"(ret)
		: "a"(__NR_clone), "D"(__UKL_CLONE_FLAGS),
		  "S"((char *)t + t->map_size), "d"(&t->tid),
		  "r"(r10), "r"(r8), "r"(r9), [entry] "i"(__ukl_thread_main)
		: "rcx", "r11", "memory");
	return ret;
}
#endif

static __attribute__((unused))
int pthread_create(pthread_t *out, const pthread_attr_t *attr, void *(*fn)(void *), void *arg)
{
	size_t size = __UKL_THREAD_STACK;
	struct __ukl_thread *t;
	long ret;

	(void)attr;
	/* The descriptor sits at the bottom of the mapping, the stack above it. */
	t = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (t == MAP_FAILED)
		return errno;
	t->fn = fn;
	t->arg = arg;
	t->map_size = size;
	ret = __ukl_start_thread(t);
	if (ret < 0) {
		munmap(t, size);
		return -ret;
	}
	*out = t;
	return 0;
}

static __attribute__((unused))
int pthread_join(pthread_t t, void **ret)
{
	int tid;

	while ((tid = __atomic_load_n(&t->tid, __ATOMIC_ACQUIRE)) != 0)
		my_syscall6(__NR_futex, &t->tid, FUTEX_WAIT, tid, 0, 0, 0);
	if (ret)
		*ret = t->ret;
	munmap(t, t->map_size);
	return 0;
}

#endif
