/*
 * mlock and friends under the lab. Before the real call the daemon wires the range the way the
 * design does (vm_map_wire / uvm_map_pageable: every page a wiring fault, installed with the
 * entry's full protection), so the kernel's own populate then finds every page present and
 * faults none through the uffd: each page is counted once, by the design's wiring. MLOCK_ONFAULT
 * and MCL_ONFAULT populate nothing (no BSD has them): the range is only marked wired, and the
 * program's faults are served as faults on a wired entry. The daemon must know of every lock: a
 * locked page cannot be dropped (madvise refuses it, UFFDIO_MOVE too), so the pageout must never
 * pick it, and a resident limit below the locked set is reported, not fought. Wired before the
 * real call, so no pageout starts on a page being locked; unwired after munlock really unlocked.
 */
#include <errno.h>
#include <stdint.h>
#include <sys/ioctl.h>
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
    lab_wire_ranges(s, e, LAB_WIRE_ON | ((flags & MLOCK_ONFAULT) ? 0 : LAB_WIRE_FAULT));
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

/* The agent's scratch (agent.c) is no memory of the program: MCL_CURRENT would populate it through
 * the lab's uffd (faults on no map entry) and lock it (its moves and zaps then fail). It leaves the
 * uffd for the call and comes back empty and unlocked; the agent cannot use it meanwhile (it takes
 * the connection lock, which the caller holds). */
static void scratch_aside(int before)
{
    if (!g_scratch)
        return;
    size_t len = LAB_SCRATCH_PAGES * g_page;
    if (before) {
        struct uffdio_range rg = {g_scratch, len};
        syscall(SYS_ioctl, g_uffd, UFFDIO_UNREGISTER, &rg);
        return;
    }
    syscall(SYS_munlock, g_scratch, len);
    if (g_scratch_used == 0) /* none of its pages waits to be checked and zapped */
        syscall(SYS_madvise, g_scratch, len, MADV_DONTNEED);
    if (uffd_register(g_scratch, len, UFFDIO_REGISTER_MODE_MISSING) != 0)
        dbg("could not register the agent's scratch again after mlockall");
}

/* mlockall(MCL_FUTURE) would have the kernel populate every new mapping at mmap time, before the
 * shim registers a lab one, so the kernel is asked for MCL_FUTURE|MCL_ONFAULT and the shim locks
 * each new mapping itself once it is the lab's (lab_populate in mmap.c; lab_future_plain for the
 * others). MCL_CURRENT goes first, with the program's own MCL_ONFAULT: a later mlockall call
 * resets the kernel's future flags, and MCL_FUTURE without MCL_CURRENT leaves current mappings be. */
LAB_EXPORT int mlockall(int flags)
{
    if (!lab_active())
        return (int)syscall(SYS_mlockall, flags);
    if (!(flags & (MCL_CURRENT | MCL_FUTURE)) || (flags & ~(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT))) {
        errno = EINVAL;
        return -1;
    }
    lab_conn_lock();
    int cur = flags & MCL_CURRENT, r = 0;
    if (cur) {
        lab_wire_ranges(0, UINTPTR_MAX, LAB_WIRE_ON | ((flags & MCL_ONFAULT) ? 0 : LAB_WIRE_FAULT));
        scratch_aside(1);
        r = (int)syscall(SYS_mlockall, flags & (MCL_CURRENT | MCL_ONFAULT));
        scratch_aside(0);
    }
    if (r == 0 && (flags & MCL_FUTURE))
        r = (int)syscall(SYS_mlockall, MCL_FUTURE | MCL_ONFAULT);
    int err = errno;
    if (r != 0 && cur)
        lab_wire_ranges(0, UINTPTR_MAX, 0);
    if (r == 0)
        __atomic_store_n(&lab_lock_future,
                         !(flags & MCL_FUTURE) ? 0 : (flags & MCL_ONFAULT) ? LAB_FUTURE_ONFAULT : LAB_FUTURE_LOCK,
                         __ATOMIC_RELAXED);
    lab_conn_unlock();
    errno = err;
    return r;
}

/* A mapping that is not lab memory, made while mlockall(MCL_FUTURE) (without MCL_ONFAULT) is in
 * force: locked and populated now, as the kernel would have done without the shim's MCL_ONFAULT. */
void *lab_future_plain(void *res, size_t len, int prot)
{
    if (res != MAP_FAILED && prot != PROT_NONE && __atomic_load_n(&lab_lock_future, __ATOMIC_RELAXED) == LAB_FUTURE_LOCK) {
        int e = errno;
        syscall(SYS_mlock, res, len);
        errno = e;
    }
    return res;
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
