/*
 * mlock and friends under the lab. The kernel locks lab pages as it would any others (its
 * populate faults come to the daemon through the uffd like the program's own), but the daemon
 * must know: a locked page cannot be dropped (madvise refuses it, UFFDIO_MOVE too), so the
 * pageout must never pick it, and a resident limit below the locked set is reported, not
 * fought. The daemon marks the range wired (vm_map_wire's bookkeeping) before the real call,
 * so no pageout starts on a page being locked, and unwired after munlock has really unlocked.
 */
#include <errno.h>
#include <stdint.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "shim.h"

LAB_HIDDEN int lab_lock_future;

static uintptr_t page_down(const void *a) { return (uintptr_t)a & ~(uintptr_t)4095; }

static uintptr_t page_end(const void *a, size_t len)
{
    uintptr_t e = (uintptr_t)a + len;
    return e < (uintptr_t)a ? UINTPTR_MAX & ~(uintptr_t)4095 : (e + 4095) & ~(uintptr_t)4095;
}

static int lock_range(const void *addr, size_t len, long nr, unsigned flags)
{
    if (!lab_active())
        return (int)syscall(nr, addr, len, flags);
    uintptr_t s = page_down(addr), e = page_end(addr, len);
    lab_conn_lock();
    lab_wire_ranges(s, e, 1);
    int r = (int)syscall(nr, addr, len, flags);
    int err = errno;
    if (r != 0)
        lab_wire_ranges(s, e, 0);
    lab_conn_unlock();
    errno = err;
    return r;
}

LAB_EXPORT int mlock(const void *addr, size_t len) { return lock_range(addr, len, SYS_mlock, 0); }

LAB_EXPORT int mlock2(const void *addr, size_t len, unsigned int flags) { return lock_range(addr, len, SYS_mlock2, flags); }

LAB_EXPORT int munlock(const void *addr, size_t len)
{
    if (!lab_active())
        return (int)syscall(SYS_munlock, addr, len);
    lab_conn_lock();
    int r = (int)syscall(SYS_munlock, addr, len);
    int err = errno;
    if (r == 0)
        lab_wire_ranges(page_down(addr), page_end(addr, len), 0);
    lab_conn_unlock();
    errno = err;
    return r;
}

LAB_EXPORT int mlockall(int flags)
{
    if (!lab_active())
        return (int)syscall(SYS_mlockall, flags);
    lab_conn_lock();
    if (flags & MCL_CURRENT)
        lab_wire_ranges(0, UINTPTR_MAX, 1);
    int r = (int)syscall(SYS_mlockall, flags);
    int err = errno;
    if (r != 0 && (flags & MCL_CURRENT))
        lab_wire_ranges(0, UINTPTR_MAX, 0);
    if (r == 0)
        __atomic_store_n(&lab_lock_future, (flags & MCL_FUTURE) != 0, __ATOMIC_RELAXED);
    lab_conn_unlock();
    errno = err;
    return r;
}

LAB_EXPORT int munlockall(void)
{
    if (!lab_active())
        return (int)syscall(SYS_munlockall);
    lab_conn_lock();
    int r = (int)syscall(SYS_munlockall);
    int err = errno;
    if (r == 0) {
        lab_wire_ranges(0, UINTPTR_MAX, 0);
        __atomic_store_n(&lab_lock_future, 0, __ATOMIC_RELAXED);
    }
    lab_conn_unlock();
    errno = err;
    return r;
}
