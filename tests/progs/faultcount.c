/* faultcount PAGES: map PAGES private anonymous pages (lab memory under the shim), write one
 * byte to each, and print what the kernel counted for this process:
 *   "touch_faults F self_faults S"
 * F: minor + major faults over the touch loop alone; S: this process's faults so far, just
 * before exit (what `lab run` sees for it, but for the exit path's own few).
 * faultcount PAGES quiet: the same, printing nothing (for `lab compare`, which wants the same
 * output under every design). */
#include <string.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/resource.h>

static long faults(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return ru.ru_minflt + ru.ru_majflt;
}

int main(int argc, char **argv)
{
    long pages = argc > 1 ? atol(argv[1]) : 1024;
    long before = faults();
    char *p = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); return 1; }
    for (long i = 0; i < pages; i++) p[i * 4096] = 1;
    long touch = faults() - before;
    if (argc > 2 && strcmp(argv[2], "quiet") == 0) return 0;
    printf("touch_faults %ld self_faults %ld\n", touch, faults());
    return 0;
}
