/* The mmap family: mmap, munmap, msync, mprotect, madvise, mremap. */
#include "labproto.h"
#include "shim.h"
#include "labsys.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* ---------- mmap ---------- */

/* MAP_POPULATE, MAP_LOCKED and mlockall(MCL_FUTURE) on lab memory: the kernel would fault the
 * pages in at mmap time, before the range is registered, so the daemon would never see them.
 * The real mmap goes without them (lock.c keeps MCL_FUTURE on-fault in the kernel); once the
 * range is the lab's, a lock wires it (the daemon faults every page in as the design wires, and
 * the kernel's populate then finds them present), and MAP_POPULATE alone faults them in through
 * the uffd as Linux's populate does: write faults for a private writable mapping, read faults
 * otherwise. Errors are ignored, as the kernel ignores a failed populate at mmap time. Called
 * without the connection lock. */
static void *lab_populate(void *res, size_t len, int prot, int flags)
{
    if (res == MAP_FAILED || prot == PROT_NONE)
        return res;
    int e = errno;
    int future = __atomic_load_n(&lab_lock_future, __ATOMIC_RELAXED);
    if ((flags & MAP_LOCKED) || future == LAB_FUTURE_LOCK)
        mlock(res, len);
    else if (future == LAB_FUTURE_ONFAULT)
        mlock2(res, len, MLOCK_ONFAULT);
    else if (flags & MAP_POPULATE) {
        int type = flags & LAB_MAP_TYPE;
        int write = (prot & PROT_WRITE) && type == MAP_PRIVATE;
        syscall(SYS_madvise, res, len, write ? MADV_POPULATE_WRITE : MADV_POPULATE_READ);
    }
    errno = e;
    return res;
}

static void *map_anon(void *addr, size_t len, int prot, int flags)
{
    lab_lock(&g_conn_lock);
    void *res = real_mmap(addr, len, prot, flags & ~(MAP_POPULATE | MAP_LOCKED), -1, 0);
    if (res == MAP_FAILED) {
        lab_unlock(&g_conn_lock);
        return res;
    }
    if (flags & MAP_FIXED)
        forget_replaced((uintptr_t)res, len);
    int r = uffd_register((uintptr_t)res, page_up(len), private_modes());
    if (r < 0) {
        /* odd memory the kernel will not register: leave it as plain memory */
        dbg("register %#lx+%#lx failed (%s): left as plain memory", (unsigned long)res,
            (unsigned long)page_up(len), strerror(-r));
        lab_unlock(&g_conn_lock);
        return res;
    }
    res = announce(res, len, prot, flags, LAB_MAP_ANON, 0, 0);
    int e = errno;
    lab_unlock(&g_conn_lock);
    errno = e;
    return res;
}

/* Register a freshly mapped lab file range and tell the daemon; a range the kernel will
 * not register is unmapped again, since unregistered it would bypass the lab. */
static void *register_file_range(void *res, size_t len, int prot, int flags, uint64_t modes, int kind,
                                 const struct stat *st, off_t off)
{
    int r = uffd_register((uintptr_t)res, page_up(len), modes);
    if (r < 0) {
        dbg("register file range (kind %d) failed: %s", kind, strerror(-r));
        real_munmap(res, len);
        errno = -r;
        return MAP_FAILED;
    }
    return announce(res, len, prot, flags, kind, st->st_ino, (uint64_t)off);
}

static void *map_lab_file(void *addr, size_t len, int prot, int flags, int fd, off_t off, const struct stat *st)
{
    int type = flags & LAB_MAP_TYPE;
    int shared = type == MAP_SHARED || type == MAP_SHARED_VALIDATE;
    if (!shared && type != MAP_PRIVATE) {
        errno = EINVAL;
        return MAP_FAILED;
    }
    /* The checks the kernel would make on the lab file itself, since it never sees it mapped. */
    if (off < 0 || ((uint64_t)off & (g_page - 1)) || len == 0) {
        errno = EINVAL;
        return MAP_FAILED;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl < 0)
        return MAP_FAILED;
    int acc = fl & O_ACCMODE;
    if (acc == O_WRONLY) {
        errno = EACCES;
        return MAP_FAILED;
    }
    if (shared && (prot & PROT_WRITE) && (acc != O_RDWR || (fl & O_APPEND))) {
        errno = EACCES;
        return MAP_FAILED;
    }
    /* Populating or locking at mmap time would fault pages in before the range is
     * registered, bypassing the daemon: lab_populate does it once the range is the lab's. */
    int keep = flags & ~(MAP_POPULATE | MAP_LOCKED);

    lab_lock(&g_conn_lock);
    void *res;
    int e = 0;
    if (!shared) {
        int rflags = (keep & ~LAB_MAP_TYPE) | MAP_PRIVATE | MAP_ANONYMOUS;
        res = real_mmap(addr, len, prot, rflags, -1, 0);
        if (res == MAP_FAILED)
            goto out;
        if (flags & MAP_FIXED)
            forget_replaced((uintptr_t)res, len);
        res = register_file_range(res, len, prot, flags, private_modes(), LAB_MAP_FILE_PRIVATE, st, off);
    } else {
        struct lab_open_shared os = {st->st_ino};
        struct lab_open_shared_reply osr;
        int memfd = -1;
        int32_t s = lab_req(LAB_OPEN_SHARED, &os, sizeof os, &osr, sizeof osr, &memfd);
        if (s != 0 || memfd < 0) {
            if (memfd >= 0)
                close(memfd);
            dbg("LAB_OPEN_SHARED ino %llu: %s", (unsigned long long)st->st_ino, s ? strerror(s) : "no memfd");
            errno = s ? s : EPROTO;
            res = MAP_FAILED;
            goto out;
        }
        res = real_mmap(addr, len, prot, keep, memfd, off);
        if (res == MAP_FAILED) {
            e = errno;
            close(memfd);
            errno = e;
            goto out;
        }
        close(memfd); /* the mapping holds the object */
        if (flags & MAP_FIXED)
            forget_replaced((uintptr_t)res, len);
        res = register_file_range(res, len, prot, flags, shared_modes(), LAB_MAP_FILE_SHARED, st, off);
    }
out:
    e = errno;
    lab_unlock(&g_conn_lock);
    errno = e;
    return res;
}

void *lab_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (!g_on)
        return real_mmap(addr, len, prot, flags, fd, off);

    if (flags & MAP_ANONYMOUS) {
        if ((flags & LAB_MAP_TYPE) == MAP_PRIVATE && prot != PROT_NONE &&
            !(flags & (MAP_STACK | MAP_GROWSDOWN | MAP_HUGETLB)))
            return lab_populate(map_anon(addr, len, prot, flags), len, prot, flags);
    } else if (fd >= 0 && g_have_mount) {
        struct stat st;
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_dev == g_mount_dev)
            return lab_populate(map_lab_file(addr, len, prot, flags, fd, off, &st), len, prot, flags);
    }

    /* Not lab memory. A fixed mapping may still replace some. */
    if ((flags & MAP_FIXED) && tab_any((uintptr_t)addr, (uintptr_t)addr + page_up(len))) {
        lab_lock(&g_conn_lock);
        void *res = real_mmap(addr, len, prot, flags, fd, off);
        int e = errno;
        if (res != MAP_FAILED)
            forget_replaced((uintptr_t)res, len);
        lab_unlock(&g_conn_lock);
        errno = e;
        return lab_future_plain(res, len, prot);
    }
    return lab_future_plain(real_mmap(addr, len, prot, flags, fd, off), len, prot);
}

LAB_EXPORT void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    return lab_mmap(addr, len, prot, flags, fd, off);
}

LAB_EXPORT void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off64_t off)
{
    return lab_mmap(addr, len, prot, flags, fd, (off_t)off);
}

/* ---------- munmap, msync, mprotect, mremap ---------- */

int lab_munmap(void *addr, size_t len)
{
    uintptr_t s = (uintptr_t)addr, e = s + page_up(len);
    if (!g_on || !tab_any(s, e))
        return real_munmap(addr, len);
    /* Held across the real call so the daemon sees unmaps and maps in the order they happened. */
    lab_lock(&g_conn_lock);
    int r = real_munmap(addr, len);
    int err = errno;
    if (r == 0 && tab_cut(s, e)) {
        /* synchronous: the daemon writes shared dirty pages back before it replies */
        range_req(LAB_UNMAP, "LAB_UNMAP", s, e, 0, 0);
    }
    lab_unlock(&g_conn_lock);
    errno = err;
    return r;
}

LAB_EXPORT int munmap(void *addr, size_t len) { return lab_munmap(addr, len); }

LAB_EXPORT int msync(void *addr, size_t len, int flags)
{
    uintptr_t s = (uintptr_t)addr, e = s + page_up(len);
    int r = real_msync(addr, len, flags);
    if (r != 0 || !g_on || !tab_any(s, e))
        return r;
    struct lab_range rg = {s, e - s, 0, flags};
    int32_t st = lab_req(LAB_MSYNC, &rg, sizeof rg, NULL, 0, NULL);
    if (st != 0) {
        /* a failed write-back is the program's business, as on a real file */
        errno = st;
        return -1;
    }
    return 0;
}

LAB_EXPORT int mprotect(void *addr, size_t len, int prot)
{
    uintptr_t s = (uintptr_t)addr, e = s + page_up(len);
    if (!g_on || !tab_any(s, e))
        return real_mprotect(addr, len, prot);
    lab_lock(&g_conn_lock);
    int r = real_mprotect(addr, len, prot);
    int err = errno;
    if (r == 0) {
        range_req(LAB_PROTECT, "LAB_PROTECT", s, e, prot, 0);
    }
    lab_unlock(&g_conn_lock);
    errno = err;
    return r;
}

/* Advice the daemon is told of, after the real call and under the connection lock (fork takes
 * it too): what a fork child inherits (wipe-on-fork, don't-fork), the access pattern (normal,
 * random, sequential) that sizes each design's fault window, and WILLNEED (the design maps the
 * resident pages it would map; the kernel's own WILLNEED maps nothing of lab memory). DONTNEED
 * (and FREE, made DONTNEED below) reaches the daemon as the kernel's UFFD_EVENT_REMOVE, which the
 * daemon applies before the call returns; telling it again would drop the pages twice. */
static int advice_told(int advice)
{
    switch (advice) {
    case MADV_NORMAL: case MADV_RANDOM: case MADV_SEQUENTIAL: case MADV_WILLNEED:
    case MADV_WIPEONFORK: case MADV_KEEPONFORK: case MADV_DONTFORK: case MADV_DOFORK:
        return 1;
    default:
        return 0;
    }
}

LAB_EXPORT int madvise(void *addr, size_t len, int advice)
{
    uintptr_t s = (uintptr_t)addr, e = s + page_up(len);
    if (!g_on || !tab_any(s, e))
        return (int)syscall(SYS_madvise, addr, len, advice);
    /* The kernel sees a private lab file mapping as anonymous memory: the refusals Linux makes
     * for a file mapping are ours to make. */
    int wipe = advice == MADV_WIPEONFORK || advice == MADV_KEEPONFORK;
    if ((wipe || advice == MADV_FREE) && tab_any_file(s, e)) {
        errno = EINVAL;
        return -1;
    }
    if (advice == MADV_REMOVE && tab_any_kind(s, e, LAB_MAP_FILE_PRIVATE)) {
        errno = EACCES; /* not a shared writable mapping */
        return -1;
    }
    /* Punching a hole through a shared lab mapping would punch the lab's page cache (the
     * memfd) but not the file: refused until the daemon punches the file itself. */
    if (advice == MADV_REMOVE && tab_any_kind(s, e, LAB_MAP_FILE_SHARED)) {
        errno = EOPNOTSUPP;
        return -1;
    }
    /* MADV_FREE lets the kernel keep a page until it needs the memory, yet it raises the same
     * REMOVE event, so the model would forget pages the process still has. Lab memory takes
     * FREE as DONTNEED, as if reclaimed at once (Linux allows it; UVM's madvise frees then). */
    if (advice == MADV_FREE && tab_covers(s, e))
        advice = MADV_DONTNEED;
    if (!advice_told(advice))
        return (int)syscall(SYS_madvise, addr, len, advice);
    lab_lock(&g_conn_lock);
    int r = (int)syscall(SYS_madvise, addr, len, advice);
    int err = errno;
    if (r == 0) {
        range_req(LAB_ADVISE, "LAB_ADVISE", s, e, 0, advice);
    }
    lab_unlock(&g_conn_lock);
    errno = err;
    return r;
}

LAB_EXPORT void *mremap(void *old, size_t old_size, size_t new_size, int flags, ...)
{
    void *want = NULL;
    if (flags & MREMAP_FIXED) {
        va_list ap;
        va_start(ap, flags);
        want = va_arg(ap, void *);
        va_end(ap);
    }
    uintptr_t o = (uintptr_t)old;
    struct lab_ent ent;
    int was_lab = g_on && __atomic_load_n(&g_ntab, __ATOMIC_RELAXED) && tab_find(o, &ent);
    if (!was_lab) {
        /* Held when the move may land on lab memory, so the agent never zaps what replaced it. */
        int lock = g_on && (flags & MREMAP_FIXED) &&
                   tab_any((uintptr_t)want, (uintptr_t)want + page_up(new_size));
        if (lock)
            lab_lock(&g_conn_lock);
        void *res = real_mremap(old, old_size, new_size, flags, want);
        int e = errno;
        if (res != MAP_FAILED && g_on && (flags & MREMAP_FIXED) &&
            tab_cut((uintptr_t)res, (uintptr_t)res + page_up(new_size)))
            dbg("mremap onto lab memory at %p: forgotten", res);
        if (lock)
            lab_unlock(&g_conn_lock);
        errno = e;
        return res;
    }
    /* Held across the real call: the LAB_REMAP below must follow the kernel's events in order. */
    lab_lock(&g_conn_lock);
    if (flags & MREMAP_DONTUNMAP) {
        /* The old range stays mapped and registered: the daemon must know before the event,
         * or a touch of it by another thread would find it missing. */
        struct lab_remap pre = {o, page_up(old_size), 0, page_up(new_size), flags, 0};
        int32_t st = lab_req(LAB_REMAP_PREPARE, &pre, sizeof pre, NULL, 0, NULL);
        if (st)
            dbg("LAB_REMAP_PREPARE %#lx: %s", (unsigned long)o, strerror(st));
    }
    void *res = real_mremap(old, old_size, new_size, flags, want);
    int err = errno;
    if (res != MAP_FAILED) {
        uintptr_t n = (uintptr_t)res;
        lab_lock(&g_tab_lock);
        if (old_size && !(flags & MREMAP_DONTUNMAP))
            tab_cut(o, o + page_up(old_size));
        if (flags & MREMAP_FIXED)
            tab_cut(n, n + page_up(new_size));
        struct lab_ent moved = ent;
        moved.offset = ent.offset + (o - ent.start);
        moved.start = n;
        moved.end = n + page_up(new_size);
        if (!tab_add(&moved))
            dbg("range table full: forgetting the moved range %#lx", (unsigned long)n);
        lab_unlock(&g_tab_lock);
        /* A move reaches the daemon as a uffd REMAP event; growth in place has no event. */
        struct lab_remap rm = {o, page_up(old_size), n, page_up(new_size), flags, 0};
        int32_t st = lab_req(LAB_REMAP, &rm, sizeof rm, NULL, 0, NULL);
        if (st)
            dbg("LAB_REMAP %#lx -> %#lx: %s", (unsigned long)o, (unsigned long)n, strerror(st));
    } else if (flags & MREMAP_DONTUNMAP) {
        struct lab_remap pre = {o, page_up(old_size), 0, page_up(new_size), 0, 0}; /* nothing moved */
        lab_req(LAB_REMAP_PREPARE, &pre, sizeof pre, NULL, 0, NULL);
    }
    lab_unlock(&g_conn_lock);
    errno = err;
    return res;
}
