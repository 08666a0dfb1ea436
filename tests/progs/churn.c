/* churn: a short-lived program for the daemon-growth test and the soak. It maps the lab
 * file FILE shared (writes a word per page) and private (copy-on-write), maps MIB MiB of
 * anonymous memory and fills it, forks a child that checks and rewrites half of it, waits,
 * and checks everything again. With "hang", it then prints "ready" and sleeps (for SIGKILL).
 *
 *   churn FILE MIB [hang]     prints "ok <sum>"; exit 1 on a wrong byte
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#define PAGE 4096
#define FILE_PAGES 64

static int fail(const char *what)
{
    perror(what);
    return 1;
}

int main(int argc, char **argv)
{
    if (argc < 3 || atol(argv[2]) <= 0) {
        fprintf(stderr, "usage: churn FILE MIB [hang]\n");
        return 2;
    }
    size_t pages = (size_t)atol(argv[2]) * 256;
    int fd = open(argv[1], O_RDWR | O_CREAT, 0644);
    if (fd < 0 || ftruncate(fd, FILE_PAGES * PAGE) != 0) return fail("open");
    uint64_t *shared = mmap(NULL, FILE_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    uint64_t *priv = mmap(NULL, FILE_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    uint64_t *anon = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED || priv == MAP_FAILED || anon == MAP_FAILED) return fail("mmap");
    for (size_t i = 0; i < FILE_PAGES; i++) shared[i * PAGE / 8] = i + 1;
    for (size_t i = 0; i < FILE_PAGES; i++) {
        if (priv[i * PAGE / 8] != i + 1) { fprintf(stderr, "private page %zu: %llu\n", i, (unsigned long long)priv[i * PAGE / 8]); return 1; }
        priv[i * PAGE / 8 + 1] = ~i;   /* copy-on-write */
    }
    for (size_t i = 0; i < pages; i++) anon[i * PAGE / 8] = i * 7 + 3;
    pid_t child = fork();
    if (child < 0) return fail("fork");
    if (child == 0) {
        for (size_t i = 0; i < pages; i++)
            if (anon[i * PAGE / 8] != i * 7 + 3) _exit(3);
        for (size_t i = 0; i < pages; i += 2) anon[i * PAGE / 8] = 0;
        _exit(0);
    }
    int st;
    if (waitpid(child, &st, 0) != child || !WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "child: status %x\n", st);
        return 1;
    }
    uint64_t sum = 0;
    for (size_t i = 0; i < pages; i++) {
        if (anon[i * PAGE / 8] != i * 7 + 3) { fprintf(stderr, "anon page %zu changed after fork\n", i); return 1; }
        sum += anon[i * PAGE / 8];
    }
    for (size_t i = 0; i < FILE_PAGES; i++) sum += shared[i * PAGE / 8] + priv[i * PAGE / 8];
    if (argc > 3 && strcmp(argv[3], "hang") == 0) {
        printf("ready\n");
        fflush(stdout);
        for (;;) pause();
    }
    printf("ok %llu\n", (unsigned long long)sum);
    return 0;
}
