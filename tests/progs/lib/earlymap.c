/* libearlymap.so: a library whose constructor maps and touches EARLYMAP_PAGES (default 256)
 * private anonymous pages, as an allocator woken by another library's constructor does. Preloaded
 * after the shim (LD_PRELOAD, which `lab run` appends to its own), it is initialised before the
 * shim's constructor: the shim must connect at that first mmap so the pages are lab memory. */
#include <stdlib.h>
#include <sys/mman.h>

__attribute__((constructor)) static void earlymap(void)
{
    const char *v = getenv("EARLYMAP_PAGES");
    long pages = v ? atol(v) : 256;
    char *p = mmap(NULL, pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        abort();
    madvise(p, pages * 4096, MADV_NOHUGEPAGE);
    for (long i = 0; i < pages; i++)
        p[i * 4096] = 1;
}
