/* The shim's internal header: what its files share (see shim.c for the whole design).
 *
 *   shim.c     process state, the one-line deaths, start-up (the constructor, HELLO)
 *   conn.c     the control connection: framed messages, one request and its reply, the watcher
 *   ranges.c   the table of this process's lab ranges; registering and announcing a range
 *   mmap.c     mmap, mmap64, munmap, msync, mprotect, madvise, mremap
 *   agent.c    the agent thread that evicts pages on the daemon's behalf
 *   fork.c     fork (the child's reconnection) and the wait family (LAB_REAPED)
 *   heap.c     the malloc family: big blocks are lab anonymous memory
 *   lock.c     mlock, mlock2, munlock, mlockall, munlockall
 *   ownuffd.c  ioctl: a program's own userfaultfd takes lab memory out of the lab
 *   procmem.c  read, write, pread, pwrite on /proc/self/mem
 *   labsys.c   raw system calls, raw helper threads, lab_lock (labsys.h)
 *
 * The library is built with -fvisibility=hidden: only the functions marked LAB_EXPORT (the
 * interposed libc calls) are in its dynamic symbol table, never these internal names.
 */
#ifndef LAB_SHIM_H
#define LAB_SHIM_H
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <linux/userfaultfd.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include "labproto.h"
#include "labsys.h"

/* A libc function the shim interposes: the only names the library exports. */
#define LAB_EXPORT __attribute__((visibility("default")))

/* The machine runs 6.18 but the installed headers are 6.1: define what may be missing. */
#ifndef UFFDIO_REGISTER_MODE_MISSING
#define UFFDIO_REGISTER_MODE_MISSING ((uint64_t)1 << 0)
#endif
#ifndef UFFDIO_REGISTER_MODE_WP
#define UFFDIO_REGISTER_MODE_WP ((uint64_t)1 << 1)
#endif
#ifndef UFFD_FEATURE_PAGEFAULT_FLAG_WP
#define UFFD_FEATURE_PAGEFAULT_FLAG_WP (1u << 0)
#endif
#ifndef UFFD_FEATURE_MINOR_SHMEM
#define UFFD_FEATURE_MINOR_SHMEM (1u << 10)
#endif
#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1u << 12)
#endif
#ifndef UFFDIO_REGISTER_MODE_MINOR
#define UFFDIO_REGISTER_MODE_MINOR ((uint64_t)1 << 2)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1u << 13)
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1u << 14)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1u << 15)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1u << 16)
#endif
#ifndef _UFFDIO_MOVE
#define _UFFDIO_MOVE 0x05
#endif
#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP 4
#endif
#define LAB_UFFDIO_REGISTER 0xc020aa00UL /* _IOWR(0xAA, 0, struct uffdio_register) */
#define LAB_MAP_TYPE 0x0f                /* MAP_TYPE: SHARED / PRIVATE / SHARED_VALIDATE */

#pragma GCC visibility push(hidden)

/* ---- shim.c: process state, deaths, start-up ---- */

extern int g_on;                    /* connected: the wrappers act */
extern int g_uffd;                  /* this process's lab uffd */
extern size_t g_page;
extern int g_sock;                  /* control connection to the daemon */
extern uint32_t g_seq;              /* last request's seq on g_sock */
extern uint64_t g_features;         /* uffd features the daemon enabled */
extern dev_t g_mount_dev;           /* st_dev of the lab mount, if g_have_mount */
extern int g_have_mount;
extern char g_ctl_path[sizeof(((struct sockaddr_un *)0)->sun_path)]; /* LAB_CONTROL */
extern pid_t (*g_real_fork)(void);
extern pid_t (*g_real_wait4)(pid_t, int *, int, struct rusage *);
extern int (*g_real_waitid)(idtype_t, id_t, siginfo_t *, int);
/* Held across every change of lab memory and its request to the daemon (recursive). */
extern struct lab_lock g_conn_lock;
/* Guards the range table (ranges.c); taken inside g_conn_lock, never around it. */
extern struct lab_lock g_tab_lock;

void dbg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* One line on stderr, then the process ends (exit code 70): the lab, not the program, failed. */
void die_connect(int err) __attribute__((noreturn));
void die_gone(void) __attribute__((noreturn));
/* Ends the process with one line if its effective uid is one the daemon will not serve. */
void check_uid_served(void);
void init_locks(void);
/* Connect and introduce this process (HELLO or CHILD_HELLO); any failure ends it with one line. */
void say_hello(uint32_t type, uint32_t flags, int send_fd, struct lab_hello_reply *rep, int *recv_fd);

/* ---- conn.c: the control connection ---- */

int conn_open(int *out);
int send_msg(int s, const struct lab_hdr *h, const void *pl, size_t len, int fd);
int recv_exact(int s, void *buf, size_t len, int *fd);
/* One request, one reply: 0 (reply status in *status) or -errno if the connection failed. */
int lab_call(uint32_t type, const void *pl, uint32_t len, int send_fd, void *rep, uint32_t repcap, int *rfd,
             int32_t *status);
/* One request to the daemon (ends the program if the daemon is gone); returns its status. */
int32_t lab_req(uint32_t type, const void *pl, uint32_t len, void *rep, uint32_t repcap, int *rfd);
/* A raw helper thread (labsys.h). */
int start_thread(void (*fn)(void *), void *arg);
int start_watcher(void);

/* ---- ranges.c: the table of lab ranges, registration ---- */

struct lab_ent {
    uintptr_t start, end;
    uint64_t ino, offset; /* file kinds: file offset of start */
    int32_t kind, flags;
};
extern int g_ntab;                  /* read without the lock on the fast path: 0 means "no lab memory" */
/* The table of lab ranges: any overlap; forget a range; the lowest overlapping piece. */
int tab_any(uintptr_t s, uintptr_t e);
int tab_cut(uintptr_t s, uintptr_t e);
int tab_next(uintptr_t s, uintptr_t e, uintptr_t *os, uintptr_t *oe, int32_t *kind);
int tab_add(const struct lab_ent *x);
int tab_find(uintptr_t a, struct lab_ent *out);
int tab_any_file(uintptr_t s, uintptr_t e);
int tab_any_kind(uintptr_t s, uintptr_t e, int32_t kind);
int tab_covers(uintptr_t s, uintptr_t e);
int uffd_register(uintptr_t start, uintptr_t len, uint64_t mode);
uint64_t private_modes(void);
uint64_t shared_modes(void);
void zap_shared_ranges(void);
int32_t range_req(uint32_t type, const char *name, uintptr_t s, uintptr_t e, int32_t prot, int32_t flags);
void forget_replaced(uintptr_t s, size_t len);
void *announce(void *res, size_t len, int prot, int flags, int kind, uint64_t ino, uint64_t off);

/* The program runs under the lab (the shim is connected). */
int lab_active(void);
/* The control connection's lock: held across a real call and the requests that describe it,
 * so the daemon sees them in the order they happened. Recursive. */
void lab_conn_lock(void);
void lab_conn_unlock(void);
/* Tell the daemon that the lab memory in [s, e) is now wired (mlock'd) or no longer is: flags
 * LAB_WIRE_ON (| LAB_WIRE_FAULT for a lock that populates) or 0. Caller holds the connection lock. */
void lab_wire_ranges(uintptr_t s, uintptr_t e, int flags);

/* ---- mmap.c ---- */

void *lab_mmap(void *addr, size_t len, int prot, int flags, int fd, off_t off);
int lab_munmap(void *addr, size_t len);

/* ---- agent.c ---- */

#define LAB_SCRATCH_PAGES 256
extern int g_agent_fd;              /* set and cleared under g_conn_lock */
extern uintptr_t g_scratch;
extern size_t g_scratch_used;       /* pages */
int agent_fd_ours(int fd);
void start_agent(void);

/* ---- heap.c ---- */

extern size_t g_heap_min;           /* heap blocks this big are lab memory; 0: none */
void heap_init(void);

/* ---- lock.c ---- */

/* mlockall(MCL_FUTURE) in force: 0 no; LAB_FUTURE_LOCK: new mappings are locked and populated
 * (the shim does it once a lab mapping is registered); LAB_FUTURE_ONFAULT: locked on fault. */
#define LAB_FUTURE_LOCK 1
#define LAB_FUTURE_ONFAULT 2
extern int lab_lock_future;
/* A non-lab mapping made under LAB_FUTURE_LOCK: locked (populated) now. Returns res. */
void *lab_future_plain(void *res, size_t len, int prot);

/* ---- ownuffd.c ---- */

/* What /proc/self/fd/FD names, NUL-terminated in link[cap]: its length, or -1. */
ssize_t fd_link(int fd, char *link, size_t cap);

/* The real calls, as raw syscalls: libc's own symbols would route back into us. */
static inline void *real_mmap(void *a, size_t l, int p, int f, int fd, off_t o)
{
    return (void *)syscall(SYS_mmap, a, l, p, f, fd, o);
}
static inline int real_mprotect(void *a, size_t l, int p) { return (int)syscall(SYS_mprotect, a, l, p); }
static inline int real_msync(void *a, size_t l, int f) { return (int)syscall(SYS_msync, a, l, f); }
static inline void *real_mremap(void *o, size_t os, size_t ns, int f, void *na)
{
    return (void *)syscall(SYS_mremap, o, os, ns, f, na);
}
static inline int real_munmap(void *a, size_t l) { return (int)syscall(SYS_munmap, a, l); }
static inline uintptr_t page_up(uintptr_t x) { return (x + g_page - 1) & ~(uintptr_t)(g_page - 1); }

#pragma GCC visibility pop

#endif
