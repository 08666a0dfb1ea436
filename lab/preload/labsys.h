/* Process-model plumbing of the shim (labsys.c): raw system calls, helper threads glibc
 * does not know about, and a lock that survives a peer sharing our memory being killed.
 *
 * Why not libc: the shim's helper threads run inside an unmodified program, and glibc
 * treats every thread it created as the program's own. Its set*id broadcast (SIGSETXID
 * to every thread, abort if the results differ) then runs in our threads too, whose
 * per-thread capabilities differ from the program thread's (setpriv raises them with
 * capset in its one thread only): the program aborts. Threads made with a raw clone are
 * not in glibc's list, so a single-threaded program stays single-threaded for glibc.
 * Such a thread shares the creator's TLS pointer, so it must never write TLS: no errno,
 * hence raw system calls returning -errno.
 *
 * Why not pthread mutexes: a clone(CLONE_VM) child (stress-ng, vfork, posix_spawn)
 * shares our memory and, without CLONE_SETTLS, our thread descriptor: glibc's recursive
 * mutex then takes the child for its parent thread. And a child killed while it holds
 * the lock would hold it for ever. lab_lock keys ownership on the kernel's thread id and
 * lets a waiter take over a lock whose owner has died.
 */
#ifndef LABSYS_H
#define LABSYS_H
#include <stdint.h>

#define LAB_HIDDEN __attribute__((visibility("hidden")))

/* A system call; returns the result or -errno. Never touches errno. */
LAB_HIDDEN long lab_sys(long nr, long a, long b, long c, long d, long e, long f);
#define lab_sys0(n) lab_sys((n), 0, 0, 0, 0, 0, 0)
#define lab_sys1(n, a) lab_sys((n), (long)(a), 0, 0, 0, 0, 0)
#define lab_sys2(n, a, b) lab_sys((n), (long)(a), (long)(b), 0, 0, 0, 0)
#define lab_sys3(n, a, b, c) lab_sys((n), (long)(a), (long)(b), (long)(c), 0, 0, 0)
#define lab_sys4(n, a, b, c, d) lab_sys((n), (long)(a), (long)(b), (long)(c), (long)(d), 0, 0)
#define lab_sys6(n, a, b, c, d, e, f) \
    lab_sys((n), (long)(a), (long)(b), (long)(c), (long)(d), (long)(e), (long)(f))

/* Start fn(arg) on a thread of this process that glibc does not know about, with every
 * signal blocked. Returns 0 or an errno. fn may call only what never writes TLS. */
LAB_HIDDEN int lab_thread_start(void (*fn)(void *), void *arg);

/* A recursive lock owned by a kernel thread id. Zero-initialised = unlocked. */
struct lab_lock {
    int owner;   /* tid, 0 = free; the futex word */
    int depth;   /* recursion depth of the owner */
    int waiters;
};

LAB_HIDDEN void lab_lock_init(struct lab_lock *l);
LAB_HIDDEN void lab_lock(struct lab_lock *l);
/* 0, or ETIMEDOUT after about timeout_ms. */
LAB_HIDDEN int lab_lock_timed(struct lab_lock *l, int timeout_ms);
LAB_HIDDEN void lab_unlock(struct lab_lock *l);
/* How many times a waiter took over a lock whose owner had died (for tests and debug). */
LAB_HIDDEN unsigned lab_lock_takeovers(void);

#endif
