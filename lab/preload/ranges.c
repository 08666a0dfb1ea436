/* The table of this process's lab ranges, and registering and announcing a range. */
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

/* ---------- the table of this process's lab ranges ---------- */

#define LAB_TAB_MAX 8192
static struct lab_ent g_tab[LAB_TAB_MAX];
int g_ntab; /* read without the lock on the fast path: 0 means "no lab memory" */

int tab_any(uintptr_t s, uintptr_t e)
{
    if (__atomic_load_n(&g_ntab, __ATOMIC_RELAXED) == 0)
        return 0;
    int hit = 0;
    lab_lock(&g_tab_lock);
    for (int i = 0; i < g_ntab && !hit; i++)
        hit = g_tab[i].start < e && s < g_tab[i].end;
    lab_unlock(&g_tab_lock);
    return hit;
}

int tab_add(const struct lab_ent *x)
{
    int ok = 0;
    lab_lock(&g_tab_lock);
    if (g_ntab < LAB_TAB_MAX) {
        g_tab[g_ntab] = *x;
        __atomic_store_n(&g_ntab, g_ntab + 1, __ATOMIC_RELAXED);
        ok = 1;
    }
    lab_unlock(&g_tab_lock);
    return ok;
}

int tab_find(uintptr_t a, struct lab_ent *out)
{
    int hit = 0;
    lab_lock(&g_tab_lock);
    for (int i = 0; i < g_ntab; i++)
        if (g_tab[i].start <= a && a < g_tab[i].end) {
            *out = g_tab[i];
            hit = 1;
            break;
        }
    lab_unlock(&g_tab_lock);
    return hit;
}

/* The lowest part of [s,e) that is lab memory, clipped to [s,e): 1 and *os, *oe, *kind, or 0. */
int tab_next(uintptr_t s, uintptr_t e, uintptr_t *os, uintptr_t *oe, int32_t *kind)
{
    int hit = 0;
    lab_lock(&g_tab_lock);
    for (int i = 0; i < g_ntab; i++) {
        const struct lab_ent *t = &g_tab[i];
        if (!(t->start < e && s < t->end) || (hit && t->start >= *os))
            continue;
        *os = t->start > s ? t->start : s;
        *oe = t->end < e ? t->end : e;
        *kind = t->kind;
        hit = 1;
    }
    lab_unlock(&g_tab_lock);
    return hit;
}

/* Does a lab file range (a kernel anonymous mapping standing in for a file) overlap [s,e)? */
int tab_any_file(uintptr_t s, uintptr_t e)
{
    return tab_any_kind(s, e, LAB_MAP_FILE_PRIVATE) || tab_any_kind(s, e, LAB_MAP_FILE_SHARED);
}

int tab_any_kind(uintptr_t s, uintptr_t e, int32_t kind)
{
    int hit = 0;
    lab_lock(&g_tab_lock);
    for (int i = 0; i < g_ntab && !hit; i++)
        hit = g_tab[i].start < e && s < g_tab[i].end && g_tab[i].kind == kind;
    lab_unlock(&g_tab_lock);
    return hit;
}

/* Is every page of [s,e) inside some lab range? (Ranges may abut: a split entry, say.) */
int tab_covers(uintptr_t s, uintptr_t e)
{
    uintptr_t cur = s;
    int moved = 1;
    lab_lock(&g_tab_lock);
    while (cur < e && moved) {
        moved = 0;
        for (int i = 0; i < g_ntab; i++)
            if (g_tab[i].start <= cur && cur < g_tab[i].end) {
                cur = g_tab[i].end;
                moved = 1;
                break;
            }
    }
    lab_unlock(&g_tab_lock);
    return cur >= e;
}

/* Forget [s,e): trims, splits or drops entries. Returns how many entries it touched. */
int tab_cut(uintptr_t s, uintptr_t e)
{
    int touched = 0;
    lab_lock(&g_tab_lock);
    for (int i = 0; i < g_ntab;) {
        struct lab_ent *t = &g_tab[i];
        if (!(t->start < e && s < t->end)) {
            i++;
            continue;
        }
        touched++;
        if (s <= t->start && t->end <= e) {
            *t = g_tab[g_ntab - 1];
            __atomic_store_n(&g_ntab, g_ntab - 1, __ATOMIC_RELAXED);
            continue; /* re-examine the entry moved into slot i */
        }
        if (t->start < s && e < t->end) {
            /* a hole in the middle: keep the left part here, the right part in a new slot */
            struct lab_ent right = *t;
            right.offset += e - t->start;
            right.start = e;
            t->end = s;
            if (g_ntab < LAB_TAB_MAX) {
                g_tab[g_ntab] = right;
                __atomic_store_n(&g_ntab, g_ntab + 1, __ATOMIC_RELAXED);
            } else {
                dbg("range table full: forgetting %#lx-%#lx", (unsigned long)right.start,
                    (unsigned long)right.end);
            }
        } else if (s <= t->start) {
            t->offset += e - t->start;
            t->start = e;
        } else {
            t->end = s;
        }
        i++;
    }
    lab_unlock(&g_tab_lock);
    return touched;
}

/* ---------- for lock.c (shim.h) ---------- */

int lab_active(void) { return g_on; }
void lab_conn_lock(void) { lab_lock(&g_conn_lock); }
void lab_conn_unlock(void) { lab_unlock(&g_conn_lock); }

void lab_wire_ranges(uintptr_t s, uintptr_t e, int flags)
{
    /* One request per lab range in [s, e): the table cannot change meanwhile (g_conn_lock). */
    for (int i = 0;; i++) {
        struct lab_range rg = {0, 0, 0, flags};
        lab_lock(&g_tab_lock);
        int more = i < g_ntab;
        if (more && g_tab[i].start < e && s < g_tab[i].end) {
            uintptr_t a = g_tab[i].start > s ? g_tab[i].start : s, b = g_tab[i].end < e ? g_tab[i].end : e;
            rg.addr = a;
            rg.len = b - a;
        }
        lab_unlock(&g_tab_lock);
        if (!more)
            break;
        if (rg.len == 0)
            continue;
        int32_t st = lab_req(LAB_WIRE, &rg, sizeof rg, NULL, 0, NULL);
        if (st != 0)
            dbg("LAB_WIRE %#lx+%#lx: %s", (unsigned long)rg.addr, (unsigned long)rg.len, strerror(st));
    }
}

/* ---------- registration ---------- */

int uffd_register(uintptr_t start, uintptr_t len, uint64_t mode)
{
    struct uffdio_register reg;
    memset(&reg, 0, sizeof reg);
    reg.range.start = start;
    reg.range.len = len;
    reg.mode = mode;
    long r = lab_sys3(SYS_ioctl, g_uffd, LAB_UFFDIO_REGISTER, &reg); /* the agent registers its scratch */
    return r < 0 ? (int)r : 0;
}

/* Private memory is WP-registered too (copy-on-write is modelled with write protection),
 * unless the daemon did not enable WP faults. */
uint64_t private_modes(void)
{
    uint64_t m = UFFDIO_REGISTER_MODE_MISSING;
    if (g_features & UFFD_FEATURE_PAGEFAULT_FLAG_WP)
        m |= UFFDIO_REGISTER_MODE_WP;
    return m;
}

/* Tell the daemon about [s, e) with one LAB_* range request; a refusal is only logged
 * (the program's own call has already happened). Returns the daemon's status. */
int32_t range_req(uint32_t type, const char *name, uintptr_t s, uintptr_t e, int32_t prot, int32_t flags)
{
    struct lab_range rg = {s, e - s, prot, flags};
    int32_t st = lab_req(type, &rg, sizeof rg, NULL, 0, NULL);
    if (st)
        dbg("%s %#lx+%#lx (%d %d): %s", name, (unsigned long)s, (unsigned long)(e - s), prot, flags, strerror(st));
    return st;
}

/* Shared file mappings map the file's memfd. Registered for minor faults as well, a page
 * already in the memfd (written by another mapper, by write(2), or zapped here by the
 * pageout) still faults on this process's first touch, so the daemon sees every one.
 * Registered for write protection too, a design can enter a page read-only (UFFDIO_CONTINUE
 * with MODE_WP) and see the first write to it as a fault (uvm2019's clean vnode, the chain
 * designs' prefaulted neighbours). */
uint64_t shared_modes(void)
{
    uint64_t m = UFFDIO_REGISTER_MODE_MISSING;
    if (g_features & UFFD_FEATURE_MINOR_SHMEM) {
        m |= UFFDIO_REGISTER_MODE_MINOR;
        if ((g_features & UFFD_FEATURE_WP_HUGETLBFS_SHMEM) && (g_features & UFFD_FEATURE_PAGEFAULT_FLAG_WP))
            m |= UFFDIO_REGISTER_MODE_WP;
    }
    return m;
}

/* In a fork child, before the program runs: zap the pages of shared lab ranges. A vma
 * registered for write protection has its page table copied at fork, shared or not (its
 * uffd-wp bits are not in the page cache), so the child would find its parent's shared pages
 * mapped; the designs give each process its own first-touch fault on them, and the
 * daemon's model of the child has none installed. (The REMOVE events drop nothing in the
 * model: the child's space has no shared page installed.) */
void zap_shared_ranges(void)
{
    if (!(shared_modes() & UFFDIO_REGISTER_MODE_WP))
        return;
    for (int i = 0; i < g_ntab; i++)
        if (g_tab[i].kind == LAB_MAP_FILE_SHARED)
            lab_sys3(SYS_madvise, (long)g_tab[i].start, (long)(g_tab[i].end - g_tab[i].start), MADV_DONTNEED);
}

/* A MAP_FIXED mapping replaced whatever lab memory was there: tell the daemon first,
 * so its unmap does not drop the new range announced right after. */
void forget_replaced(uintptr_t s, size_t len)
{
    uintptr_t e = s + page_up(len);
    if (tab_cut(s, e)) {
        range_req(LAB_UNMAP, "LAB_UNMAP (replaced)", s, e, 0, 0);
    }
}

/* Announce a registered range; on refusal undo it. Returns the address or MAP_FAILED. */
void *announce(void *res, size_t len, int prot, int flags, int kind, uint64_t ino, uint64_t off)
{
    uintptr_t s = (uintptr_t)res, l = page_up(len);
    struct lab_ent ent = {s, s + l, ino, off, kind, flags};
    if (!tab_add(&ent)) {
        dbg("range table full: mmap refused");
        real_munmap(res, len);
        errno = ENOMEM;
        return MAP_FAILED;
    }
    struct lab_map m;
    memset(&m, 0, sizeof m);
    m.addr = s;
    m.len = l;
    m.prot = prot;
    m.flags = flags;
    m.kind = kind;
    m.ino = ino;
    m.offset = off;
    int32_t st = lab_req(LAB_MAP, &m, sizeof m, NULL, 0, NULL);
    if (st != 0) {
        dbg("LAB_MAP %#lx+%#lx kind %d refused: %s", (unsigned long)s, (unsigned long)l, kind, strerror(st));
        tab_cut(s, s + l);
        real_munmap(res, len);
        errno = st;
        return MAP_FAILED;
    }
    dbg("mapped %#lx+%#lx kind %d ino %llu off %llu", (unsigned long)s, (unsigned long)l, kind,
        (unsigned long long)ino, (unsigned long long)off);
    return res;
}
