/* outsidepages STACK ANON [exec|kill]: memory outside the lab, for the shim's exit report
 * (lab/preload/coverage.c, the outside_*_pages rows of `lab run --stats`).
 * Writes one byte to each of STACK pages of the main thread's stack (below this frame, in a
 * function that returns, so the exit path reuses pages already resident) and to each of ANON
 * pages of a private anonymous MAP_STACK mapping, which the shim leaves outside lab memory
 * (no THP: MADV_NOHUGEPAGE). Then:
 *   exec: execv's itself with STACK ANON (the first image reports before the exec, the second
 *         at exit: two reports);
 *   kill: raises SIGKILL (no report);
 *   else: returns from main (the report comes from the shim's destructor).
 * Prints nothing: the run's counters are the output. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

__attribute__((noinline)) static void touch_stack(long pages)
{
    char buf[pages > 0 ? pages * 4096 : 1];
    /* From the top down: the stack grows one page at a time below its lowest one. */
    for (long i = pages - 1; i >= 0; i--)
        buf[i * 4096] = 1;
    __asm__ volatile("" : : "r"(buf) : "memory");   /* the writes happen */
}

int main(int argc, char **argv)
{
    if (argc < 3) { fprintf(stderr, "usage: outsidepages STACK ANON [exec|kill]\n"); return 2; }
    long stack = atol(argv[1]), anon = atol(argv[2]);
    const char *then = argc > 3 ? argv[3] : "";
    touch_stack(stack);
    if (anon > 0) {
        char *p = mmap(NULL, anon * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
        if (p == MAP_FAILED) { perror("mmap"); return 1; }
        madvise(p, anon * 4096, MADV_NOHUGEPAGE);
        for (long i = 0; i < anon; i++) p[i * 4096] = 1;
    }
    if (strcmp(then, "exec") == 0) {
        char *args[] = {argv[0], argv[1], argv[2], NULL};
        execv("/proc/self/exe", args);
        perror("execv");
        return 1;
    }
    if (strcmp(then, "kill") == 0) raise(SIGKILL);
    return 0;
}
