/* swapcheck: an ordinary program (plain libc, knows nothing of the lab) for testing the
 * daemon's pageout. It maps PAGES anonymous private pages (lab memory under the shim),
 * fills every word of page i with a pattern derived from i (word 0 is i itself), and
 * checks the pages come back intact after the lab has evicted and swapped them in.
 *
 *   swapcheck PAGES check   fill, print "filled", wait for one line on stdin (the test
 *                           corrupts a swap slot meanwhile), then read every page under a
 *                           SIGBUS handler: "sigbus I" for a page that raised SIGBUS, "bad I"
 *                           for a page with a wrong word, then
 *                           "checked N sigbus S bad B" (N = pages examined); exit 1 if B > 0
 *   swapcheck PAGES loop    fill, print "filled", then forever: verify each page in order
 *                           and rewrite it with the pattern xor a mask of the pass number;
 *                           "pass K" after each pass; "bad I" and exit 1 on a mismatch
 *                           (for killing the daemon mid-paging)
 *   swapcheck PAGES touch   fill, verify once, print "ok"
 */
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static size_t g_words; /* 64-bit words per page */

/* Word j of page i in generation gen (the fill is generation 0). */
static uint64_t pattern(uint64_t i, uint64_t j, uint64_t gen)
{
    uint64_t w = j == 0 ? i : (i * 0x9E3779B97F4A7C15ULL) ^ j;
    return w ^ (gen * 0xD6E8FEB86659FD93ULL);
}

static void fill_page(uint64_t *p, uint64_t i, uint64_t gen)
{
    for (size_t j = 0; j < g_words; j++)
        p[j] = pattern(i, j, gen);
}

static int page_ok(const uint64_t *p, uint64_t i, uint64_t gen)
{
    for (size_t j = 0; j < g_words; j++)
        if (p[j] != pattern(i, j, gen))
            return 0;
    return 1;
}

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
}

static sigjmp_buf g_jb;

static void on_sigbus(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)si;
    (void)uc;
    siglongjmp(g_jb, 1);
}

/* Kept out of registers: they are read after a siglongjmp. */
static volatile size_t g_i, g_sigbus, g_bad;

static int check(uint8_t *mem, size_t pages, size_t ps)
{
    char line[256];
    if (!fgets(line, sizeof line, stdin))
        line[0] = 0; /* EOF: check anyway */

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_sigbus;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGBUS, &sa, NULL) != 0) {
        perror("sigaction");
        return 2;
    }
    for (g_i = 0; g_i < pages; g_i++) {
        if (sigsetjmp(g_jb, 1) != 0) {
            g_sigbus++;
            say("sigbus %llu\n", (unsigned long long)g_i);
            continue;
        }
        if (!page_ok((const uint64_t *)(mem + g_i * ps), g_i, 0)) {
            g_bad++;
            say("bad %llu\n", (unsigned long long)g_i);
        }
    }
    printf("checked %llu sigbus %llu bad %llu\n", (unsigned long long)pages, (unsigned long long)g_sigbus,
           (unsigned long long)g_bad);
    fflush(stdout);
    return g_bad == 0 ? 0 : 1;
}

static int loop(uint8_t *mem, size_t pages, size_t ps)
{
    for (uint64_t pass = 1;; pass++) {
        for (size_t i = 0; i < pages; i++) {
            uint64_t *p = (uint64_t *)(mem + i * ps);
            if (!page_ok(p, i, pass - 1)) {
                say("bad %llu\n", (unsigned long long)i);
                return 1;
            }
            fill_page(p, i, pass);
        }
        say("pass %llu\n", (unsigned long long)pass);
    }
}

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: swapcheck PAGES check|loop|touch\n");
        return 2;
    }
    char *end;
    unsigned long long n = strtoull(argv[1], &end, 10);
    const char *mode = argv[2];
    if (*end || n == 0 || (strcmp(mode, "check") && strcmp(mode, "loop") && strcmp(mode, "touch"))) {
        fprintf(stderr, "usage: swapcheck PAGES check|loop|touch\n");
        return 2;
    }
    size_t ps = (size_t)sysconf(_SC_PAGESIZE);
    size_t pages = (size_t)n;
    if (pages > SIZE_MAX / ps) {
        fprintf(stderr, "swapcheck: too many pages\n");
        return 2;
    }
    g_words = ps / sizeof(uint64_t);
    uint8_t *mem = mmap(NULL, pages * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 2;
    }
    for (size_t i = 0; i < pages; i++)
        fill_page((uint64_t *)(mem + i * ps), i, 0);

    if (strcmp(mode, "touch") == 0) {
        for (size_t i = 0; i < pages; i++)
            if (!page_ok((const uint64_t *)(mem + i * ps), i, 0)) {
                say("bad %llu\n", (unsigned long long)i);
                return 1;
            }
        say("ok\n");
        return 0;
    }
    say("filled\n");
    if (strcmp(mode, "check") == 0)
        return check(mem, pages, ps);
    return loop(mem, pages, ps);
}
