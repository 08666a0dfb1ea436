/* Programs that use userfaultfd themselves (stress-ng --userfaultfd, the kernel's uffd
 * tests, live-migration and GC runtimes): their UFFDIO_REGISTER on lab memory would
 * fail with EBUSY, since the range is already registered with the lab's uffd and a vma
 * has one uffd at a time. The program's registration wins: the shim interposes ioctl,
 * and on UFFDIO_REGISTER on a userfaultfd that is not the lab's it gives the lab part
 * of the range up first (LAB_RELEASE: the daemon forgets it and unregisters it), then
 * lets the call through. Pages already in the process stay, so the program's uffd sees
 * missing faults only for pages that were never touched, as it would natively.
 *
 * A lab file mapping is refused with EINVAL, as the kernel refuses to register a FUSE
 * file mapping (only anonymous, shmem and hugetlb memory can be registered): under the
 * lab it is anonymous memory the daemon fills, and given up it would read zeros.
 */
#include "labproto.h"
#include "shim.h"

#include <errno.h>
#include <linux/userfaultfd.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <unistd.h>

ssize_t fd_link(int fd, char *link, size_t cap)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, link, cap - 1);
    if (n >= 0)
        link[n] = 0;
    return n;
}

/* Is fd a userfaultfd (from userfaultfd(2) or /dev/userfaultfd)? Only asked on UFFDIO_REGISTER. */
static int is_uffd(int fd)
{
    char link[64];
    return fd_link(fd, link, sizeof link) >= 0 && strcmp(link, "anon_inode:[userfaultfd]") == 0;
}

/* Give [s,e)'s lab memory up to the program's uffd. Returns 0 or an errno for the call. */
static int give_up(uintptr_t s, uintptr_t e)
{
    uintptr_t os, oe;
    int32_t kind;
    int err = 0;
    lab_lock(&g_conn_lock); /* the agent never evicts a range while it leaves */
    for (uintptr_t cur = s; cur < e && tab_next(cur, e, &os, &oe, &kind); cur = oe)
        if (kind != LAB_MAP_ANON) {
            dbg("UFFDIO_REGISTER on a lab file mapping at %#lx: EINVAL, as for a FUSE file", (unsigned long)os);
            err = EINVAL;
            break;
        }
    while (!err && tab_next(s, e, &os, &oe, &kind)) {
        tab_cut(os, oe);
        struct lab_range rg = {os, oe - os, 0, 0};
        int32_t st = lab_req(LAB_RELEASE, &rg, sizeof rg, NULL, 0, NULL);
        dbg("released %#lx+%#lx to the program's userfaultfd%s%s", (unsigned long)os, (unsigned long)(oe - os),
            st ? ": " : "", st ? strerror(st) : "");
    }
    lab_unlock(&g_conn_lock);
    return err;
}

LAB_EXPORT int ioctl(int fd, unsigned long req, ...)
{
    va_list ap;
    va_start(ap, req);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    /* The kernel takes the command as an unsigned int: a caller's sign-extended int matches too. */
    if ((unsigned int)req == (unsigned int)UFFDIO_REGISTER && g_on && fd != g_uffd && arg && is_uffd(fd)) {
        const struct uffdio_register *reg = arg;
        uintptr_t s = (uintptr_t)reg->range.start, len = (uintptr_t)reg->range.len;
        /* A bad range is the kernel's to refuse; only a valid one can leave the lab. */
        if (len && !((s | len) & (g_page - 1)) && s + len > s && tab_any(s, s + len)) {
            int err = give_up(s, s + len);
            if (err) {
                errno = err;
                return -1;
            }
        }
    }
    return (int)syscall(SYS_ioctl, fd, req, arg);
}
