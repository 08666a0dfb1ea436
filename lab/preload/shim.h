/* What shim.c shares with the shim's other files (ownuffd.c, procmem.c, lock.c). Hidden: a
 * program never sees these names. */
#ifndef LAB_SHIM_H
#define LAB_SHIM_H
#include <stddef.h>
#include <sys/types.h>
#include <stdint.h>

#include "labsys.h"

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

#pragma GCC visibility pop

#endif
