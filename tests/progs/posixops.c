/* Runs a script of file-system calls in a directory and prints what each gave, so the same script
 * run on the lab mount and on a plain directory of the backing file system can be compared line by line.
 *
 *   posixops DIR < SCRIPT
 *
 * One call a line: [@WHO] OP ARGS...  WHO is R (root, the default), A (uid 2001 gid 3001), B (2002, 3002)
 * or C (2003, gid 3003, also in group 3001: a member of A's group). Each call runs in a child that first
 * takes that identity (setgroups, setresgid, setresuid), so permission checks are the kernel's real ones.
 * "case NAME" starts a case: a fresh root-owned 0777 directory NAME, the working directory from then on.
 * Each call prints "LINE: RESULT", RESULT being "ok", an errno name, or what the call observed.
 * umask is 0, so modes are exactly those asked for.
 *
 * Calls: mk P MODE OWNER (a file, as root), md P MODE OWNER (a directory), open P FLAGS [MODE] (flags:
 * r w a=rdwr c=creat x=excl t=trunc A=append d=directory n=nofollow), read P, write P, append P, trunc P N,
 * ftrunc P N, chmod P MODE, chown P UID GID, lchown P UID GID, utime P now|set, mkdir P MODE, rmdir P,
 * unlink P, rename P Q, link P Q, symlink T P, readlink P, mknod P f|p|s|c|b MODE [MAJ MIN], access P MODES
 * (r w x f), stat P, lstat P, setx P NAME VAL, getx P NAME, lsx P, rmx P NAME, acl P SPEC, dacl P SPEC
 * (SPEC as setfacl's: u::rw,u:2002:rw,g::r,m::rw,o::-), ls P, cd P, times P (remember P's mtime and ctime),
 * changed P (which of them changed since: "m", "c", "mc" or "-"), umask MODE (for the rest of the case).
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>
#include <sys/xattr.h>
#include <time.h>
#include <unistd.h>

#define MAXARG 8

static struct {
    char path[256];
    struct timespec m, c;
} saved[16];
static int nsaved;

static const char *ename(int e)
{
    static char buf[16];
    switch (e) {
#define E(x) case x: return #x;
    E(EPERM) E(ENOENT) E(EACCES) E(EEXIST) E(ENOTDIR) E(EISDIR) E(EINVAL) E(ENOTEMPTY) E(ELOOP)
    E(ENAMETOOLONG) E(EXDEV) E(EBUSY) E(ENODATA) E(EOPNOTSUPP) E(ERANGE) E(ETXTBSY) E(EROFS)
    E(EMLINK) E(EBADF) E(EFBIG) E(ENOSPC) E(ENXIO) E(ENODEV) E(EIO) E(ENOSYS)
#undef E
    }
    snprintf(buf, sizeof buf, "E%d", e);
    return buf;
}

static int who(char c, uid_t *u, gid_t *g, gid_t *groups, int *n)
{
    switch (c) {
    case 'R': *u = 0; *g = 0; groups[0] = 0; *n = 1; return 0;
    case 'A': *u = 2001; *g = 3001; groups[0] = 3001; *n = 1; return 0;
    case 'B': *u = 2002; *g = 3002; groups[0] = 3002; *n = 1; return 0;
    case 'C': *u = 2003; *g = 3003; groups[0] = 3003; groups[1] = 3001; *n = 2; return 0;
    }
    return -1;
}

static int owner(const char *s, uid_t *u, gid_t *g)
{
    gid_t gs[4];
    int n;
    return who(s[0], u, g, gs, &n);
}

static int openflags(const char *s)
{
    int f = 0, acc = O_RDONLY;
    for (; *s; s++)
        switch (*s) {
        case 'r': acc = O_RDONLY; break;
        case 'w': acc = O_WRONLY; break;
        case 'a': acc = O_RDWR; break;
        case 'c': f |= O_CREAT; break;
        case 'x': f |= O_EXCL; break;
        case 't': f |= O_TRUNC; break;
        case 'A': f |= O_APPEND; break;
        case 'd': f |= O_DIRECTORY; break;
        case 'n': f |= O_NOFOLLOW; break;
        }
    return f | acc | O_CLOEXEC;
}

/* An ACL spec as the system.posix_acl_* value: version 2, then (tag u16, perm u16, id u32) entries. */
static int aclvalue(const char *spec, unsigned char *out, size_t cap)
{
    size_t len = 4;
    uint32_t v = 2;
    memcpy(out, &v, 4);
    char buf[512];
    snprintf(buf, sizeof buf, "%s", spec);
    for (char *save = NULL, *e = strtok_r(buf, ",", &save); e; e = strtok_r(NULL, ",", &save)) {
        char *c1 = strchr(e, ':'), *c2 = c1 ? strchr(c1 + 1, ':') : NULL;
        if (!c2 || len + 8 > cap)
            return -1;
        uint16_t tag, perm = 0;
        uint32_t id = UINT32_MAX;
        int named = c2 > c1 + 1;
        switch (e[0]) {
        case 'u': tag = named ? 2 : 1; break;
        case 'g': tag = named ? 8 : 4; break;
        case 'm': tag = 0x10; break;
        case 'o': tag = 0x20; break;
        default: return -1;
        }
        if (named)
            id = (uint32_t)strtoul(c1 + 1, NULL, 10);
        for (char *p = c2 + 1; *p; p++)
            perm |= *p == 'r' ? 4 : *p == 'w' ? 2 : *p == 'x' ? 1 : 0;
        memcpy(out + len, &tag, 2);
        memcpy(out + len + 2, &perm, 2);
        memcpy(out + len + 4, &id, 4);
        len += 8;
    }
    return (int)len;
}

static const char *typename(mode_t m)
{
    return S_ISREG(m) ? "reg" : S_ISDIR(m) ? "dir" : S_ISLNK(m) ? "lnk" : S_ISFIFO(m) ? "fifo"
         : S_ISSOCK(m) ? "sock" : S_ISCHR(m) ? "chr" : S_ISBLK(m) ? "blk" : "?";
}

/* Runs one call; writes what it observed into out and returns 0, or returns an errno. */
static int call(int argc, char **a, char *out, size_t cap)
{
    const char *op = a[0];
    int fd, r;
    char buf[4096];
#define NEED(n) do { if (argc < (n)) return EINVAL; } while (0)
    if (!strcmp(op, "mk") || !strcmp(op, "md")) {
        NEED(4);
        uid_t u; gid_t g;
        if (owner(a[3], &u, &g))
            return EINVAL;
        mode_t m = (mode_t)strtoul(a[2], NULL, 8);
        if (op[1] == 'k') {
            if ((fd = open(a[1], O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600)) < 0)
                return errno;
            r = write(fd, "data", 4) == 4 && fchown(fd, u, g) == 0 && fchmod(fd, m) == 0 ? 0 : errno;
            close(fd);
            return r;
        }
        if (mkdir(a[1], 0700) != 0)
            return errno;
        return chown(a[1], u, g) == 0 && chmod(a[1], m) == 0 ? 0 : errno;
    }
    if (!strcmp(op, "open")) {
        NEED(3);
        fd = open(a[1], openflags(a[2]), argc > 3 ? (mode_t)strtoul(a[3], NULL, 8) : 0644);
        if (fd < 0)
            return errno;
        close(fd);
        return 0;
    }
    if (!strcmp(op, "read") || !strcmp(op, "write") || !strcmp(op, "append")) {
        NEED(2);
        int f = op[0] == 'r' ? O_RDONLY : op[0] == 'w' ? O_WRONLY : O_WRONLY | O_APPEND;
        if ((fd = open(a[1], f | O_CLOEXEC)) < 0)
            return errno;
        ssize_t n = op[0] == 'r' ? read(fd, buf, sizeof buf) : op[0] == 'w' ? pwrite(fd, "W", 1, 1) : write(fd, "A", 1);
        r = n < 0 ? errno : 0;
        if (n >= 0 && op[0] == 'r')
            snprintf(out, cap, "%zd bytes", n);
        close(fd);
        return r;
    }
    if (!strcmp(op, "trunc")) { NEED(3); return truncate(a[1], atol(a[2])) ? errno : 0; }
    if (!strcmp(op, "ftrunc")) {
        NEED(3);
        if ((fd = open(a[1], O_WRONLY | O_CLOEXEC)) < 0)
            return errno;
        r = ftruncate(fd, atol(a[2])) ? errno : 0;
        close(fd);
        return r;
    }
    if (!strcmp(op, "chmod")) { NEED(3); return chmod(a[1], (mode_t)strtoul(a[2], NULL, 8)) ? errno : 0; }
    if (!strcmp(op, "chown") || !strcmp(op, "lchown")) {
        NEED(4);
        uid_t u = (uid_t)atol(a[2]);
        gid_t g = (gid_t)atol(a[3]);
        return (op[0] == 'c' ? chown(a[1], u, g) : lchown(a[1], u, g)) ? errno : 0;
    }
    if (!strcmp(op, "utime")) {
        NEED(3);
        struct timespec ts[2] = {{1000000000, 0}, {1000000000, 0}};
        return utimensat(AT_FDCWD, a[1], strcmp(a[2], "now") ? ts : NULL, 0) ? errno : 0;
    }
    if (!strcmp(op, "mkdir")) { NEED(3); return mkdir(a[1], (mode_t)strtoul(a[2], NULL, 8)) ? errno : 0; }
    if (!strcmp(op, "rmdir")) { NEED(2); return rmdir(a[1]) ? errno : 0; }
    if (!strcmp(op, "unlink")) { NEED(2); return unlink(a[1]) ? errno : 0; }
    if (!strcmp(op, "rename")) { NEED(3); return rename(a[1], a[2]) ? errno : 0; }
    if (!strcmp(op, "link")) { NEED(3); return link(a[1], a[2]) ? errno : 0; }
    if (!strcmp(op, "symlink")) { NEED(3); return symlink(a[1], a[2]) ? errno : 0; }
    if (!strcmp(op, "readlink")) {
        NEED(2);
        ssize_t n = readlink(a[1], buf, sizeof buf - 1);
        if (n < 0)
            return errno;
        snprintf(out, cap, "%.*s", (int)n, buf);
        return 0;
    }
    if (!strcmp(op, "mknod")) {
        NEED(4);
        mode_t t = a[2][0] == 'f' ? S_IFREG : a[2][0] == 'p' ? S_IFIFO : a[2][0] == 's' ? S_IFSOCK
                 : a[2][0] == 'c' ? S_IFCHR : S_IFBLK;
        dev_t d = argc > 5 ? makedev(atoi(a[4]), atoi(a[5])) : 0;
        return mknod(a[1], t | (mode_t)strtoul(a[3], NULL, 8), d) ? errno : 0;
    }
    if (!strcmp(op, "access")) {
        NEED(3);
        int m = 0;
        for (const char *p = a[2]; *p; p++)
            m |= *p == 'r' ? R_OK : *p == 'w' ? W_OK : *p == 'x' ? X_OK : F_OK;
        return access(a[1], m) ? errno : 0;
    }
    if (!strcmp(op, "stat") || !strcmp(op, "lstat")) {
        NEED(2);
        struct stat st;
        if ((op[0] == 's' ? stat(a[1], &st) : lstat(a[1], &st)) != 0)
            return errno;
        snprintf(out, cap, "%s %04o %u:%u nlink %lu size %lld rdev %u,%u", typename(st.st_mode),
                 (unsigned)(st.st_mode & 07777), (unsigned)st.st_uid, (unsigned)st.st_gid,
                 (unsigned long)st.st_nlink, S_ISDIR(st.st_mode) ? 0LL : (long long)st.st_size,
                 major(st.st_rdev), minor(st.st_rdev));
        return 0;
    }
    if (!strcmp(op, "setx")) { NEED(4); return setxattr(a[1], a[2], a[3], strlen(a[3]), 0) ? errno : 0; }
    if (!strcmp(op, "getx")) {
        NEED(3);
        ssize_t n = getxattr(a[1], a[2], buf, sizeof buf);
        if (n < 0)
            return errno;
        snprintf(out, cap, "%zd bytes", n);
        return 0;
    }
    if (!strcmp(op, "lsx")) {
        NEED(2);
        ssize_t n = listxattr(a[1], buf, sizeof buf);
        if (n < 0)
            return errno;
        snprintf(out, cap, "%zd bytes", n);
        return 0;
    }
    if (!strcmp(op, "rmx")) { NEED(3); return removexattr(a[1], a[2]) ? errno : 0; }
    if (!strcmp(op, "acl") || !strcmp(op, "dacl")) {
        NEED(3);
        unsigned char v[512];
        int n = aclvalue(a[2], v, sizeof v);
        if (n < 0)
            return EINVAL;
        return setxattr(a[1], op[0] == 'a' ? "system.posix_acl_access" : "system.posix_acl_default", v,
                        (size_t)n, 0) ? errno : 0;
    }
    if (!strcmp(op, "ls")) {
        NEED(2);
        DIR *d = opendir(a[1]);
        if (!d)
            return errno;
        int n = 0;
        errno = 0;
        while (readdir(d))
            n++;
        r = errno;
        closedir(d);
        snprintf(out, cap, "%d entries", n);
        return r;
    }
    if (!strcmp(op, "cd")) { NEED(2); return chdir(a[1]) ? errno : 0; }
    return ENOSYS;
}

static void observe(int argc, char **a, char *out, size_t cap)
{
    struct stat st;
    if (argc < 2 || stat(a[1], &st) != 0) {
        snprintf(out, cap, "%s", ename(errno));
        return;
    }
    if (!strcmp(a[0], "times")) {
        int i = 0;
        while (i < nsaved && strcmp(saved[i].path, a[1]))
            i++;
        if (i == 16)
            i = 15;
        if (i == nsaved && nsaved < 16)
            nsaved++;
        snprintf(saved[i].path, sizeof saved[i].path, "%s", a[1]);
        saved[i].m = st.st_mtim;
        saved[i].c = st.st_ctim;
        /* a change must land on a later tick of the coarse clock file times come from */
        struct timespec nap = {0, 20 * 1000 * 1000};
        nanosleep(&nap, NULL);
        snprintf(out, cap, "ok");
        return;
    }
    for (int i = 0; i < nsaved; i++)
        if (!strcmp(saved[i].path, a[1])) {
            int m = st.st_mtim.tv_sec != saved[i].m.tv_sec || st.st_mtim.tv_nsec != saved[i].m.tv_nsec;
            int c = st.st_ctim.tv_sec != saved[i].c.tv_sec || st.st_ctim.tv_nsec != saved[i].c.tv_nsec;
            snprintf(out, cap, "%s%s%s", m ? "m" : "", c ? "c" : "", m || c ? "" : "-");
            return;
        }
    snprintf(out, cap, "no times saved");
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: posixops DIR < SCRIPT\n");
        return 2;
    }
    if (chdir(argv[1]) != 0) {
        fprintf(stderr, "posixops: %s: %s\n", argv[1], strerror(errno));
        return 1;
    }
    umask(0);
    char line[1024];
    while (fgets(line, sizeof line, stdin)) {
        line[strcspn(line, "\n")] = 0;
        char copy[1024], *a[MAXARG + 1];
        snprintf(copy, sizeof copy, "%s", line);
        int n = 0;
        for (char *save = NULL, *t = strtok_r(copy, " ", &save); t && n < MAXARG; t = strtok_r(NULL, " ", &save))
            a[n++] = t;
        a[n] = NULL;
        if (n == 0)
            continue;
        if (!strcmp(a[0], "case") && n == 2) {
            if (chdir(argv[1]) != 0 || mkdir(a[1], 0777) != 0 || chmod(a[1], 0777) != 0 || chdir(a[1]) != 0) {
                fprintf(stderr, "posixops: case %s: %s\n", a[1], strerror(errno));
                return 1;
            }
            nsaved = 0;
            umask(0);
            printf("== %s\n", a[1]);
            continue;
        }
        char out[512] = "";
        if (!strcmp(a[0], "umask") && n == 2) { /* the calls after it in this case inherit it */
            umask((mode_t)strtoul(a[1], NULL, 8));
            printf("%s: ok\n", line);
            continue;
        }
        if (!strcmp(a[0], "times") || !strcmp(a[0], "changed")) {
            observe(n, a, out, sizeof out);
            printf("%s: %s\n", line, out);
            continue;
        }
        char **args = a;
        char id = 'R';
        if (a[0][0] == '@') {
            id = a[0][1];
            args++;
            n--;
        }
        uid_t u; gid_t g, gs[4];
        int ng;
        if (n < 1 || who(id, &u, &g, gs, &ng)) {
            printf("%s: bad line\n", line);
            continue;
        }
        if (id == 'R' && strcmp(args[0], "cd")) { /* root's calls need no identity: no child (fast) */
            int e = call(n, args, out, sizeof out);
            printf("%s: %s\n", line, e ? ename(e) : out[0] ? out : "ok");
            continue;
        }
        int p[2];
        if (pipe(p) != 0) {
            perror("pipe");
            return 1;
        }
        fflush(stdout);
        pid_t pid = fork();
        if (pid < 0) {
            perror("fork");
            return 1;
        }
        if (pid == 0) {
            close(p[0]);
            int e = 0;
            if (setgroups((size_t)ng, gs) || setresgid(g, g, g) || setresuid(u, u, u))
                e = errno;
            else
                e = call(n, args, out, sizeof out);
            char res[600];
            int len = snprintf(res, sizeof res, "%s", e ? ename(e) : out[0] ? out : "ok");
            if (write(p[1], res, (size_t)len) != len)
                _exit(3);
            _exit(0);
        }
        close(p[1]);
        char res[600];
        ssize_t got = read(p[0], res, sizeof res - 1);
        close(p[0]);
        int status;
        waitpid(pid, &status, 0);
        res[got > 0 ? got : 0] = 0;
        printf("%s: %s\n", line, got > 0 ? res : "no answer");
    }
    return 0;
}
