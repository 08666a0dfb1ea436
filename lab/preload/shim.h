/* What shim.c shares with the shim's other files (ownuffd.c, procmem.c, lock.c). Hidden: a
 * program never sees these names. */
#ifndef LAB_SHIM_H
#define LAB_SHIM_H
#include <stddef.h>
#include <sys/types.h>
#include <stdint.h>

#include "labsys.h"
#include "labproto.h"

#include <signal.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

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

extern int g_on;                    /* connected: the wrappers act */
extern int g_uffd;                  /* this process's lab uffd */
extern size_t g_page;
/* Held across every change of lab memory and its request to the daemon (recursive). */
extern struct lab_lock g_conn_lock;

void dbg(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* One request to the daemon (ends the program if the daemon is gone); returns its status. */
int32_t lab_req(uint32_t type, const void *pl, uint32_t len, void *rep, uint32_t repcap, int *rfd);
/* The table of lab ranges: any overlap; forget a range; the lowest overlapping piece. */
int tab_any(uintptr_t s, uintptr_t e);
int tab_cut(uintptr_t s, uintptr_t e);
int tab_next(uintptr_t s, uintptr_t e, uintptr_t *os, uintptr_t *oe, int32_t *kind);

/* What /proc/self/fd/FD names, NUL-terminated in link[cap]: its length, or -1 (ownuffd.c). */
ssize_t fd_link(int fd, char *link, size_t cap);

/* The program runs under the lab (the shim is connected). */
int lab_active(void);
/* The control connection's lock: held across a real call and the requests that describe it,
 * so the daemon sees them in the order they happened. Recursive. */
void lab_conn_lock(void);
void lab_conn_unlock(void);
/* Tell the daemon that the lab memory in [s, e) is now wired (mlock'd) or no longer is.
 * Caller holds the connection lock. */
void lab_wire_ranges(uintptr_t s, uintptr_t e, int wire);
/* mlockall(MCL_FUTURE) is in force: new anonymous mappings are locked by the kernel as they are
 * made (populated before the shim could register them), so they stay program memory. */
extern int lab_lock_future;

/* ---- shared between shim.c, agent.c and fork.c ---- */

extern int g_sock;                  /* control connection to the daemon */
extern uint32_t g_seq;
extern uint64_t g_features;         /* uffd features the daemon enabled */
extern pid_t (*g_real_fork)(void);
extern pid_t (*g_real_wait4)(pid_t, int *, int, struct rusage *);
extern int (*g_real_waitid)(idtype_t, id_t, siginfo_t *, int);
extern struct lab_lock g_tab_lock;

void die_connect(int err) __attribute__((noreturn));
void check_uid_served(void);
void init_locks(void);
int tab_covers(uintptr_t s, uintptr_t e);
int conn_open(int *out);
int send_msg(int s, const struct lab_hdr *h, const void *pl, size_t len, int fd);
int recv_exact(int s, void *buf, size_t len, int *fd);
int start_thread(void (*fn)(void *), void *arg);
int start_watcher(void);
void say_hello(uint32_t type, uint32_t flags, int send_fd, struct lab_hello_reply *rep, int *recv_fd);
int uffd_register(uintptr_t start, uintptr_t len, uint64_t mode);

/* agent.c */
#define LAB_SCRATCH_PAGES 256
extern int g_agent_fd;
extern uintptr_t g_scratch;
extern size_t g_scratch_used;       /* pages */
int agent_fd_ours(int fd);
void start_agent(void);

/* The real calls, as raw syscalls: libc's own symbols would route back into us. */
static inline int real_munmap(void *a, size_t l) { return (int)syscall(SYS_munmap, a, l); }
static inline uintptr_t page_up(uintptr_t x) { return (x + g_page - 1) & ~(uintptr_t)(g_page - 1); }

#pragma GCC visibility pop

#endif
