/* liblabpreload.so: the LD_PRELOAD shim that turns a program's mmaps of lab memory
 * into userfaultfd-registered ranges whose faults the lab daemon serves.
 *
 * The constructor creates the process's uffd, hands it to the daemon over the
 * control socket (labproto.h) and keeps its own copy: if only the daemon held it,
 * a daemon crash would turn blocked faults into silent zero pages. A watcher
 * thread ends the process with a clear message as soon as the daemon's socket
 * closes. Without LAB_CONTROL every wrapper passes straight through.
 *
 * An agent thread evicts pages for the daemon's pageout: the daemon cannot zap
 * another process's private anonymous memory, so the agent opens a second
 * connection (LAB_AGENT_HELLO), after which the daemon sends it LAB_EVICT
 * requests and it runs madvise(MADV_DONTNEED) on each span that is still lab
 * memory. It never touches lab memory or the heap, and it gives up quietly (the
 * process then runs without eviction) if the daemon refuses it or the
 * connection ends; the watcher alone decides that the daemon is gone.
 *
 * Big heap blocks (>= LAB_HEAP_MIN bytes, default 1 MiB, 0 = off) are lab
 * anonymous memory too, mapped through the same path as a program's anonymous
 * mmap; smaller ones, and everything before the constructor has connected, go
 * to glibc (__libc_malloc and friends).
 *
 * Interposed: mmap, mmap64, munmap, mprotect, msync, mremap, madvise (fork inheritance), fork, the wait
 * family (wait, waitpid, wait3, wait4, waitid) for LAB_REAPED, and the malloc
 * family (malloc, free, calloc, realloc, reallocarray, memalign, posix_memalign,
 * aligned_alloc, valloc, pvalloc, malloc_usable_size). In their own files: ioctl
 * (ownuffd.c: a program's own UFFDIO_REGISTER takes lab memory out of the lab), and
 * read, write, pread, pwrite (procmem.c: /proc/self/mem on lab memory).
 */
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

#define LAB_EXIT_CODE 70 /* EX_SOFTWARE-like: the lab, not the program, failed */

/* ---------- process state ---------- */

int g_on;                      /* connected: the wrappers act */
static int g_debug;
int g_sock = -1;        /* control connection to the daemon */
int g_uffd = -1;               /* our own reference to this process's uffd */
uint32_t g_seq;
uint64_t g_features;    /* uffd features the daemon enabled */
static dev_t g_mount_dev;
static int g_have_mount;
size_t g_page = 4096;
static char g_ctl_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static char g_comm[32];
static char g_vm[16];
static uint64_t g_run_id;
pid_t (*g_real_fork)(void);
pid_t (*g_real_wait4)(pid_t, int *, int, struct rusage *);
int (*g_real_waitid)(idtype_t, id_t, siginfo_t *, int);
static size_t g_heap_min;      /* heap blocks this big are lab memory; 0: none (set before g_on) */
static int g_heap_on;          /* lab heap blocks may exist: free/realloc look for the header */
static size_t (*g_real_usable)(void *);

/* Recursive: fork holds the connection across the real fork, and atfork handlers or
 * nested wrappers on the same thread must not deadlock on it. lab_lock, not a pthread
 * mutex: clone(CLONE_VM) children share these (labsys.h). */
struct lab_lock g_conn_lock;
struct lab_lock g_tab_lock;
static pid_t g_hello_pid;      /* the process that said hello on g_sock (a CLONE_VM child shares it) */

/* ---------- small helpers ---------- */

static void write_all(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        long n = lab_sys3(SYS_write, fd, buf, len);
        if (n < 0) {
            if (n == -EINTR)
                continue;
            return;
        }
        buf += n;
        len -= (size_t)n;
    }
}

void dbg(const char *fmt, ...)
{
    if (!g_debug)
        return;
    /* Helper threads share the creator's TLS: errno is written back only if it changed. */
    int saved = errno;
    char buf[512];
    int n = snprintf(buf, sizeof buf, "lab-shim[%d]: ", (int)lab_sys0(SYS_getpid));
    if (n < 0)
        n = 0;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, sizeof buf - (size_t)n, fmt, ap);
    va_end(ap);
    if (m > 0)
        n += m;
    if (n > (int)sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    write_all(2, buf, (size_t)n);
    if (errno != saved)
        errno = saved;
}

/* One line, then exit_group: other threads (even ones blocked in a uffd fault) die too. */
static void die_line(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die_line(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    if (n > (int)sizeof buf - 2)
        n = (int)sizeof buf - 2;
    buf[n++] = '\n';
    write_all(2, buf, (size_t)n);
    _exit(LAB_EXIT_CODE);
}

void die_connect(int err) __attribute__((noreturn));
void die_connect(int err)
{
    die_line("lab: cannot connect to the lab daemon at %s: %s", g_ctl_path, strerror(err));
}

/* A process the lab cannot serve stops with one line that names the cause and the fix,
 * rather than run outside the lab unseen (its numbers would be missing from the run). */
static void die_unservable(const char *why, const char *fix) __attribute__((noreturn));
static void die_unservable(const char *why, const char *fix)
{
    die_line("lab: %s (pid %d) cannot be served by the lab: %s; stopping it rather than run it outside the lab (%s)",
             g_comm, (int)getpid(), why, fix);
}

/* The daemon accepts only its own user and root (SO_PEERCRED: the effective uid). A program
 * that was exec'd after dropping privileges (setpriv, su, a daemon's worker) is neither. */
void check_uid_served(void)
{
    struct stat st;
    uid_t me = geteuid();
    if (me == 0 || stat(g_ctl_path, &st) != 0 || st.st_uid == me)
        return;
    char why[160];
    snprintf(why, sizeof why, "it runs as uid %u, and the lab daemon serves only uid %u and root", (unsigned)me,
             (unsigned)st.st_uid);
    die_unservable(why, st.st_uid == 0 ? "run it as root" : "run it as root or as the user who mounted the lab");
}

/* userfaultfd() failed: say why, and what would allow it. */
static void die_no_uffd(int err) __attribute__((noreturn));
static void die_no_uffd(int err)
{
    if (err != EPERM && err != EACCES)
        die_line("lab: userfaultfd: %s: %s (pid %d) cannot be served by the lab; stopping it rather than run it "
                 "outside the lab", strerror(err), g_comm, (int)getpid());
    char knob = '?';
    int fd = open("/proc/sys/vm/unprivileged_userfaultfd", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        if (read(fd, &knob, 1) != 1)
            knob = '?';
        close(fd);
    }
    char why[200];
    snprintf(why, sizeof why,
             "userfaultfd: %s: it runs as uid %u without CAP_SYS_PTRACE, and vm.unprivileged_userfaultfd is %c",
             strerror(err), (unsigned)geteuid(), knob);
    die_unservable(why, "run it as root with CAP_SYS_PTRACE, or set sysctl vm.unprivileged_userfaultfd=1");
}

static void die_refused(int status) __attribute__((noreturn));
static void die_refused(int status)
{
    die_line("lab: the lab daemon refused this process: %s", strerror(status));
}

static void die_gone(void) __attribute__((noreturn));
static void die_gone(void)
{
    die_line("lab: the lab daemon went away; stopping %s (pid %d) rather than let it read pages the lab did not serve",
             g_comm, (int)getpid());
}

void init_locks(void)
{
    lab_lock_init(&g_conn_lock);
    lab_lock_init(&g_tab_lock);
}

/* The real calls, as raw syscalls: libc's own symbols would route back into us. */
static void *real_mmap(void *a, size_t l, int p, int f, int fd, off_t o)
{
    return (void *)syscall(SYS_mmap, a, l, p, f, fd, o);
}
static int real_mprotect(void *a, size_t l, int p) { return (int)syscall(SYS_mprotect, a, l, p); }
static int real_msync(void *a, size_t l, int f) { return (int)syscall(SYS_msync, a, l, f); }
static void *real_mremap(void *o, size_t os, size_t ns, int f, void *na)
{
    return (void *)syscall(SYS_mremap, o, os, ns, f, na);
}

/* ---------- the table of this process's lab ranges ---------- */

struct lab_ent {
    uintptr_t start, end;
    uint64_t ino, offset; /* file kinds: file offset of start */
    int32_t kind, flags;
};

#define LAB_TAB_MAX 8192
static struct lab_ent g_tab[LAB_TAB_MAX];
static int g_ntab; /* read without the lock on the fast path: 0 means "no lab memory" */

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

static int tab_add(const struct lab_ent *x)
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

static int tab_find(uintptr_t a, struct lab_ent *out)
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
static int tab_any_file(uintptr_t s, uintptr_t e)
{
    int hit = 0;
    lab_lock(&g_tab_lock);
    for (int i = 0; i < g_ntab && !hit; i++)
        hit = g_tab[i].start < e && s < g_tab[i].end && g_tab[i].kind != LAB_MAP_ANON;
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

/* ---------- the control connection ---------- */

/* The connection I/O runs on helper threads too: raw system calls only (labsys.h). */
int conn_open(int *out)
{
    int s = (int)lab_sys3(SYS_socket, AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return s;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, g_ctl_path, strlen(g_ctl_path));
    long r;
    while ((r = lab_sys3(SYS_connect, s, &sa, sizeof sa)) < 0) {
        if (r == -EINTR)
            continue;
        lab_sys1(SYS_close, s);
        return (int)r;
    }
    *out = s;
    return 0;
}

/* Header and payload in as many sendmsg calls as it takes; the fd rides on the first. */
int send_msg(int s, const struct lab_hdr *h, const void *pl, size_t len, int fd)
{
    const char *part[2] = {(const char *)h, (const char *)pl};
    size_t plen[2] = {sizeof *h, len};
    size_t total = sizeof *h + len, done = 0;
    int fd_sent = fd < 0;
    while (done < total) {
        struct iovec v[2];
        int nv = 0;
        size_t skip = done;
        for (int i = 0; i < 2; i++) {
            if (skip >= plen[i]) {
                skip -= plen[i];
                continue;
            }
            v[nv].iov_base = (void *)(part[i] + skip);
            v[nv].iov_len = plen[i] - skip;
            skip = 0;
            nv++;
        }
        struct msghdr mh;
        memset(&mh, 0, sizeof mh);
        mh.msg_iov = v;
        mh.msg_iovlen = (size_t)nv;
        union {
            char buf[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } cm;
        if (!fd_sent) {
            memset(&cm, 0, sizeof cm);
            mh.msg_control = cm.buf;
            mh.msg_controllen = sizeof cm.buf;
            struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(c), &fd, sizeof(int));
        }
        long n = lab_sys3(SYS_sendmsg, s, &mh, MSG_NOSIGNAL);
        if (n < 0) {
            if (n == -EINTR)
                continue;
            return (int)n;
        }
        fd_sent = 1;
        done += (size_t)n;
    }
    return 0;
}

/* Fill every iovec (one recvmsg when the data is there); any SCM_RIGHTS fd that comes
 * along goes to *fd (extras are closed). */
static int recv_iov(int s, struct iovec *v, int nv, int *fd)
{
    while (nv > 0) {
        if (v->iov_len == 0) {
            v++;
            nv--;
            continue;
        }
        union {
            char buf[CMSG_SPACE(sizeof(int) * 4)];
            struct cmsghdr align;
        } cm;
        struct msghdr mh;
        memset(&mh, 0, sizeof mh);
        mh.msg_iov = v;
        mh.msg_iovlen = (size_t)nv;
        mh.msg_control = cm.buf;
        mh.msg_controllen = sizeof cm.buf;
        long n = lab_sys3(SYS_recvmsg, s, &mh, MSG_CMSG_CLOEXEC);
        if (n < 0) {
            if (n == -EINTR)
                continue;
            return (int)n;
        }
        if (n == 0)
            return -ECONNRESET;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                continue;
            size_t nfd = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < nfd; i++) {
                int f;
                memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
                if (fd && *fd < 0)
                    *fd = f;
                else
                    lab_sys1(SYS_close, f);
            }
        }
        for (size_t got = (size_t)n; got > 0 && nv > 0;) {
            size_t k = got < v->iov_len ? got : v->iov_len;
            v->iov_base = (char *)v->iov_base + k;
            v->iov_len -= k;
            got -= k;
            if (v->iov_len == 0) {
                v++;
                nv--;
            }
        }
    }
    return 0;
}

int recv_exact(int s, void *buf, size_t len, int *fd)
{
    struct iovec v = {buf, len};
    return recv_iov(s, &v, 1, fd);
}

/* The next message's header, left in the socket: a reader killed after this has taken nothing. */
static int peek_hdr(int s, struct lab_hdr *h)
{
    for (int tries = 0;; tries++) {
        long n = lab_sys6(SYS_recvfrom, s, h, sizeof *h, MSG_PEEK, 0, 0);
        if (n == -EINTR)
            continue;
        if (n < 0)
            return (int)n;
        if (n == 0)
            return -ECONNRESET;
        if (n == (long)sizeof *h)
            return 0;
        /* the daemon sends a message with one sendmsg: a part header is only a moment's state */
        struct timespec d = {0, 100000};
        lab_sys2(SYS_nanosleep, &d, NULL);
        if (tries > 100000)
            return -EPROTO;
    }
}

/* Read and drop one whole message (header h already peeked) that nobody waits for. */
static int skip_msg(int s, const struct lab_hdr *h)
{
    char sink[256];
    int fd = -1, r = 0;
    for (uint64_t left = sizeof *h + (uint64_t)h->len; r == 0 && left > 0;) {
        size_t k = left < sizeof sink ? (size_t)left : sizeof sink;
        r = recv_exact(s, sink, k, &fd);
        left -= k;
    }
    if (fd >= 0)
        lab_sys1(SYS_close, fd);
    return r;
}

/* One request, one reply. Returns 0 (reply status in *status) or -errno if the
 * connection failed. The reply payload is copied up to repcap bytes (rest zeroed).
 *
 * A process that shares our memory (a clone(CLONE_VM) child: vfork, posix_spawn,
 * stress-ng) uses this connection too, and may be killed between its request and its
 * reply; lab_lock then passes the lock on. Its reply is still to come, before ours (the
 * daemon answers a connection's requests in order): replies whose seq is not ours are
 * read and dropped. A reply is read with one recvmsg after a peek at its header, so a
 * reader killed mid-way leaves whole messages behind. */
static int lab_call(uint32_t type, const void *pl, uint32_t len, int send_fd, void *rep, uint32_t repcap,
                    int *rfd, int32_t *status)
{
    int fd = -1, r;
    struct lab_hdr h = {type, len, 0, 0}, rh;
    if (rep)
        memset(rep, 0, repcap);
    lab_lock(&g_conn_lock);
    h.seq = ++g_seq;
    r = send_msg(g_sock, &h, pl, len, send_fd);
    while (r == 0) {
        r = peek_hdr(g_sock, &rh);
        if (r == 0 && rh.len > LAB_MAX_PAYLOAD)
            r = -EPROTO;
        if (r != 0 || rh.seq == h.seq)
            break;
        dbg("dropped a reply (type %#x, seq %u) its requester did not wait for", rh.type, rh.seq);
        r = skip_msg(g_sock, &rh);
    }
    if (r == 0 && rh.type != (type | LAB_REPLY))
        r = -EPROTO;
    if (r == 0) {
        uint32_t take = rh.len < repcap ? rh.len : repcap;
        char sink[256];
        uint32_t more = rh.len - take < sizeof sink ? rh.len - take : (uint32_t)sizeof sink;
        struct iovec v[3] = {{&rh, sizeof rh}, {rep, take}, {sink, more}};
        r = recv_iov(g_sock, v, 3, &fd);
        for (uint32_t left = rh.len - take - more; r == 0 && left > 0;) {
            uint32_t k = left < sizeof sink ? left : (uint32_t)sizeof sink;
            r = recv_exact(g_sock, sink, k, &fd);
            left -= k;
        }
    }
    lab_unlock(&g_conn_lock);
    if (r != 0 || !rfd) {
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    if (rfd)
        *rfd = fd;
    if (r == 0)
        *status = rh.status;
    return r;
}

/* A request after start-up: a broken connection means the daemon is gone. */
int32_t lab_req(uint32_t type, const void *pl, uint32_t len, void *rep, uint32_t repcap, int *rfd)
{
    int saved = errno;
    int32_t status = 0;
    if (lab_call(type, pl, len, -1, rep, repcap, rfd, &status) != 0)
        die_gone();
    errno = saved;
    return status;
}

/* ---------- for lock.c (shim.h) ---------- */

int lab_active(void) { return g_on; }
void lab_conn_lock(void) { lab_lock(&g_conn_lock); }
void lab_conn_unlock(void) { lab_unlock(&g_conn_lock); }

void lab_wire_ranges(uintptr_t s, uintptr_t e, int wire)
{
    /* One request per lab range in [s, e): the table cannot change meanwhile (g_conn_lock). */
    for (int i = 0;; i++) {
        struct lab_range rg = {0, 0, 0, wire ? LAB_WIRE_ON : 0};
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

/* The helper threads (watcher, agent) are raw threads (labsys.h): glibc does not know
 * them, so its set*id broadcast leaves them out and a single-threaded program stays
 * single-threaded for glibc. They keep the credentials they started with; they need no
 * others. Everything they call must leave TLS (errno) alone. */
static void watcher(void *arg)
{
    int fd = (int)(intptr_t)arg;
    for (;;) {
        /* Only hang-up: replies (POLLIN) belong to the request path. */
        struct pollfd p = {fd, POLLRDHUP, 0};
        long r = lab_sys3(SYS_poll, &p, 1, -1);
        if (r < 0) {
            if (r == -EINTR)
                continue;
            return;
        }
        if (p.revents & POLLNVAL) {
            /* the program closed our socket (e.g. closefrom before exec): nothing left to watch */
            dbg("control socket closed by the program; watcher stops");
            return;
        }
        if (p.revents & (POLLRDHUP | POLLHUP | POLLERR))
            die_gone();
    }
}

/* A helper thread with a small stack and every signal blocked (signals meant for the
 * program must not land on it). */
int start_thread(void (*fn)(void *), void *arg) { return lab_thread_start(fn, arg); }

int start_watcher(void) { return start_thread(watcher, (void *)(intptr_t)g_sock); }


static void fill_hello(struct lab_hello *h, uint32_t flags)
{
    memset(h, 0, sizeof *h);
    h->version = LAB_PROTO_VERSION;
    h->flags = flags;
    h->pid = (int32_t)getpid();
    /* A fork child names the process whose connection (and uffd) it forked from: that is
     * not its parent when a CLONE_VM child of that process forked. */
    h->ppid = (flags & LAB_HELLO_FORK_CHILD) && g_hello_pid > 0 ? (int32_t)g_hello_pid : (int32_t)getppid();
    memcpy(h->vm, g_vm, sizeof h->vm);
    memcpy(h->comm, g_comm, sizeof h->comm);
    h->run_id = g_run_id;
}

/* ---------- start-up ---------- */

/* The kernel hands the daemon a child uffd on fork only if the parent has at least one
 * registered range. A process that has mapped no lab memory yet (a shell, say) would fork
 * a child the daemon cannot serve, so every process keeps one registered, inaccessible
 * page. It is never touched (no faults) and never announced with LAB_MAP. */
static int register_anchor(void)
{
    void *a = real_mmap(NULL, g_page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (a == MAP_FAILED)
        return errno;
    int r = uffd_register((uintptr_t)a, g_page, UFFDIO_REGISTER_MODE_MISSING);
    if (r < 0) {
        real_munmap(a, g_page);
        return -r;
    }
    dbg("fork anchor page at %p", a);
    return 0;
}

/* Connect to the daemon and introduce this process: HELLO hands over our uffd, CHILD_HELLO
 * receives the child's own. Any failure ends the process with one line (never run unserved). */
void say_hello(uint32_t type, uint32_t flags, int send_fd, struct lab_hello_reply *rep, int *recv_fd)
{
    int r = conn_open(&g_sock);
    if (r < 0)
        die_connect(-r);
    struct lab_hello h;
    int32_t status;
    fill_hello(&h, flags);
    r = lab_call(type, &h, sizeof h, send_fd, rep, sizeof *rep, recv_fd, &status);
    if (r < 0)
        die_connect(-r);
    if (status != 0)
        die_refused(status);
    g_hello_pid = getpid();
}

static void copy_str(char *dst, size_t cap, const char *src)
{
    size_t n = src ? strlen(src) : 0;
    if (n >= cap)
        n = cap - 1;
    if (n)
        memcpy(dst, src, n);
    dst[n] = 0;
}

static void pick_comm(void)
{
    const char *name = program_invocation_short_name;
    if (name && *name) {
        copy_str(g_comm, sizeof g_comm, name);
        return;
    }
    char exe[4096];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0) {
        copy_str(g_comm, sizeof g_comm, "?");
        return;
    }
    exe[n] = 0;
    const char *slash = strrchr(exe, '/');
    copy_str(g_comm, sizeof g_comm, slash ? slash + 1 : exe);
}

static void heap_init(void);

__attribute__((constructor(101))) static void lab_init(void)
{
    const char *ctl = getenv("LAB_CONTROL");
    if (!ctl || !*ctl)
        return; /* not under `lab run`: stay inert */
    const char *d = getenv("LAB_DEBUG");
    g_debug = d && strcmp(d, "1") == 0;
    copy_str(g_ctl_path, sizeof g_ctl_path, ctl);
    pick_comm();
    copy_str(g_vm, sizeof g_vm, getenv("LAB_VM"));
    const char *rid = getenv("LAB_RUN_ID");
    g_run_id = rid ? strtoull(rid, NULL, 10) : 0;
    long ps = sysconf(_SC_PAGESIZE);
    if (ps > 0)
        g_page = (size_t)ps;
    init_locks();
    g_real_fork = (pid_t(*)(void))dlsym(RTLD_NEXT, "fork");
    g_real_wait4 = (pid_t(*)(pid_t, int *, int, struct rusage *))dlsym(RTLD_NEXT, "wait4");
    g_real_waitid = (int (*)(idtype_t, id_t, siginfo_t *, int))dlsym(RTLD_NEXT, "waitid");
    heap_init();

    if (strlen(ctl) >= sizeof g_ctl_path)
        die_connect(ENAMETOOLONG);

    const char *mnt = getenv("LAB_MOUNT");
    struct stat st;
    if (mnt && *mnt && stat(mnt, &st) == 0) {
        g_mount_dev = st.st_dev;
        g_have_mount = 1;
    } else {
        dbg("LAB_MOUNT %s not usable (%s): lab files will not be recognised", mnt ? mnt : "(unset)",
            strerror(errno));
    }

    check_uid_served();
    /* Not UFFD_USER_MODE_ONLY: the kernel must fault lab pages for read(2)/write(2) too. */
    g_uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (g_uffd < 0)
        die_no_uffd(errno);
    struct lab_hello_reply rep = {0};
    /* The daemon calls UFFDIO_API: EVENT_FORK needs CAP_SYS_PTRACE of the caller. */
    say_hello(LAB_HELLO, 0, g_uffd, &rep, NULL);
    int r;
    g_features = rep.features;
    r = register_anchor();
    if (r == 0)
        r = start_watcher();
    if (r != 0)
        die_connect(r);
    g_on = 1;
    dbg("connected to %s: uffd %d, features %#llx, comm %s, vm '%s', run %llu, heap blocks >= %zu%s", g_ctl_path,
        g_uffd, (unsigned long long)g_features, g_comm, g_vm, (unsigned long long)g_run_id, g_heap_min,
        g_heap_min ? "" : " (off)");
    start_agent();
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
static uint64_t private_modes(void)
{
    uint64_t m = UFFDIO_REGISTER_MODE_MISSING;
    if (g_features & UFFD_FEATURE_PAGEFAULT_FLAG_WP)
        m |= UFFDIO_REGISTER_MODE_WP;
    return m;
}

/* A MAP_FIXED mapping replaced whatever lab memory was there: tell the daemon first,
 * so its unmap does not drop the new range announced right after. */
static void forget_replaced(uintptr_t s, size_t len)
{
    uintptr_t e = s + page_up(len);
    if (tab_cut(s, e)) {
        struct lab_range rg = {s, e - s, 0, 0};
        int32_t st = lab_req(LAB_UNMAP, &rg, sizeof rg, NULL, 0, NULL);
        if (st)
            dbg("LAB_UNMAP %#lx+%#lx (replaced): %s", (unsigned long)s, (unsigned long)(e - s), strerror(st));
    }
}

/* Announce a registered range; on refusal undo it. Returns the address or MAP_FAILED. */
static void *announce(void *res, size_t len, int prot, int flags, int kind, uint64_t ino, uint64_t off)
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

/* ---------- mmap ---------- */

static void *map_anon(void *addr, size_t len, int prot, int flags)
{
    lab_lock(&g_conn_lock);
    void *res = real_mmap(addr, len, prot, flags, -1, 0);
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
    /* Populating or locking at mmap time would fault zero pages in before the range is
     * registered, bypassing the daemon: those requests are dropped. */
    int keep = flags & ~(MAP_POPULATE | MAP_LOCKED);
    if (keep != flags)
        dbg("MAP_POPULATE/MAP_LOCKED ignored on a lab file");

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
        res = register_file_range(res, len, prot, flags, UFFDIO_REGISTER_MODE_MISSING, LAB_MAP_FILE_SHARED, st, off);
    }
out:
    e = errno;
    lab_unlock(&g_conn_lock);
    errno = e;
    return res;
}

static void *lab_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    if (!g_on)
        return real_mmap(addr, len, prot, flags, fd, off);

    if (flags & MAP_ANONYMOUS) {
        if ((flags & LAB_MAP_TYPE) == MAP_PRIVATE && prot != PROT_NONE &&
            !(flags & (MAP_STACK | MAP_GROWSDOWN | MAP_HUGETLB | MAP_POPULATE | MAP_LOCKED)) &&
            !__atomic_load_n(&lab_lock_future, __ATOMIC_RELAXED))
            return map_anon(addr, len, prot, flags);
    } else if (fd >= 0 && g_have_mount) {
        struct stat st;
        if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_dev == g_mount_dev)
            return map_lab_file(addr, len, prot, flags, fd, off, &st);
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
        return res;
    }
    return real_mmap(addr, len, prot, flags, fd, off);
}

void *mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off)
{
    return lab_mmap(addr, len, prot, flags, fd, off);
}

void *mmap64(void *addr, size_t len, int prot, int flags, int fd, off64_t off)
{
    return lab_mmap(addr, len, prot, flags, fd, (off_t)off);
}

/* ---------- munmap, msync, mprotect, mremap ---------- */

static int lab_munmap(void *addr, size_t len)
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
        struct lab_range rg = {s, e - s, 0, 0};
        int32_t st = lab_req(LAB_UNMAP, &rg, sizeof rg, NULL, 0, NULL);
        if (st)
            dbg("LAB_UNMAP %#lx+%#lx: %s", (unsigned long)s, (unsigned long)(e - s), strerror(st));
    }
    lab_unlock(&g_conn_lock);
    errno = err;
    return r;
}

int munmap(void *addr, size_t len) { return lab_munmap(addr, len); }

int msync(void *addr, size_t len, int flags)
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

int mprotect(void *addr, size_t len, int prot)
{
    uintptr_t s = (uintptr_t)addr, e = s + page_up(len);
    if (!g_on || !tab_any(s, e))
        return real_mprotect(addr, len, prot);
    lab_lock(&g_conn_lock);
    int r = real_mprotect(addr, len, prot);
    int err = errno;
    if (r == 0) {
        struct lab_range rg = {s, e - s, prot, 0};
        int32_t st = lab_req(LAB_PROTECT, &rg, sizeof rg, NULL, 0, NULL);
        if (st)
            dbg("LAB_PROTECT %#lx+%#lx: %s", (unsigned long)s, (unsigned long)(e - s), strerror(st));
    }
    lab_unlock(&g_conn_lock);
    errno = err;
    return r;
}

/* What a fork child inherits is the daemon's to model: wipe-on-fork and don't-fork are told to
 * it (under the connection lock, which fork takes). Other advice reaches it as uffd events, or
 * not at all. */
int madvise(void *addr, size_t len, int advice)
{
    uintptr_t s = (uintptr_t)addr, e = s + page_up(len);
    int wipe = advice == MADV_WIPEONFORK || advice == MADV_KEEPONFORK;
    if (!g_on || (!wipe && advice != MADV_DONTFORK && advice != MADV_DOFORK) || !tab_any(s, e))
        return (int)syscall(SYS_madvise, addr, len, advice);
    /* The kernel sees a private lab file mapping as anonymous memory; Linux refuses
     * wipe-on-fork on a file mapping, and so do we. */
    if (wipe && tab_any_file(s, e)) {
        errno = EINVAL;
        return -1;
    }
    lab_lock(&g_conn_lock);
    int r = (int)syscall(SYS_madvise, addr, len, advice);
    int err = errno;
    if (r == 0) {
        struct lab_range rg = {s, e - s, 0, advice};
        int32_t st = lab_req(LAB_ADVISE, &rg, sizeof rg, NULL, 0, NULL);
        if (st)
            dbg("LAB_ADVISE %#lx+%#lx %d: %s", (unsigned long)s, (unsigned long)(e - s), advice, strerror(st));
    }
    lab_unlock(&g_conn_lock);
    errno = err;
    return r;
}

void *mremap(void *old, size_t old_size, size_t new_size, int flags, ...)
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

/* ---------- the malloc family: big blocks are lab anonymous memory ---------- */

/* glibc's own allocator, exported for exactly this kind of wrapper. */
extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

#define LAB_HEAP_MIN_DEFAULT ((size_t)1 << 20)
/* The top bits are set, so magic ^ p (p < 2^56) can never equal a glibc chunk's size field,
 * which is what sits at p - 8 of a glibc pointer. */
#define LAB_HEAP_MAGIC 0xa7b3c1d5e9f2468bULL

/* Just before the pointer a lab block returns; check (magic ^ pointer) is at p - 8. A glibc
 * pointer always has its readable chunk header there, so free can test any pointer. */
struct lab_blk {
    uint64_t base;   /* the mapping (the pointer is further in when over-aligned) */
    uint64_t maplen; /* page multiple */
    uint64_t size;   /* what the program asked for (realloc copies this much) */
    uint64_t check;
};

static void heap_init(void)
{
    g_real_usable = (size_t(*)(void *))dlsym(RTLD_NEXT, "malloc_usable_size");
    size_t min = LAB_HEAP_MIN_DEFAULT;
    const char *v = getenv("LAB_HEAP_MIN");
    if (v && *v) {
        char *end;
        unsigned long long n = strtoull(v, &end, 0);
        unsigned long long mul = 1;
        switch (*end) {
        case 'k': case 'K': mul = 1ULL << 10; end++; break;
        case 'm': case 'M': mul = 1ULL << 20; end++; break;
        case 'g': case 'G': mul = 1ULL << 30; end++; break;
        }
        if (end == v || *end || (n && mul > ~0ULL / n))
            dbg("LAB_HEAP_MIN '%s' not understood: using %zu", v, min);
        else
            min = (size_t)(n * mul);
    }
    g_heap_min = min;
    g_heap_on = min != 0;
}

static int heap_route(size_t n) { return g_on && g_heap_min && n >= g_heap_min; }

static struct lab_blk *blk_of(void *p)
{
    if (!p || !g_heap_on)
        return NULL;
    struct lab_blk *b = (struct lab_blk *)p - 1;
    uint64_t c;
    memcpy(&c, &b->check, sizeof c);
    return c == (LAB_HEAP_MAGIC ^ (uint64_t)(uintptr_t)p) ? b : NULL;
}

/* A block of size bytes at alignment align (a power of two, >= 16), mapped the way a
 * program's anonymous mmap is: registered with the uffd and announced with LAB_MAP. */
static void *heap_alloc(size_t size, size_t align)
{
    size_t hdr = sizeof(struct lab_blk);
    size_t extra = hdr + (align > 16 ? align : 0);
    if (size > SIZE_MAX - extra - g_page) {
        errno = ENOMEM;
        return NULL;
    }
    size_t maplen = page_up(size + extra);
    void *m = lab_mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        errno = ENOMEM;
        return NULL;
    }
    /* Fresh anonymous memory is zero: calloc needs nothing more, and only the header page is touched. */
    uintptr_t p = ((uintptr_t)m + hdr + align - 1) & ~(uintptr_t)(align - 1);
    struct lab_blk *b = (struct lab_blk *)p - 1;
    b->base = (uintptr_t)m;
    b->maplen = maplen;
    b->size = size;
    b->check = LAB_HEAP_MAGIC ^ (uint64_t)p;
    return (void *)p;
}

static void heap_free(struct lab_blk *b)
{
    int saved = errno;
    void *base = (void *)(uintptr_t)b->base;
    size_t len = (size_t)b->maplen;
    b->check = 0; /* a stale pointer must not pass for a block */
    lab_munmap(base, len); /* the daemon hears LAB_UNMAP */
    errno = saved;
}

static size_t libc_usable(void *p)
{
    if (!g_real_usable)
        g_real_usable = (size_t(*)(void *))dlsym(RTLD_NEXT, "malloc_usable_size");
    return g_real_usable ? g_real_usable(p) : 0;
}

static void *lab_malloc(size_t n) { return heap_route(n) ? heap_alloc(n, 16) : __libc_malloc(n); }

static void lab_free(void *p)
{
    struct lab_blk *b = blk_of(p);
    if (b)
        heap_free(b);
    else
        __libc_free(p);
}

static void *lab_realloc(void *p, size_t n)
{
    if (!p)
        return lab_malloc(n);
    if (n == 0) { /* glibc frees and returns NULL */
        lab_free(p);
        return NULL;
    }
    struct lab_blk *b = blk_of(p);
    if (b) {
        if (n <= b->base + b->maplen - (uintptr_t)p) {
            b->size = n;
            return p;
        }
        void *q = lab_malloc(n);
        if (!q) {
            errno = ENOMEM;
            return NULL;
        }
        memcpy(q, p, b->size < n ? (size_t)b->size : n);
        heap_free(b);
        return q;
    }
    if (heap_route(n)) {
        void *q = heap_alloc(n, 16);
        if (!q)
            return NULL;
        size_t old = libc_usable(p);
        memcpy(q, p, old < n ? old : n);
        __libc_free(p);
        return q;
    }
    return __libc_realloc(p, n);
}

/* memalign's rules: alignment below 16 is malloc's, others round up to a power of two. */
static void *lab_memalign(size_t align, size_t n)
{
    if (!heap_route(n))
        return __libc_memalign(align, n);
    if (align > SIZE_MAX / 2 + 1) {
        errno = EINVAL;
        return NULL;
    }
    size_t a = 16;
    while (a < align)
        a <<= 1;
    return heap_alloc(n, a);
}

void *malloc(size_t n) { return lab_malloc(n); }

void free(void *p) { lab_free(p); }

void *calloc(size_t n, size_t m)
{
    size_t t;
    if (__builtin_mul_overflow(n, m, &t)) {
        errno = ENOMEM;
        return NULL;
    }
    if (heap_route(t))
        return heap_alloc(t, 16); /* already zero: a memset would fault every page in */
    return __libc_calloc(n, m);
}

void *realloc(void *p, size_t n) { return lab_realloc(p, n); }

void *reallocarray(void *p, size_t n, size_t m)
{
    size_t t;
    if (__builtin_mul_overflow(n, m, &t)) {
        errno = ENOMEM;
        return NULL;
    }
    return lab_realloc(p, t);
}

void *memalign(size_t align, size_t n) { return lab_memalign(align, n); }

void *aligned_alloc(size_t align, size_t n)
{
    if (align == 0 || (align & (align - 1))) { /* glibc 2.38's rule */
        errno = EINVAL;
        return NULL;
    }
    return lab_memalign(align, n);
}

int posix_memalign(void **out, size_t align, size_t n)
{
    if (align == 0 || (align & (align - 1)) || align % sizeof(void *))
        return EINVAL;
    int saved = errno;
    void *p = lab_memalign(align, n);
    int e = errno;
    errno = saved;
    if (!p)
        return e == EINVAL ? EINVAL : ENOMEM;
    *out = p;
    return 0;
}

void *valloc(size_t n) { return lab_memalign(g_page, n); }

void *pvalloc(size_t n)
{
    if (n > SIZE_MAX - g_page) {
        errno = ENOMEM;
        return NULL;
    }
    return lab_memalign(g_page, page_up(n));
}

size_t malloc_usable_size(void *p)
{
    if (!p)
        return 0;
    struct lab_blk *b = blk_of(p);
    return b ? (size_t)b->size : libc_usable(p);
}
