/* The exit report: what this process had resident OUTSIDE lab memory, by kind, sent to the
 * daemon as LAB_OUTSIDE just before the image ends (exit, _exit, or an exec that replaces it).
 *
 * Why pages and not faults: the kernel keeps one fault count per task (getrusage), none per
 * mapping, so the faults `lab run` sees beside the lab's cannot be split by where they hit.
 * What /proc does tell per mapping is how many of its pages are resident (/proc/self/smaps),
 * and a page resident in a mapping was brought in by a fault (or by the kernel's fault-around,
 * which maps up to 16 file pages per fault): so each kind's resident pages say where the
 * faults outside the lab went, not how many there were. The kinds (labproto.h, lab_outside):
 * file mappings (program text, libraries, other files the loader or the program mapped that
 * are not lab memory), the main thread's stack, the brk heap, other anonymous memory (thread
 * stacks, the shim's own, memory mapped before the shim connected, memfd/SysV shared memory),
 * and the kernel's special mappings (vDSO, vvar, vsyscall). Lab ranges (the shim's table) are
 * left out: the daemon counts their faults itself. Anonymous kinds count private pages only
 * (mapped by this process alone), so a fork child does not report the pages it still shares
 * with its parent, which it never faulted; file kinds count every resident page (a library's
 * pages are shared with every process that maps it, but each process faults them in itself).
 *
 * A process killed by a signal does not report, nor does a vfork child (it shares its parent's
 * memory, which the parent reports) or anything that ends without reaching these hooks (exit by
 * a raw syscall). The daemon keeps each process's last report (an exec that fails and an exit
 * that follows send two: the second replaces the first). */
#include "labproto.h"
#include "shim.h"
#include "labsys.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

/* The process whose memory this image's reports describe: set at load and in every fork
 * child (pthread_atfork); a vfork child sees its parent's value and so stays silent. */
static pid_t g_report_pid;

static void forked_child(void) { g_report_pid = (pid_t)syscall(SYS_getpid); }

__attribute__((constructor)) static void coverage_init(void)
{
    g_report_pid = (pid_t)syscall(SYS_getpid);
    pthread_atfork(NULL, NULL, forked_child);
}

static uint64_t parse_kb(const char *s)
{
    while (*s == ' ')
        s++;
    uint64_t v = 0;
    while (*s >= '0' && *s <= '9')
        v = v * 10 + (uint64_t)(*s++ - '0');
    return v;
}

/* The kind of one smaps mapping, from its path field (the text after the inode). */
enum { K_FILE, K_STACK, K_HEAP, K_ANON, K_OTHER };

static int kind_of(const char *path)
{
    if (*path == 0)
        return K_ANON;
    if (strncmp(path, "[stack]", 7) == 0)
        return K_STACK;
    if (strncmp(path, "[heap]", 6) == 0)
        return K_HEAP;
    if (strncmp(path, "[anon", 5) == 0)         /* [anon:name], [anon_shmem:name] */
        return K_ANON;
    if (*path == '[')                           /* [vdso], [vvar], [vsyscall], [uprobes]... */
        return K_OTHER;
    if (strncmp(path, "/memfd:", 7) == 0 || strncmp(path, "/dev/zero", 9) == 0 || strncmp(path, "/SYSV", 5) == 0)
        return K_ANON;                          /* shared anonymous memory */
    return K_FILE;
}

/* One smaps mapping being summed. */
struct cur {
    int on;        /* a mapping outside lab memory */
    int kind;
    uint64_t rss, priv;
};

static void close_mapping(struct cur *c, struct lab_outside *o)
{
    if (!c->on)
        return;
    uint64_t pages = (c->kind == K_FILE || c->kind == K_OTHER ? c->rss : c->priv) / (g_page / 1024);
    uint64_t *slot[] = {&o->file_pages, &o->stack_pages, &o->heap_pages, &o->anon_pages, &o->other_pages};
    *slot[c->kind] += pages;
    c->on = 0;
}

/* Handle one line of /proc/self/smaps. */
static void smaps_line(char *line, struct cur *c, struct lab_outside *o)
{
    char *p = line;
    uintptr_t s = 0, e = 0;
    int hex = 0;
    /* A mapping's header line starts "start-end perms ...": lowercase hex, then '-'. */
    while ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')) {
        s = s * 16 + (uintptr_t)(*p <= '9' ? *p - '0' : *p - 'a' + 10);
        p++, hex++;
    }
    if (hex > 0 && *p == '-') {
        close_mapping(c, o);
        p++;
        while ((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))
            e = e * 16 + (uintptr_t)(*p <= '9' ? *p - '0' : *p - 'a' + 10), p++;
        /* perms, offset, dev, inode: four fields, then spaces, then the path (maybe empty) */
        for (int f = 0; f < 4; f++) {
            while (*p == ' ')
                p++;
            while (*p && *p != ' ')
                p++;
        }
        while (*p == ' ')
            p++;
        c->on = !tab_any(s, e);
        c->kind = kind_of(p);
        c->rss = c->priv = 0;
        return;
    }
    if (strncmp(line, "Rss:", 4) == 0)
        c->rss = parse_kb(line + 4);
    else if (strncmp(line, "Private_Clean:", 14) == 0)
        c->priv += parse_kb(line + 14);
    else if (strncmp(line, "Private_Dirty:", 14) == 0)
        c->priv += parse_kb(line + 14);
}

/* Sum /proc/self/smaps by kind, leaving out lab ranges; 0, or -1 if it cannot be read. */
static int outside_pages(struct lab_outside *o)
{
    int fd = (int)syscall(SYS_openat, AT_FDCWD, "/proc/self/smaps", O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    char buf[8192];
    size_t have = 0;
    struct cur c = {0};
    for (;;) {
        long n = syscall(SYS_read, fd, buf + have, sizeof buf - 1 - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            break;
        have += (size_t)n;
        buf[have] = 0;
        char *line = buf, *nl;
        while ((nl = memchr(line, '\n', (size_t)(buf + have - line)))) {
            *nl = 0;
            smaps_line(line, &c, o);
            line = nl + 1;
        }
        have = (size_t)(buf + have - line);
        memmove(buf, line, have);
        if (have == sizeof buf - 1)   /* a line longer than the buffer (a huge path): drop it */
            have = 0;
    }
    close_mapping(&c, o);
    syscall(SYS_close, fd);
    return 0;
}

/* Send this image's report (flags: LAB_OUTSIDE_EXIT or LAB_OUTSIDE_EXEC). Never fails the
 * program: a daemon that refuses it (an older one) or a missing /proc only loses the report. */
static void lab_outside_report(uint32_t flags)
{
    if (!g_on || (pid_t)syscall(SYS_getpid) != g_report_pid)
        return;
    int err = errno;
    struct lab_outside o = {0};
    o.flags = flags;
    if (outside_pages(&o) == 0) {
        int32_t st = 0;
        int r = lab_call(LAB_OUTSIDE, &o, sizeof o, -1, NULL, 0, NULL, &st);
        if (r < 0 || st)
            dbg("LAB_OUTSIDE: %s", strerror(r < 0 ? -r : st));
    }
    errno = err;
}

/* exit() and a return from main run the library destructors; _exit and _Exit do not. */
__attribute__((destructor)) static void coverage_fini(void) { lab_outside_report(LAB_OUTSIDE_EXIT); }

LAB_EXPORT void _exit(int status)
{
    lab_outside_report(LAB_OUTSIDE_EXIT);
    syscall(SYS_exit_group, status);
    __builtin_unreachable();
}

LAB_EXPORT void _Exit(int status) { _exit(status); }

/* ---------- exec: the image ends here if the call succeeds ---------- */

typedef int (*execve_fn)(const char *, char *const[], char *const[]);
typedef int (*execv_fn)(const char *, char *const[]);

static void *next(const char *name) { return dlsym(RTLD_NEXT, name); }

LAB_EXPORT int execve(const char *path, char *const argv[], char *const envp[])
{
    lab_outside_report(LAB_OUTSIDE_EXEC);
    return ((execve_fn)next("execve"))(path, argv, envp);
}

LAB_EXPORT int execv(const char *path, char *const argv[])
{
    lab_outside_report(LAB_OUTSIDE_EXEC);
    return ((execv_fn)next("execv"))(path, argv);
}

LAB_EXPORT int execvp(const char *file, char *const argv[])
{
    lab_outside_report(LAB_OUTSIDE_EXEC);
    return ((execv_fn)next("execvp"))(file, argv);
}

LAB_EXPORT int execvpe(const char *file, char *const argv[], char *const envp[])
{
    lab_outside_report(LAB_OUTSIDE_EXEC);
    return ((execve_fn)next("execvpe"))(file, argv, envp);
}

LAB_EXPORT int fexecve(int fd, char *const argv[], char *const envp[])
{
    lab_outside_report(LAB_OUTSIDE_EXEC);
    return ((int (*)(int, char *const[], char *const[]))next("fexecve"))(fd, argv, envp);
}

/* The execl family: collect the variadic arguments into an argv on the stack (POSIX bounds
 * them by ARG_MAX; glibc does the same), then take the execv path. */
#define COLLECT(arg0, ap, argv, extra)                                         \
    size_t n_ = 1;                                                             \
    va_start(ap, arg0);                                                        \
    while (va_arg(ap, char *))                                                 \
        n_++;                                                                  \
    va_end(ap);                                                                \
    char *argv[n_ + 1];                                                        \
    argv[0] = (char *)(arg0);                                                  \
    va_start(ap, arg0);                                                        \
    for (size_t i_ = 1; i_ <= n_; i_++)                                        \
        argv[i_] = va_arg(ap, char *);                                         \
    extra;                                                                     \
    va_end(ap)

LAB_EXPORT int execl(const char *path, const char *arg, ...)
{
    va_list ap;
    COLLECT(arg, ap, argv, (void)0);
    return execv(path, argv);
}

LAB_EXPORT int execlp(const char *file, const char *arg, ...)
{
    va_list ap;
    COLLECT(arg, ap, argv, (void)0);
    return execvp(file, argv);
}

LAB_EXPORT int execle(const char *path, const char *arg, ...)
{
    va_list ap;
    char *const *envp;
    COLLECT(arg, ap, argv, envp = va_arg(ap, char *const *));
    return execve(path, argv, envp);
}
