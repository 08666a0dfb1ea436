/* liblabpreload.so: the LD_PRELOAD shim that turns a program's mmaps of lab memory
 * into userfaultfd-registered ranges whose faults the lab daemon serves.
 *
 * The constructor creates the process's uffd, hands it to the daemon over the
 * control socket (labproto.h) and keeps its own copy: if only the daemon held it,
 * a daemon crash would turn blocked faults into silent zero pages. A watcher
 * thread ends the process with a clear message as soon as the daemon's socket
 * closes. Without LAB_CONTROL every wrapper passes straight through.
 *
 * An agent thread (agent.c) evicts pages for the daemon's pageout: the daemon cannot
 * zap another process's private anonymous memory, so the agent opens a second
 * connection (LAB_AGENT_HELLO, announcing its scratch area), after which the daemon
 * sends it LAB_EVICT requests. For each span that is still lab memory it moves the
 * pages into its scratch with UFFDIO_MOVE (no event), then zaps the scratch with one
 * madvise; pages that will not move (COW-shared after fork, shared file mappings, no
 * UFFDIO_MOVE) are zapped in place with MADV_DONTNEED. A moved page whose check word no
 * longer matches what the daemon saved goes back, and pages the kernel holds pinned for
 * I/O or that are mlock'd stay; the reply lists those so the daemon keeps them resident.
 * It works under the connection lock (busy: EAGAIN), never faults lab memory in, and
 * gives up quietly (the process then runs without eviction) if the daemon refuses it or
 * the connection ends; the watcher alone decides that the daemon is gone.
 *
 * Big heap blocks (>= LAB_HEAP_MIN bytes, default 1 MiB, 0 = off) are lab
 * anonymous memory too (heap.c), mapped through the same path as a program's anonymous
 * mmap; smaller ones, and everything before the constructor has connected, go
 * to glibc (__libc_malloc and friends).
 *
 * Interposed (each marked LAB_EXPORT; everything else is hidden): mmap, mmap64, munmap,
 * mprotect, msync, mremap, madvise (fork inheritance) in mmap.c; fork and the wait family
 * (wait, waitpid, wait3, wait4, waitid: LAB_REAPED) in fork.c; the malloc family (malloc,
 * free, calloc, realloc, reallocarray, memalign, posix_memalign, aligned_alloc, valloc,
 * pvalloc, malloc_usable_size) in heap.c; mlock, mlock2, munlock, mlockall, munlockall
 * (lock.c: the daemon never pages out a locked page); ioctl (ownuffd.c: a program's own
 * UFFDIO_REGISTER takes lab memory out of the lab); read, write, pread, pwrite (procmem.c:
 * /proc/self/mem on lab memory). shim.h lists the files and what they share.
 *
 * This file: the process state, the one-line deaths, and start-up (the constructor).
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
dev_t g_mount_dev;
int g_have_mount;
size_t g_page = 4096;
char g_ctl_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
static char g_comm[32];
static char g_vm[16];
static uint64_t g_run_id;
pid_t (*g_real_fork)(void);
pid_t (*g_real_wait4)(pid_t, int *, int, struct rusage *);
int (*g_real_waitid)(idtype_t, id_t, siginfo_t *, int);

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
    /* Not _exit: the shim's own _exit sends the exit report, through the connection this
     * path may hold the lock of (die_gone), to a daemon that may be gone: it hung there. */
    syscall(SYS_exit_group, LAB_EXIT_CODE);
    __builtin_unreachable();
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
    /* The daemon speaks another protocol version: this liblabpreload.so is not the one built
     * with that lab (LAB_PRELOAD, or a copy left from another build). */
    if (status == EPROTONOSUPPORT)
        die_line("lab: %s (pid %d) cannot be served by the lab: its shim speaks control protocol version %d and "
                 "the lab daemon another; use the liblabpreload.so built with this lab (check LAB_PRELOAD)",
                 g_comm, (int)getpid(), LAB_PROTO_VERSION);
    die_line("lab: the lab daemon refused this process: %s", strerror(status));
}

void die_gone(void) __attribute__((noreturn));
void die_gone(void)
{
    die_line("lab: the lab daemon went away; stopping %s (pid %d) rather than let it read pages the lab did not serve",
             g_comm, (int)getpid());
}

void init_locks(void)
{
    lab_lock_init(&g_conn_lock);
    lab_lock_init(&g_tab_lock);
}

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
