/* What the shim's other files use of shim.c (hidden: not exported from liblabpreload.so). */
#ifndef LAB_SHIM_H
#define LAB_SHIM_H
#include <stdint.h>

#define LAB_HIDDEN __attribute__((visibility("hidden")))

/* The program runs under the lab (the shim is connected). */
LAB_HIDDEN int lab_active(void);
/* The control connection's lock: held across a real call and the requests that describe it,
 * so the daemon sees them in the order they happened. Recursive. */
LAB_HIDDEN void lab_conn_lock(void);
LAB_HIDDEN void lab_conn_unlock(void);
/* Tell the daemon that the lab memory in [s, e) is now wired (mlock'd) or no longer is.
 * Caller holds the connection lock. */
LAB_HIDDEN void lab_wire_ranges(uintptr_t s, uintptr_t e, int wire);
/* mlockall(MCL_FUTURE) is in force: new anonymous mappings are locked by the kernel as they are
 * made (populated before the shim could register them), so they stay program memory. */
extern LAB_HIDDEN int lab_lock_future;

#endif
