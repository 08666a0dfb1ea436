/* fork and the wait family (moved from shim.c as it was). */
#include "labproto.h"
#include "shim.h"
#include "labsys.h"

#include <dlfcn.h>
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

/* ---------- wait: the daemon frees a reaped child's space before wait returns, as BSD does ---------- */

static void reaped(pid_t pid)
{
    int err = errno;
    struct lab_reaped r = {(int32_t)pid, 0};
    int32_t st = lab_req(LAB_REAPED, &r, sizeof r, NULL, 0, NULL);
    if (st)
        dbg("LAB_REAPED %d: %s", (int)pid, strerror(st));
    errno = err;
}

LAB_EXPORT pid_t wait4(pid_t pid, int *status, int options, struct rusage *ru)
{
    if (!g_real_wait4)
        g_real_wait4 = (pid_t(*)(pid_t, int *, int, struct rusage *))dlsym(RTLD_NEXT, "wait4");
    int st = 0;
    pid_t r = g_real_wait4(pid, &st, options, ru);
    if (r > 0 && status)
        *status = st;
    /* stopped or continued children are not reaped */
    if (r > 0 && g_on && (WIFEXITED(st) || WIFSIGNALED(st)))
        reaped(r);
    return r;
}

LAB_EXPORT pid_t waitpid(pid_t pid, int *status, int options) { return wait4(pid, status, options, NULL); }
LAB_EXPORT pid_t wait(int *status) { return wait4(-1, status, 0, NULL); }
LAB_EXPORT pid_t wait3(int *status, int options, struct rusage *ru) { return wait4(-1, status, options, ru); }

LAB_EXPORT int waitid(idtype_t idtype, id_t id, siginfo_t *info, int options)
{
    if (!g_real_waitid)
        g_real_waitid = (int (*)(idtype_t, id_t, siginfo_t *, int))dlsym(RTLD_NEXT, "waitid");
    siginfo_t local;
    siginfo_t *si = info ? info : &local;
    si->si_pid = 0; /* WNOHANG with nothing to report may leave it untouched */
    int r = g_real_waitid(idtype, id, si, options);
    if (r == 0 && g_on && !(options & WNOWAIT) && si->si_pid > 0 &&
        (si->si_code == CLD_EXITED || si->si_code == CLD_KILLED || si->si_code == CLD_DUMPED))
        reaped(si->si_pid);
    return r;
}

/* ---------- fork ---------- */

static void child_reconnect(void)
{
    /* Only this thread survived the fork: locks may be held by threads that no longer exist. */
    init_locks();
    g_seq = 0;
    close(g_sock);
    close(g_uffd); /* the parent's uffd; ours comes from the daemon's FORK event */
    g_sock = g_uffd = -1;
    /* the parent's agent connection (its thread did not come along); fork held g_conn_lock,
     * so g_agent_fd is whole. Not closed if the program already closed and reused it. */
    if (g_agent_fd >= 0 && agent_fd_ours(g_agent_fd))
        close(g_agent_fd);
    g_agent_fd = -1;
    /* a process that dropped its privileges keeps its own connection, but cannot open one
     * for a child */
    check_uid_served();
    struct lab_hello_reply rep = {0};   /* the reply may carry no payload */
    int fd = -1;
    say_hello(LAB_CHILD_HELLO, LAB_HELLO_FORK_CHILD, -1, &rep, &fd);
    int r;
    if (fd < 0)
        die_connect(EPROTO);
    g_uffd = fd;
    /* The parent's agent scratch came along, registered. Unmapped here, before the program
     * runs: unmapped later by our agent thread, its UNMAP event could reach the daemon after
     * the main thread had mapped lab memory in the freed space, and wipe that from the model. */
    if (g_scratch) {
        real_munmap((void *)g_scratch, LAB_SCRATCH_PAGES * g_page);
        g_scratch = 0;
        g_scratch_used = 0;
    }
    if (rep.features) /* the reply may be empty: the child's uffd inherits the parent's features */
        g_features = rep.features;
    zap_shared_ranges();
    r = start_watcher();
    if (r != 0)
        die_connect(r);
    dbg("fork child connected: uffd %d", g_uffd);
    start_agent();
}

LAB_EXPORT pid_t fork(void)
{
    if (!g_real_fork)
        g_real_fork = (pid_t(*)(void))dlsym(RTLD_NEXT, "fork");
    if (!g_on)
        return g_real_fork();

    lab_lock(&g_conn_lock);
    int32_t st = lab_req(LAB_FORK_PREPARE, NULL, 0, NULL, 0, NULL);
    if (st != 0) {
        /* without the protection the child's copy-on-write would go unseen */
        lab_unlock(&g_conn_lock);
        dbg("LAB_FORK_PREPARE refused: %s", strerror(st));
        errno = st;
        return -1;
    }
    /* The table too, so the child never inherits one half-updated by another thread. */
    lab_lock(&g_tab_lock);
    pid_t pid = g_real_fork();
    int err = errno;
    if (pid == 0) {
        child_reconnect();
        return 0;
    }
    lab_unlock(&g_tab_lock);
    struct lab_fork_done fd = {pid < 0 ? -1 : (int32_t)pid, 0};
    st = lab_req(LAB_FORK_DONE, &fd, sizeof fd, NULL, 0, NULL);
    if (st)
        dbg("LAB_FORK_DONE: %s", strerror(st));
    lab_unlock(&g_conn_lock);
    errno = err;
    return pid;
}
