/* Reads and writes of the process's own memory through /proc/self/mem (what debuggers
 * and the kernel's mm selftests do; FOLL_FORCE: a write to a read-only private mapping
 * breaks copy-on-write and leaves the page read-only).
 *
 * The kernel serves such an access with get_user_pages without FAULT_FLAG_ALLOW_RETRY
 * (access_remote_vm passes no "locked"), and handle_userfault answers a fault that cannot
 * be retried with SIGBUS at once, before any message reaches the uffd: on lab memory a
 * page that is missing, or present but write-protected by the lab, makes the access fail
 * with EIO and the daemon never hears of it. (process_vm_readv/writev do allow retry:
 * their faults reach the daemon like any other.)
 *
 * So the shim lets the call run, and only when it fails (EIO) or stops short on lab
 * memory does it make the pages ready itself, then repeats the rest: a read fault for a
 * read; a write fault for a write to private memory (a private page the program may not
 * write is opened for writing just for that fault, through the lab's mprotect, and
 * closed again: counters and contents are those of a write fault, the mapping stays
 * read-only as FOLL_FORCE leaves it). A shared mapping the program may not write is left
 * alone: the kernel refuses FOLL_FORCE writes there too. g_conn_lock is held from the
 * faults to the repeated call, so the pageout's agent cannot take the pages back between.
 * A debugger in another process writing through /proc/PID/mem or ptrace gets EIO: only
 * the target's own shim could help, and it does not see those calls.
 */
#include "shim.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

/* Is fd this process's /proc/PID/mem (or a thread's /proc/PID/task/TID/mem)? */
static int is_own_mem(int fd)
{
    char link[96];
    ssize_t n = fd_link(fd, link, sizeof link);
    if (n < 0)
        return 0;
    if (strncmp(link, "/proc/", 6) != 0 || n < 4 || strcmp(link + n - 4, "/mem") != 0)
        return 0;
    char *end;
    long pid = strtol(link + 6, &end, 10);
    if (end == link + 6 || *end != '/')
        return 0;
    if (pid == (long)getpid())
        return 1;
    /* /proc/TID/mem of one of our threads is our memory too */
    char task[64];
    snprintf(task, sizeof task, "/proc/self/task/%ld", pid);
    return access(task, F_OK) == 0;
}

/* The vma holding a: its end and prot (from /proc/self/maps). 0 if a is in none. */
static int vma_at(uintptr_t a, uintptr_t *end, int *prot, int *shared)
{
    int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    char buf[4096], line[512];
    size_t ll = 0;
    int found = 0;
    ssize_t n;
    while (!found && (n = read(fd, buf, sizeof buf)) > 0) {
        for (ssize_t i = 0; i < n && !found; i++) {
            if (buf[i] != '\n') {
                if (ll < sizeof line - 1)
                    line[ll++] = buf[i];
                continue;
            }
            line[ll] = 0;
            ll = 0;
            unsigned long s, e;
            char p[5];
            if (sscanf(line, "%lx-%lx %4s", &s, &e, p) != 3 || a < s || a >= e)
                continue;
            *end = e;
            *prot = (p[0] == 'r' ? PROT_READ : 0) | (p[1] == 'w' ? PROT_WRITE : 0) | (p[2] == 'x' ? PROT_EXEC : 0);
            *shared = p[3] == 's';
            found = 1;
        }
    }
    close(fd);
    return found;
}

/* Fault in the lab pages of [s,e) as the access needs. Caller holds g_conn_lock. */
static void make_ready(uintptr_t s, uintptr_t e, int write)
{
    uintptr_t os, oe, vend;
    int32_t kind;
    int prot, shared;
    for (uintptr_t cur = s; cur < e && tab_next(cur, e, &os, &oe, &kind); cur = oe)
        for (uintptr_t a = os; a < oe; a = vend) {
            if (!vma_at(a, &vend, &prot, &shared))
                return;
            if (vend > oe)
                vend = oe;
            int need = write ? PROT_READ | PROT_WRITE : PROT_READ;
            if (write && shared && !(prot & PROT_WRITE))
                continue; /* refused by the kernel as natively */
            int open_it = (prot & need) != need;
            if (open_it && mprotect((void *)a, vend - a, prot | need) != 0)
                continue;
            for (uintptr_t p = a; p < vend; p += g_page) {
                if (write)
                    __atomic_fetch_add((char *)p, 0, __ATOMIC_RELAXED); /* a write fault, bytes unchanged */
                else
                    (void)*(volatile char *)p;
            }
            if (open_it)
                mprotect((void *)a, vend - a, prot);
        }
}

typedef ssize_t (*rw_fn)(int, void *, size_t, off_t);

static ssize_t real_pread(int fd, void *b, size_t n, off_t o) { return syscall(SYS_pread64, fd, b, n, o); }
static ssize_t real_pwrite(int fd, void *b, size_t n, off_t o) { return syscall(SYS_pwrite64, fd, b, n, o); }

/* The call returned r (errno err) for n bytes at address pos; finish what lab memory stopped. */
static ssize_t finish(int fd, char *buf, size_t n, uintptr_t pos, ssize_t r, int err, int write)
{
    if (!g_on || (r < 0 && err != EIO) || (r >= 0 && (size_t)r >= n)) {
        errno = err;
        return r;
    }
    size_t done = r > 0 ? (size_t)r : 0;
    if (!tab_any(pos + done, pos + done + 1) || !is_own_mem(fd)) {
        errno = err;
        return r;
    }
    for (int tries = 0; tries < 4 && done < n && tab_any(pos + done, pos + done + 1); tries++) {
        uintptr_t s = (pos + done) & ~(uintptr_t)(g_page - 1), e = pos + n;
        lab_lock(&g_conn_lock);
        make_ready(s, e, write);
        ssize_t k = (write ? real_pwrite : real_pread)(fd, buf + done, n - done, (off_t)(pos + done));
        int e2 = errno;
        lab_unlock(&g_conn_lock);
        if (k < 0) {
            err = e2;
            if (e2 != EIO)
                break;
            continue;
        }
        done += (size_t)k;
        if (k == 0)
            break;
    }
    if (done == 0) {
        errno = err;
        return r;
    }
    return (ssize_t)done;
}

static ssize_t (*next_read)(int, void *, size_t);
static ssize_t (*next_write)(int, const void *, size_t);
static ssize_t (*next_pread)(int, void *, size_t, off_t);
static ssize_t (*next_pwrite)(int, const void *, size_t, off_t);

__attribute__((constructor(102))) static void procmem_init(void)
{
    next_read = (ssize_t(*)(int, void *, size_t))dlsym(RTLD_NEXT, "read");
    next_write = (ssize_t(*)(int, const void *, size_t))dlsym(RTLD_NEXT, "write");
    next_pread = (ssize_t(*)(int, void *, size_t, off_t))dlsym(RTLD_NEXT, "pread64");
    next_pwrite = (ssize_t(*)(int, const void *, size_t, off_t))dlsym(RTLD_NEXT, "pwrite64");
}

LAB_EXPORT ssize_t pread64(int fd, void *buf, size_t n, off_t off)
{
    ssize_t r = next_pread ? next_pread(fd, buf, n, off) : real_pread(fd, buf, n, off);
    if (r >= 0 && (size_t)r == n)
        return r;
    return finish(fd, buf, n, (uintptr_t)off, r, errno, 0);
}

LAB_EXPORT ssize_t pwrite64(int fd, const void *buf, size_t n, off_t off)
{
    ssize_t r = next_pwrite ? next_pwrite(fd, buf, n, off) : real_pwrite(fd, (void *)buf, n, off);
    if (r >= 0 && (size_t)r == n)
        return r;
    return finish(fd, (char *)buf, n, (uintptr_t)off, r, errno, 1);
}

LAB_EXPORT ssize_t pread(int fd, void *buf, size_t n, off_t off) { return pread64(fd, buf, n, off); }
LAB_EXPORT ssize_t pwrite(int fd, const void *buf, size_t n, off_t off) { return pwrite64(fd, buf, n, off); }

/* read/write at the file position: only a failure (EIO) is looked at, never a short count
 * (pipes and sockets are short all the time); a program repeats a short call and gets here. */
static ssize_t at_position(int fd, char *buf, size_t n, ssize_t r, int err, int write)
{
    if (!g_on || r >= 0 || err != EIO) {
        errno = err;
        return r;
    }
    off_t pos = lseek(fd, 0, SEEK_CUR);
    if (pos == (off_t)-1) {
        errno = err;
        return r;
    }
    ssize_t k = finish(fd, buf, n, (uintptr_t)pos, r, err, write);
    if (k > 0) {
        int e = errno;
        lseek(fd, pos + k, SEEK_SET);
        errno = e;
    }
    return k;
}

LAB_EXPORT ssize_t read(int fd, void *buf, size_t n)
{
    ssize_t r = next_read ? next_read(fd, buf, n) : syscall(SYS_read, fd, buf, n);
    if (r >= 0)
        return r;
    return at_position(fd, buf, n, r, errno, 0);
}

LAB_EXPORT ssize_t write(int fd, const void *buf, size_t n)
{
    ssize_t r = next_write ? next_write(fd, buf, n) : syscall(SYS_write, fd, buf, n);
    if (r >= 0)
        return r;
    return at_position(fd, (char *)buf, n, r, errno, 1);
}
