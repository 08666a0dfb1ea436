/* Drops root the way setpriv --reuid --regid does, then keeps using lab memory.
 *
 *   dropprivs FILE UID
 *
 * Maps FILE (on the lab mount, bytes i*7+3 mod 256) and a 2 MiB heap block, then:
 * PR_SET_KEEPCAPS, setgroups(0), setresuid(UID), capset (raises the kept capabilities in
 * this thread only, as setpriv does), setresgid(UID). glibc applies set*id to every thread
 * it knows and aborts if the results differ, so any thread the lab adds to the process
 * would make this abort. Afterwards it maps, touches and checks lab memory again and
 * prints "dropped to UID, lab memory ok". Exit 0, or 1 with one line.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

#define LEN (256 * 1024)

static void fail(const char *what)
{
    fprintf(stderr, "dropprivs: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void check_file(int fd, int flags, const char *when)
{
    unsigned char *p = mmap(NULL, LEN, PROT_READ, flags, fd, 0);
    if (p == MAP_FAILED)
        fail(when);
    for (size_t i = 0; i < LEN; i += 509)
        if (p[i] != (unsigned char)(i * 7 + 3)) {
            fprintf(stderr, "dropprivs: byte %zu of the file is %u %s\n", i, p[i], when);
            exit(1);
        }
    munmap(p, LEN);
}

static void check_anon(const char *when)
{
    size_t n = 2 << 20;
    unsigned char *b = calloc(1, n); /* a lab heap block; calloc: zero whatever allocator reuses it */
    if (!b)
        fail("calloc");
    for (size_t i = 0; i < n; i += 4096)
        if (b[i] != 0) {
            fprintf(stderr, "dropprivs: fresh heap byte %zu is %u %s\n", i, b[i], when);
            exit(1);
        }
    memset(b, 0x5a, n);
    for (size_t i = 0; i < n; i += 4093)
        if (b[i] != 0x5a) {
            fprintf(stderr, "dropprivs: heap byte %zu is %u %s\n", i, b[i], when);
            exit(1);
        }
    free(b);
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: dropprivs FILE UID\n");
        return 2;
    }
    uid_t id = (uid_t)strtoul(argv[2], NULL, 10);
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0)
        fail(argv[1]);
    check_file(fd, MAP_PRIVATE, "before");
    check_anon("before");

    if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) != 0)
        fail("PR_SET_KEEPCAPS");
    if (setgroups(0, NULL) != 0)
        fail("setgroups");
    if (setresuid(id, id, id) != 0)
        fail("setresuid");
    struct __user_cap_header_struct h = {_LINUX_CAPABILITY_VERSION_3, 0};
    struct __user_cap_data_struct d[2];
    if (syscall(SYS_capget, &h, d) != 0)
        fail("capget");
    d[0].effective = d[0].permitted;
    d[1].effective = d[1].permitted;
    if (syscall(SYS_capset, &h, d) != 0) /* this thread only */
        fail("capset");
    if (setresgid(id, id, id) != 0)
        fail("setresgid");
    if (getuid() != id || geteuid() != id || getgid() != id)
        fail("ids did not change");

    check_file(fd, MAP_PRIVATE, "after dropping privileges");
    check_file(fd, MAP_SHARED, "after dropping privileges (shared)");
    check_anon("after dropping privileges");
    printf("dropped to %u, lab memory ok\n", (unsigned)id);
    return 0;
}
