/* Raw system calls, raw helper threads and the dead-owner-safe lock: see labsys.h. */
#include "labsys.h"

#include <fcntl.h>
#include <linux/futex.h>
#include <sched.h>
#include <signal.h>
#include <errno.h>
#include <stddef.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>

LAB_HIDDEN long lab_sys(long nr, long a, long b, long c, long d, long e, long f)
{
    long ret;
    register long r10 __asm__("r10") = d;
    register long r8 __asm__("r8") = e;
    register long r9 __asm__("r9") = f;
    __asm__ volatile("syscall"
                     : "=a"(ret)
                     : "0"(nr), "D"(a), "S"(b), "d"(c), "r"(r10), "r"(r8), "r"(r9)
                     : "rcx", "r11", "memory");
    return ret;
}

/* ---------- helper threads ---------- */

#define LAB_THREAD_STACK (128 * 1024)

/* clone a thread onto stack_top (16-byte aligned) that runs fn(arg) and then exits the
 * thread (not the process). The child never returns into this frame. */
static long clone_thread(unsigned long flags, void **stack_top, void (*fn)(void *), void *arg)
{
    void **sp = stack_top;
    *--sp = arg;
    *--sp = (void *)fn;
    long ret;
    register long r10 __asm__("r10") = 0; /* child_tid */
    register long r8 __asm__("r8") = 0;   /* tls: keep the creator's */
    __asm__ volatile("syscall\n\t"
                     "test %%rax, %%rax\n\t"
                     "jnz 1f\n\t"
                     "xor %%ebp, %%ebp\n\t"
                     "pop %%rax\n\t" /* fn */
                     "pop %%rdi\n\t" /* arg */
                     "and $-16, %%rsp\n\t"
                     "call *%%rax\n\t"
                     "mov %[exit], %%eax\n\t"
                     "xor %%edi, %%edi\n\t"
                     "syscall\n\t"
                     "hlt\n"
                     "1:"
                     : "=a"(ret)
                     : "0"((long)SYS_clone), "D"(flags), "S"(sp), "d"(0L), "r"(r10), "r"(r8),
                       [exit] "i"(SYS_exit)
                     : "rcx", "r11", "memory");
    return ret;
}

LAB_HIDDEN int lab_thread_start(void (*fn)(void *), void *arg)
{
    long m = lab_sys6(SYS_mmap, 0, LAB_THREAD_STACK, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK | MAP_NORESERVE, -1, 0);
    if (m < 0 && m > -4096)
        return (int)-m;
    /* The thread starts with our mask: block everything (the program's signals must not
     * land on it), clone, restore ours. The stack is never freed: one per process. */
    uint64_t all = ~0ULL, old = 0;
    lab_sys4(SYS_rt_sigprocmask, SIG_SETMASK, &all, &old, 8);
    long r = clone_thread(CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM,
                          (void **)(m + LAB_THREAD_STACK), fn, arg);
    lab_sys4(SYS_rt_sigprocmask, SIG_SETMASK, &old, NULL, 8);
    if (r < 0) {
        lab_sys2(SYS_munmap, m, LAB_THREAD_STACK);
        return (int)-r;
    }
    return 0;
}

/* ---------- the lock ---------- */

static unsigned g_takeovers;

LAB_HIDDEN unsigned lab_lock_takeovers(void) { return __atomic_load_n(&g_takeovers, __ATOMIC_RELAXED); }

LAB_HIDDEN void lab_lock_init(struct lab_lock *l)
{
    l->owner = 0;
    l->depth = 0;
    l->waiters = 0;
}

/* Has thread tid exited (gone, or a zombie nobody reaped yet)? Only a task that shares our
 * memory without being our thread (a CLONE_VM child) can die holding the lock: a fatal
 * signal ends our whole thread group, and no shim path leaves a thread with the lock held. */
static int tid_dead(int tid)
{
    char path[32] = "/proc/";
    char num[12];
    int n = 0;
    for (unsigned v = (unsigned)tid; v || n == 0; v /= 10)
        num[n++] = (char)('0' + v % 10);
    int p = 6;
    while (n)
        path[p++] = num[--n];
    const char *tail = "/stat";
    while (*tail)
        path[p++] = *tail++;
    path[p] = 0;
    long fd = lab_sys4(SYS_openat, AT_FDCWD, path, O_RDONLY | O_CLOEXEC, 0);
    if (fd == -ENOENT || fd == -ESRCH)
        return 1;
    if (fd < 0)
        return 0; /* cannot tell: keep waiting */
    char buf[512];
    long got = lab_sys3(SYS_read, fd, buf, sizeof buf - 1);
    lab_sys1(SYS_close, fd);
    if (got <= 0)
        return got == -ESRCH;
    /* "tid (comm) S ...": comm may hold ") ", so the state follows the last ')' */
    long close_paren = -1;
    for (long i = 0; i < got; i++)
        if (buf[i] == ')')
            close_paren = i;
    if (close_paren < 0 || close_paren + 2 >= got)
        return 0;
    char st = buf[close_paren + 2];
    return st == 'Z' || st == 'X' || st == 'x';
}

static long now_ms(void)
{
    struct timespec t = {0, 0};
    lab_sys2(SYS_clock_gettime, CLOCK_MONOTONIC, &t);
    return (long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

LAB_HIDDEN int lab_lock_timed(struct lab_lock *l, int timeout_ms)
{
    int me = (int)lab_sys0(SYS_gettid);
    if (__atomic_load_n(&l->owner, __ATOMIC_RELAXED) == me) {
        l->depth++;
        return 0;
    }
    long until = timeout_ms >= 0 ? now_ms() + timeout_ms : 0;
    for (;;) {
        int cur = 0;
        if (__atomic_compare_exchange_n(&l->owner, &cur, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
            l->depth = 1;
            return 0;
        }
        long wait_ms = 20;
        if (timeout_ms >= 0) {
            long left = until - now_ms();
            if (left <= 0)
                return ETIMEDOUT;
            if (left < wait_ms)
                wait_ms = left;
        }
        struct timespec ts = {0, wait_ms * 1000000L};
        __atomic_add_fetch(&l->waiters, 1, __ATOMIC_SEQ_CST);
        long r = lab_sys4(SYS_futex, &l->owner, FUTEX_WAIT_PRIVATE, cur, &ts);
        __atomic_sub_fetch(&l->waiters, 1, __ATOMIC_SEQ_CST);
        /* Still the same owner after a full wait: is it alive? A killed CLONE_VM child
         * leaves it held; whoever holds it next finds the connection as the child left it
         * (lab_call skips a reply nobody waits for any more). */
        if (r == -ETIMEDOUT && __atomic_load_n(&l->owner, __ATOMIC_RELAXED) == cur && tid_dead(cur)) {
            int expect = cur;
            if (__atomic_compare_exchange_n(&l->owner, &expect, me, 0, __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
                l->depth = 1;
                __atomic_add_fetch(&g_takeovers, 1, __ATOMIC_RELAXED);
                return 0;
            }
        }
    }
}

LAB_HIDDEN void lab_lock(struct lab_lock *l) { (void)lab_lock_timed(l, -1); }

LAB_HIDDEN void lab_unlock(struct lab_lock *l)
{
    if (--l->depth > 0)
        return;
    __atomic_store_n(&l->owner, 0, __ATOMIC_RELEASE);
    if (__atomic_load_n(&l->waiters, __ATOMIC_SEQ_CST) > 0)
        lab_sys3(SYS_futex, &l->owner, FUTEX_WAKE_PRIVATE, 1);
}
