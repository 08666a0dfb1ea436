/* mmapcheck: an ordinary program (plain libc, knows nothing of the lab) that maps
 * files privately and shared, writes, forks and checks what each process sees.
 * The end-to-end tests run it under the shim and assert the lab's fault counters,
 * so every memory touch below is deliberate: do not add any.
 *
 *   mmapcheck PRIVFILE SHAREDFILE   4-page files: byte i = i*7+3 (private), i*13+5 (shared)
 *   mmapcheck --anon N              N anonymous pages: zero on first read, then written
 *   mmapcheck --wait-fault FILE     maps FILE, waits 1 s, then reads page 0
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PG 4096
#define FILE_LEN (4 * PG)

static uint8_t priv_byte(size_t i) { return (uint8_t)(i * 7 + 3); }
static uint8_t shared_byte(size_t i) { return (uint8_t)(i * 13 + 5); }

static int fail(const char *what)
{
    printf("FAIL: %s\n", what);
    fflush(stdout);
    return 1;
}

static int open_or_fail(const char *path, int flags)
{
    int fd = open(path, flags);
    if (fd < 0) {
        printf("FAIL: open %s: %s\n", path, strerror(errno));
        fflush(stdout);
    }
    return fd;
}

static int run_files(const char *privpath, const char *sharedpath)
{
    int fdp = open_or_fail(privpath, O_RDONLY);
    if (fdp < 0)
        return 1;
    int fds = open_or_fail(sharedpath, O_RDWR);
    if (fds < 0)
        return 1;

    /* 1. private mapping: read pages 0 and 2 */
    volatile uint8_t *p = mmap(NULL, FILE_LEN, PROT_READ | PROT_WRITE, MAP_PRIVATE, fdp, 0);
    if (p == MAP_FAILED)
        return fail("mmap private");
    if (p[0] != priv_byte(0))
        return fail("private page 0 content");
    if (p[2 * PG] != priv_byte(2 * PG))
        return fail("private page 2 content");
    printf("p_read=ok\n");

    /* 2. write to a never-touched page (1) and to a page already read (2) */
    p[1 * PG] = 'X';
    p[2 * PG] = 'Y';
    if (p[1 * PG] != 'X' || p[2 * PG] != 'Y')
        return fail("private writes read back");

    /* 3. shared mapping: read page 0, write into page 2 */
    volatile uint8_t *s = mmap(NULL, FILE_LEN, PROT_READ | PROT_WRITE, MAP_SHARED, fds, 0);
    if (s == MAP_FAILED)
        return fail("mmap shared");
    if (s[0] != shared_byte(0))
        return fail("shared page 0 content");
    static const char msg[] = "shared-write";
    for (size_t i = 0; i < sizeof msg - 1; i++)
        s[2 * PG + i] = (uint8_t)msg[i];

    /* 4. fork: private pages are isolated, shared ones are one page */
    fflush(stdout); /* so the child cannot repeat buffered output */
    /* Two pipes order the processes so the copy-on-write history is exact: the child
     * writes, the parent writes while the child still lives, the child exits, the
     * parent writes again once it has reaped it. */
    int c2p[2], p2c[2];
    if (pipe(c2p) != 0 || pipe(p2c) != 0)
        return fail("pipe");
    char tok = 0;
    pid_t pid = fork();
    if (pid < 0)
        return fail("fork");
    if (pid == 0) {
        int ok = p[1 * PG] == 'X' && p[2 * PG] == 'Y';
        p[1 * PG + 1] = 'C';
        s[3 * PG] = 'c';
        ok = ok && p[1 * PG + 1] == 'C';
        if (write(c2p[1], "w", 1) != 1 || read(p2c[0], &tok, 1) != 1)
            _exit(2);
        ok = ok && p[2 * PG + 1] == priv_byte(2 * PG + 1);   /* the parent's later write is not ours */
        _exit(ok ? 0 : 1);
    }
    if (read(c2p[0], &tok, 1) != 1)
        return fail("child did not report");
    p[2 * PG + 1] = 'Q';                 /* parent write while the child lives: a copy */
    if (write(p2c[1], "x", 1) != 1)
        return fail("pipe write");
    int wst;
    while (waitpid(pid, &wst, 0) < 0) {
        if (errno != EINTR)
            return fail("waitpid");
    }
    if (!WIFEXITED(wst) || WEXITSTATUS(wst) != 0)
        return fail("child checks");
    if (p[1 * PG + 1] != priv_byte(1 * PG + 1))
        return fail("fork isolation: parent sees the child's private write");
    if (s[3 * PG] != 'c')
        return fail("shared coherence: parent misses the child's shared write");
    p[1 * PG + 2] = 'P';                 /* after the reap: the old shadow is ours alone */
    if (p[2 * PG + 1] != 'Q' || p[1 * PG + 2] != 'P' || p[1 * PG] != 'X')
        return fail("parent's own writes after fork");
    printf("fork=ok\n");

    /* 5. write back and unmap */
    if (msync((void *)s, FILE_LEN, MS_SYNC) != 0)
        return fail("msync");
    if (munmap((void *)s, FILE_LEN) != 0)
        return fail("munmap shared");
    if (munmap((void *)p, FILE_LEN) != 0)
        return fail("munmap private");
    close(fdp);
    close(fds);
    printf("done=ok\n");
    return 0;
}

static int run_anon(const char *count)
{
    char *end;
    unsigned long n = strtoul(count, &end, 10);
    if (*end || n == 0)
        return fail("--anon needs a page count > 0");
    size_t len = n * PG;
    volatile uint8_t *a = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (a == MAP_FAILED)
        return fail("mmap anonymous");
    for (size_t i = 0; i < n; i++)
        if (a[i * PG] != 0)
            return fail("anonymous page not zero");
    for (size_t i = 0; i < n; i++)
        *(volatile uint64_t *)(a + i * PG) = i;
    for (size_t i = 0; i < n; i++)
        if (*(volatile uint64_t *)(a + i * PG) != i)
            return fail("anonymous page index read back");
    printf("anon=ok\n");
    return 0;
}

static int run_wait_fault(const char *path)
{
    int fd = open_or_fail(path, O_RDONLY);
    if (fd < 0)
        return 1;
    volatile uint8_t *p = mmap(NULL, PG, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED)
        return fail("mmap");
    printf("waiting\n");
    fflush(stdout);
    sleep(1);
    printf("byte=%u\n", p[0]);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--anon") == 0)
        return run_anon(argv[2]);
    if (argc == 3 && strcmp(argv[1], "--wait-fault") == 0)
        return run_wait_fault(argv[2]);
    if (argc == 3 && argv[1][0] != '-')
        return run_files(argv[1], argv[2]);
    fprintf(stderr, "usage: mmapcheck PRIVFILE SHAREDFILE | --anon N | --wait-fault FILE\n");
    return 2;
}
