/* The shim's agent thread: evicts pages on the daemon's behalf (moved from shim.c as it was). */
#include "labproto.h"
#include "shim.h"
#include "labsys.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/types.h>
#include <unistd.h>

/* ---------- the agent: evicts pages on the daemon's behalf ---------- */

/* The agent's connection. Set and cleared under g_conn_lock, which fork holds, so a
 * fork child always sees it whole and can close its inherited copy. */
int g_agent_fd = -1;
static dev_t g_agent_dev;
static ino_t g_agent_ino;
/* The request payload. Only the agent thread uses it (one per process). */
static uint64_t g_agent_buf[LAB_MAX_PAYLOAD / 8];

/* Is fd still our agent socket? The program may close it (closefrom) and reuse the
 * number: then it is no longer ours to read, write or close. */
int agent_fd_ours(int fd)
{
    struct stat st;
    return fd >= 0 && lab_sys2(SYS_fstat, fd, &st) == 0 && st.st_dev == g_agent_dev && st.st_ino == g_agent_ino;
}

/* len payload bytes into g_agent_buf; whatever does not fit is read and dropped (*big = 1). */
static int agent_read_payload(int fd, uint32_t len, int *big)
{
    *big = 0;
    while (len > 0) {
        uint32_t k = len < sizeof g_agent_buf ? len : (uint32_t)sizeof g_agent_buf;
        int r = recv_exact(fd, g_agent_buf, k, NULL);
        if (r != 0)
            return r;
        len -= k;
        if (len)
            *big = 1;
    }
    return 0;
}

/* LAB_EVICT: take each span still lab memory out of the process, in order; stop at the
 * first error. A madvise blocks until the daemon's uffd reader has read its REMOVE event;
 * g_tab_lock is not held meanwhile. */
/* UFFDIO_MOVE (Linux 6.8; the installed headers may predate it). */
struct lab_uffdio_move {
    uint64_t dst, src, len, mode;
    int64_t move;
};
#define LAB_UFFDIO_MOVE _IOWR(0xAA, _UFFDIO_MOVE, struct lab_uffdio_move)
#define LAB_MOVE_ALLOW_SRC_HOLES ((uint64_t)1 << 1)

/* Scattered pages cost one madvise, hence one REMOVE event and a round trip to the daemon,
 * each. Instead the agent moves them (UFFDIO_MOVE, no event) into its scratch area, then
 * zaps the scratch with one madvise. Pages it cannot move (COW-shared after fork: EBUSY;
 * shared file mappings: EINVAL) are zapped in place. g_scratch is registered with the uffd
 * (a move needs that of its destination) and never announced: it is not lab memory. */
uintptr_t g_scratch;
size_t g_scratch_used; /* pages */
static int g_move_ok = 1;

static void scratch_setup(void)
{
    size_t len = LAB_SCRATCH_PAGES * g_page;
    if (g_scratch) {
        /* not reached in a fork child: child_reconnect unmapped its parent's */
        lab_sys2(SYS_munmap, g_scratch, len);
        g_scratch = 0;
        g_scratch_used = 0;
    }
    long a = lab_sys6(SYS_mmap, 0, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a < 0 && a > -4096)
        return;
    if (uffd_register((uintptr_t)a, len, UFFDIO_REGISTER_MODE_MISSING) != 0) {
        lab_sys2(SYS_munmap, a, len);
        return;
    }
    g_scratch = (uintptr_t)a;
}

/* What each move put in the scratch: pages [src, src+pages) now at dst, the first one's check
 * word at g_agent_checks[check] (checks < 0: none). */
static struct move_run {
    uintptr_t src, dst;
    size_t pages;
    long check;
} g_runs[LAB_SCRATCH_PAGES];
static int g_nruns;
static const uint64_t *g_agent_checks; /* the request's check words, one per page (0: none) */
static uint32_t g_agent_npages;

static int agent_keep(uintptr_t a, unsigned why);
#define LAB_KEPT_CHANGED 3u /* written after the daemon saved it (through a pin released since): put back */

/* The same check word as AddressSpace.PageCheck: FNV-1a over the page's words, never 0. */
static uint64_t page_check(const void *p)
{
    const uint64_t *w = p;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < g_page / sizeof *w; i++)
        h = (h ^ w[i]) * 0x100000001b3ULL;
    return h | 1;
}

/* Before the scratch is zapped: a moved page whose bytes are no longer those the daemon saved
 * was written by the kernel through a pin that was released between the save and the move.
 * Zapping it would lose that write: it goes back where it was, and the daemon keeps it. */
static void scratch_verify(void)
{
    for (int r = 0; r < g_nruns; r++) {
        struct move_run *m = &g_runs[r];
        for (size_t i = 0; i < m->pages; i++) {
            long c = m->check < 0 ? -1 : m->check + (long)i;
            if (c < 0 || (uint32_t)c >= g_agent_npages || g_agent_checks[c] == 0)
                continue;
            uintptr_t d = m->dst + i * g_page, a = m->src + i * g_page;
            unsigned char in = 0;
            if (lab_sys3(SYS_mincore, d, g_page, &in) != 0 || !(in & 1))
                continue; /* a hole (nothing was there to move): never read it, it would fault */
            if (page_check((const void *)d) == g_agent_checks[c])
                continue;
            struct lab_uffdio_move back = {a, d, g_page, 0, 0};
            long rc = lab_sys3(SYS_ioctl, g_uffd, LAB_UFFDIO_MOVE, &back);
            if (rc == 0)
                agent_keep(a, LAB_KEPT_CHANGED);
            else
                dbg("agent: %#lx changed after it was saved and cannot go back: %s", (unsigned long)a, strerror((int)-rc));
        }
    }
    g_nruns = 0;
}

static void scratch_zap(void)
{
    scratch_verify();
    if (g_scratch_used == 0)
        return;
    lab_sys3(SYS_madvise, g_scratch, g_scratch_used * g_page, MADV_DONTNEED);
    g_scratch_used = 0;
}

/* Move what can be moved of [s, e) to the scratch; returns where the first page that
 * could not be moved starts (e: all moved), and in *why the move's errno for it. */
static uintptr_t move_out(uintptr_t s, uintptr_t e, long check, int *why)
{
    uintptr_t s0 = s;
    int again = 0;
    *why = g_move_ok ? 0 : ENOTTY;
    while (s < e && g_scratch && g_move_ok) {
        if (g_scratch_used == LAB_SCRATCH_PAGES)
            scratch_zap();
        size_t room = (LAB_SCRATCH_PAGES - g_scratch_used) * g_page;
        size_t len = e - s < room ? e - s : room;
        struct lab_uffdio_move m = {g_scratch + g_scratch_used * g_page, s, len, LAB_MOVE_ALLOW_SRC_HOLES, 0};
        long rc = lab_sys3(SYS_ioctl, g_uffd, LAB_UFFDIO_MOVE, &m);
        int r = rc < 0 ? -1 : 0, err = rc < 0 ? (int)-rc : 0;
        size_t moved = m.move > 0 ? (size_t)m.move & ~(g_page - 1) : 0;
        if (r == 0)
            moved = len;
        if (moved > 0 && g_nruns < LAB_SCRATCH_PAGES)
            g_runs[g_nruns++] = (struct move_run){s, g_scratch + g_scratch_used * g_page, moved / g_page,
                                                  check < 0 ? -1 : check + (long)((s - s0) / g_page)};
        s += moved;
        g_scratch_used += moved / g_page;
        if (r == 0 || moved > 0)
            continue;
        if (err == EAGAIN && ++again < 100) /* an event of the program's is being read */
            continue;
        if (err == ENOTTY)
            g_move_ok = 0; /* no UFFDIO_MOVE in this kernel: stop trying */
        *why = err;
        dbg("agent: move %#lx+%#lx: %s", (unsigned long)s, (unsigned long)len, strerror(err));
        break;
    }
    return s;
}

/* Pages an eviction left in place, with why (the low bits of the address): the daemon keeps
 * them resident. Reply payload: u32 spans done, u32 count, then the u64s. */
#define LAB_KEPT_PINNED 1u /* the kernel holds the page for I/O (pinned): zapping it would lose the I/O's bytes */
#define LAB_KEPT_LOCKED 2u /* mlock'd: madvise refuses it */
#define LAB_KEPT_MAX 512
static struct {
    uint32_t done, count;
    uint64_t page[LAB_KEPT_MAX];
} g_agent_reply;

static int agent_keep(uintptr_t a, unsigned why)
{
    if (g_agent_reply.count == LAB_KEPT_MAX)
        return -1;
    g_agent_reply.page[g_agent_reply.count++] = (uint64_t)a | why;
    return 0;
}

/* Bit 56 of /proc/self/pagemap: the page is mapped by this process alone. A private page that
 * is mapped here alone yet refuses UFFDIO_MOVE with EBUSY is pinned: the kernel is doing I/O
 * into or out of it (a direct-I/O read of the lab's own FUSE files pins the buffer until the
 * reply). Returns 1, 0, or -1 (cannot tell). */
static int page_alone(int pm, uintptr_t a)
{
    uint64_t ent;
    if (pm < 0 || lab_sys4(SYS_pread64, pm, &ent, sizeof ent, a / g_page * sizeof ent) != (long)sizeof ent)
        return -1;
    return (int)((ent >> 56) & 1);
}

/* Zap [s, e) in place, a page at a time where the range refuses as a whole: pages madvise
 * refuses with EINVAL are mlock'd ones, kept. Returns 0 or an errno. */
static int zap_in_place(uintptr_t s, uintptr_t e)
{
    long rc = lab_sys3(SYS_madvise, s, (size_t)(e - s), MADV_DONTNEED);
    if (rc == 0)
        return 0;
    if (rc != -EINVAL)
        return (int)-rc;
    for (uintptr_t a = s; a < e; a += g_page) {
        rc = lab_sys3(SYS_madvise, a, g_page, MADV_DONTNEED);
        if (rc == 0)
            continue;
        if (rc != -EINVAL)
            return (int)-rc;
        if (agent_keep(a, LAB_KEPT_LOCKED) != 0)
            return E2BIG;
    }
    return 0;
}

/* One span: move what moves, zap in place what is COW-shared (after fork: EBUSY) or will not
 * move (shared file mappings: EINVAL), keep what the kernel holds pinned. Returns 0 or an errno. */
static int evict_span(uintptr_t s, uintptr_t e, long check)
{
    int pm = -1, err = 0;
    uintptr_t s0 = s;
    while (s < e) {
        int why;
        uintptr_t rest = move_out(s, e, check < 0 ? -1 : check + (long)((s - s0) / g_page), &why);
        if (rest >= e)
            break;
        /* EINVAL: a shared file mapping (its page stays in the memfd) or a locked one; ENOTTY
         * or no scratch (0): no moves at all. Zapped in place. Anything else (EBUSY, EAGAIN
         * for ever): a page the kernel may hold, looked at one by one. */
        if (why == EINVAL || why == ENOTTY || why == 0) {
            err = zap_in_place(rest, e);
            break;
        }
        if (pm < 0)
            pm = (int)lab_sys4(SYS_openat, AT_FDCWD, "/proc/self/pagemap", O_RDONLY | O_CLOEXEC, 0);
        int alone = page_alone(pm, rest);
        dbg("agent: %#lx: %s, alone %d", (unsigned long)rest, strerror(why), alone);
        if (alone == 1) {
            if (agent_keep(rest, LAB_KEPT_PINNED) != 0) {
                err = E2BIG;
                break;
            }
            s = rest + g_page;
            continue;
        }
        /* COW-shared pages (mapped by a fork child too) up to the next page mapped here alone,
         * which may well move: zapped here (a pin of a shared page only reads it). */
        uintptr_t z = rest + g_page;
        while (z < e && page_alone(pm, z) == 0)
            z += g_page;
        if ((err = zap_in_place(rest, z)) != 0)
            break;
        s = z;
    }
    if (pm >= 0)
        lab_sys1(SYS_close, pm);
    return err;
}

static int32_t agent_evict_locked(uint32_t n, uint32_t *done);

static int32_t agent_evict(uint32_t n, uint32_t *done)
{
    *done = 0;
    g_agent_reply.count = 0;
    /* A program thread holds g_conn_lock only briefly, unless it is itself stuck on a page
     * this request would release: then say "busy" rather than wait for ever. */
    if (lab_lock_timed(&g_conn_lock, 5) != 0)
        return EAGAIN;
    int32_t status = agent_evict_locked(n, done);
    /* The moved pages leave the process now, with one REMOVE event for the scratch. */
    scratch_zap();
    lab_unlock(&g_conn_lock);
    return status;
}

/* Caller holds g_conn_lock: every path that unmaps or replaces lab memory holds it, so a
 * checked span cannot turn into program memory before it is moved or zapped. */
static int32_t agent_evict_locked(uint32_t n, uint32_t *done)
{
    const struct lab_span *spans = (const struct lab_span *)(g_agent_buf + 1);
    long check = 0;
    for (uint32_t i = 0; i < n; i++, check += (long)(spans[i - 1].len / g_page)) {
        uintptr_t s = (uintptr_t)spans[i].addr;
        uint64_t len = spans[i].len;
        if (len == 0) {
            (*done)++;
            continue;
        }
        if (s > UINTPTR_MAX - g_page || len > UINTPTR_MAX - g_page - s)
            return EINVAL;
        uintptr_t e = s + page_up((uintptr_t)len);
        int err = 0;
        if (tab_covers(s, e))
            err = evict_span(s, e, check);
        else
            dbg("agent: %#lx+%#lx is no longer lab memory: skipped", (unsigned long)s, (unsigned long)len);
        if (err != 0) {
            dbg("agent: evicting %#lx+%#lx: %s", (unsigned long)s, (unsigned long)len, strerror(err));
            return err;
        }
        (*done)++;
    }
    return 0;
}

/* Leave: close the connection only if the number still names it. */
static void agent_quit(int fd)
{
    lab_lock(&g_conn_lock);
    if (g_agent_fd == fd) {
        if (agent_fd_ours(fd))
            lab_sys1(SYS_close, fd);
        g_agent_fd = -1;
    }
    lab_unlock(&g_conn_lock);
}

static void agent(void *arg)
{
    (void)arg;
    int fd = -1;
    struct stat st;
    lab_lock(&g_conn_lock);
    int r = conn_open(&fd); /* SOCK_CLOEXEC */
    if (r == 0) {
        long rc = lab_sys2(SYS_fstat, fd, &st);
        if (rc == 0) {
            g_agent_dev = st.st_dev;
            g_agent_ino = st.st_ino;
            g_agent_fd = fd;
        } else {
            r = (int)rc;
            lab_sys1(SYS_close, fd);
        }
    }
    lab_unlock(&g_conn_lock);
    if (r != 0) {
        dbg("agent: cannot connect: %s; no eviction", strerror(-r));
        return;
    }

    scratch_setup();
    struct lab_agent_hello ah = {(int32_t)lab_sys0(SYS_getpid), 0, g_scratch, g_scratch ? LAB_SCRATCH_PAGES * g_page : 0};
    struct lab_hdr h = {LAB_AGENT_HELLO, sizeof ah, 1, 0}, rh;
    int big;
    r = send_msg(fd, &h, &ah, sizeof ah, -1);
    if (r == 0)
        r = recv_exact(fd, &rh, sizeof rh, NULL);
    if (r == 0 && (rh.type != (LAB_AGENT_HELLO | LAB_REPLY) || rh.seq != h.seq))
        r = -EPROTO;
    if (r == 0)
        r = agent_read_payload(fd, rh.len, &big);
    if (r != 0 || rh.status != 0) {
        dbg("agent: LAB_AGENT_HELLO: %s; no eviction", strerror(r ? -r : rh.status));
        agent_quit(fd);
        return;
    }
    dbg("agent: ready on fd %d, scratch %#lx", fd, (unsigned long)g_scratch);

    for (;;) {
        /* poll with a timeout rather than sit in recv: a sleeping poll or recv pins the
         * socket, and a close by the program (closefrom) does not wake it (measured), so the
         * daemon would see no EOF. Once a second the agent looks whether the fd is still its own. */
        struct pollfd p = {fd, POLLIN | POLLRDHUP, 0};
        long n = lab_sys3(SYS_poll, &p, 1, 1000);
        if (n < 0 && n != -EINTR)
            break;
        if ((n > 0 && (p.revents & POLLNVAL)) || !agent_fd_ours(fd)) {
            dbg("agent: connection closed by the program; agent stops");
            break;
        }
        if (n <= 0)
            continue;
        struct lab_hdr q;
        if (recv_exact(fd, &q, sizeof q, NULL) != 0 || agent_read_payload(fd, q.len, &big) != 0)
            break; /* EOF or error: the watcher deals with a dead daemon */
        struct lab_hdr a = {q.type | LAB_REPLY, 0, q.seq, EINVAL};
        g_agent_reply.done = g_agent_reply.count = 0;
        if (q.type == LAB_EVICT) {
            /* u32 spans, u32 pages, the spans, then each page's check word */
            uint32_t ns = (uint32_t)g_agent_buf[0], np = (uint32_t)(g_agent_buf[0] >> 32);
            if (!big && q.len >= 8 && ns <= LAB_EVICT_MAX_SPANS && np <= LAB_EVICT_MAX_SPANS &&
                q.len == 8 + ns * sizeof(struct lab_span) + np * 8u) {
                g_agent_checks = g_agent_buf + 1 + 2 * ns;
                g_agent_npages = np;
                a.status = agent_evict(ns, &g_agent_reply.done);
            }
            a.len = 8 + g_agent_reply.count * 8;
        }
        if (!agent_fd_ours(fd) || send_msg(fd, &a, &g_agent_reply, a.len, -1) != 0)
            break;
    }
    agent_quit(fd);
    return;
}

/* Optional: without an agent the process just runs without eviction. */
void start_agent(void)
{
    int r = start_thread(agent, NULL);
    if (r != 0)
        dbg("agent thread: %s; no eviction", strerror(r));
}
