/* The malloc family: big blocks are lab anonymous memory. */
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

/* ---------- the malloc family: big blocks are lab anonymous memory ---------- */

/* glibc's own allocator, exported for exactly this kind of wrapper. */
extern void *__libc_malloc(size_t);
extern void __libc_free(void *);
extern void *__libc_calloc(size_t, size_t);
extern void *__libc_realloc(void *, size_t);
extern void *__libc_memalign(size_t, size_t);

size_t g_heap_min;      /* heap blocks this big are lab memory; 0: none (set before g_on) */
static int g_heap_on;          /* lab heap blocks may exist: free/realloc look for the header */
static size_t (*g_real_usable)(void *);

#define LAB_HEAP_MIN_DEFAULT ((size_t)1 << 20)
/* The top bits are set, so magic ^ p (p < 2^56) can never equal a glibc chunk's size field,
 * which is what sits at p - 8 of a glibc pointer. */
#define LAB_HEAP_MAGIC 0xa7b3c1d5e9f2468bULL

/* Just before the pointer a lab block returns; check (magic ^ pointer) is at p - 8. A glibc
 * pointer always has its readable chunk header there, so free can test any pointer. */
struct lab_blk {
    uint64_t base;   /* the mapping (the pointer is further in when over-aligned) */
    uint64_t maplen; /* page multiple */
    uint64_t size;   /* what the program asked for (realloc copies this much) */
    uint64_t check;
};

void heap_init(void)
{
    g_real_usable = (size_t(*)(void *))dlsym(RTLD_NEXT, "malloc_usable_size");
    size_t min = LAB_HEAP_MIN_DEFAULT;
    const char *v = getenv("LAB_HEAP_MIN");
    if (v && *v) {
        char *end;
        unsigned long long n = strtoull(v, &end, 0);
        unsigned long long mul = 1;
        switch (*end) {
        case 'k': case 'K': mul = 1ULL << 10; end++; break;
        case 'm': case 'M': mul = 1ULL << 20; end++; break;
        case 'g': case 'G': mul = 1ULL << 30; end++; break;
        }
        if (end == v || *end || (n && mul > ~0ULL / n))
            dbg("LAB_HEAP_MIN '%s' not understood: using %zu", v, min);
        else
            min = (size_t)(n * mul);
    }
    g_heap_min = min;
    g_heap_on = min != 0;
}

static int heap_route(size_t n) { return g_on && g_heap_min && n >= g_heap_min; }

static struct lab_blk *blk_of(void *p)
{
    if (!p || !g_heap_on)
        return NULL;
    struct lab_blk *b = (struct lab_blk *)p - 1;
    uint64_t c;
    memcpy(&c, &b->check, sizeof c);
    return c == (LAB_HEAP_MAGIC ^ (uint64_t)(uintptr_t)p) ? b : NULL;
}

/* A block of size bytes at alignment align (a power of two, >= 16), mapped the way a
 * program's anonymous mmap is: registered with the uffd and announced with LAB_MAP. */
static void *heap_alloc(size_t size, size_t align)
{
    size_t hdr = sizeof(struct lab_blk);
    size_t extra = hdr + (align > 16 ? align : 0);
    if (size > SIZE_MAX - extra - g_page) {
        errno = ENOMEM;
        return NULL;
    }
    size_t maplen = page_up(size + extra);
    void *m = lab_mmap(NULL, maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) {
        errno = ENOMEM;
        return NULL;
    }
    /* Fresh anonymous memory is zero: calloc needs nothing more, and only the header page is touched. */
    uintptr_t p = ((uintptr_t)m + hdr + align - 1) & ~(uintptr_t)(align - 1);
    struct lab_blk *b = (struct lab_blk *)p - 1;
    b->base = (uintptr_t)m;
    b->maplen = maplen;
    b->size = size;
    b->check = LAB_HEAP_MAGIC ^ (uint64_t)p;
    return (void *)p;
}

static void heap_free(struct lab_blk *b)
{
    int saved = errno;
    void *base = (void *)(uintptr_t)b->base;
    size_t len = (size_t)b->maplen;
    b->check = 0; /* a stale pointer must not pass for a block */
    lab_munmap(base, len); /* the daemon hears LAB_UNMAP */
    errno = saved;
}

static size_t libc_usable(void *p)
{
    if (!g_real_usable)
        g_real_usable = (size_t(*)(void *))dlsym(RTLD_NEXT, "malloc_usable_size");
    return g_real_usable ? g_real_usable(p) : 0;
}

static void *lab_malloc(size_t n) { return heap_route(n) ? heap_alloc(n, 16) : __libc_malloc(n); }

static void lab_free(void *p)
{
    struct lab_blk *b = blk_of(p);
    if (b)
        heap_free(b);
    else
        __libc_free(p);
}

static void *lab_realloc(void *p, size_t n)
{
    if (!p)
        return lab_malloc(n);
    if (n == 0) { /* glibc frees and returns NULL */
        lab_free(p);
        return NULL;
    }
    struct lab_blk *b = blk_of(p);
    if (b) {
        if (n <= b->base + b->maplen - (uintptr_t)p) {
            b->size = n;
            return p;
        }
        void *q = lab_malloc(n);
        if (!q) {
            errno = ENOMEM;
            return NULL;
        }
        memcpy(q, p, b->size < n ? (size_t)b->size : n);
        heap_free(b);
        return q;
    }
    if (heap_route(n)) {
        void *q = heap_alloc(n, 16);
        if (!q)
            return NULL;
        size_t old = libc_usable(p);
        memcpy(q, p, old < n ? old : n);
        __libc_free(p);
        return q;
    }
    return __libc_realloc(p, n);
}

/* memalign's rules: alignment below 16 is malloc's, others round up to a power of two. */
static void *lab_memalign(size_t align, size_t n)
{
    if (!heap_route(n))
        return __libc_memalign(align, n);
    if (align > SIZE_MAX / 2 + 1) {
        errno = EINVAL;
        return NULL;
    }
    size_t a = 16;
    while (a < align)
        a <<= 1;
    return heap_alloc(n, a);
}

LAB_EXPORT void *malloc(size_t n) { return lab_malloc(n); }

LAB_EXPORT void free(void *p) { lab_free(p); }

LAB_EXPORT void *calloc(size_t n, size_t m)
{
    size_t t;
    if (__builtin_mul_overflow(n, m, &t)) {
        errno = ENOMEM;
        return NULL;
    }
    if (heap_route(t))
        return heap_alloc(t, 16); /* already zero: a memset would fault every page in */
    return __libc_calloc(n, m);
}

LAB_EXPORT void *realloc(void *p, size_t n) { return lab_realloc(p, n); }

/* Another allocator preloaded before the shim (`lab run --heap lab`: jemalloc) wins the malloc
 * family, and its own mmaps bind to the shim's. The shim's two calls that allocator may lack
 * (reallocarray, pvalloc) must then use the winner's realloc and memalign: a glibc block freed
 * by the winner would corrupt its heap. Resolved on first use, as either may run before the
 * shim's constructor. */
static void *(*g_win_realloc)(void *, size_t);
static void *(*g_win_memalign)(size_t, size_t);

static void resolve_winner(void)
{
    if (__atomic_load_n(&g_win_realloc, __ATOMIC_ACQUIRE))
        return;
    Dl_info self, win;
    void *r = dlsym(RTLD_DEFAULT, "realloc"), *m = dlsym(RTLD_DEFAULT, "memalign");
    int foreign = r && m && dladdr((void *)resolve_winner, &self) && dladdr(r, &win) && win.dli_fbase != self.dli_fbase;
    g_win_memalign = foreign ? (void *(*)(size_t, size_t))m : lab_memalign;
    __atomic_store_n(&g_win_realloc, foreign ? (void *(*)(void *, size_t))r : lab_realloc, __ATOMIC_RELEASE);
}

LAB_EXPORT void *reallocarray(void *p, size_t n, size_t m)
{
    size_t t;
    if (__builtin_mul_overflow(n, m, &t)) {
        errno = ENOMEM;
        return NULL;
    }
    resolve_winner();
    return g_win_realloc(p, t);
}

LAB_EXPORT void *memalign(size_t align, size_t n) { return lab_memalign(align, n); }

LAB_EXPORT void *aligned_alloc(size_t align, size_t n)
{
    if (align == 0 || (align & (align - 1))) { /* glibc 2.38's rule */
        errno = EINVAL;
        return NULL;
    }
    return lab_memalign(align, n);
}

LAB_EXPORT int posix_memalign(void **out, size_t align, size_t n)
{
    if (align == 0 || (align & (align - 1)) || align % sizeof(void *))
        return EINVAL;
    int saved = errno;
    void *p = lab_memalign(align, n);
    int e = errno;
    errno = saved;
    if (!p)
        return e == EINVAL ? EINVAL : ENOMEM;
    *out = p;
    return 0;
}

LAB_EXPORT void *valloc(size_t n) { return lab_memalign(g_page, n); }

LAB_EXPORT void *pvalloc(size_t n)
{
    size_t page = (size_t)sysconf(_SC_PAGESIZE);
    if (n > SIZE_MAX - page) {
        errno = ENOMEM;
        return NULL;
    }
    resolve_winner();
    return g_win_memalign(page, (n + page - 1) & ~(page - 1));
}

LAB_EXPORT size_t malloc_usable_size(void *p)
{
    if (!p)
        return 0;
    struct lab_blk *b = blk_of(p);
    return b ? (size_t)b->size : libc_usable(p);
}

/* ---------- brk/sbrk callers: the data segment a program grows itself is lab memory ---------- */

/* A program calling brk or sbrk gets its break in one lab anonymous reservation (LAB_BRK_MAX,
 * MAP_NORESERVE), made on first use, so sbrk(0) before that is the kernel's break. glibc's own
 * malloc reaches the kernel's brk through an internal call, not through these, and so does
 * nothing else in libc. Memory above a lowered break is dropped (MADV_DONTNEED: it reads zero
 * when the break rises again, as Linux gives) but stays mapped, where Linux would unmap it. */
#define LAB_BRK_MAX ((size_t)1 << 30)
static uintptr_t g_brk_base, g_brk_cur;

static int brk_reserve(void)
{
    if (__atomic_load_n(&g_brk_base, __ATOMIC_ACQUIRE))
        return 0;
    void *m = lab_mmap(NULL, LAB_BRK_MAX, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED)
        return -1;
    uintptr_t none = 0;
    if (!__atomic_compare_exchange_n(&g_brk_base, &none, (uintptr_t)m, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) {
        lab_munmap(m, LAB_BRK_MAX); /* another thread reserved first */
        return 0;
    }
    __atomic_store_n(&g_brk_cur, (uintptr_t)m, __ATOMIC_RELEASE);
    return 0;
}

/* Move the break to `want`; 0, or -1 with ENOMEM. Not thread-safe, as glibc's sbrk is not. */
static int brk_move(uintptr_t want)
{
    uintptr_t base = g_brk_base, cur = g_brk_cur;
    if (want < base || want > base + LAB_BRK_MAX) {
        errno = ENOMEM;
        return -1;
    }
    uintptr_t keep = (want + 4095) & ~(uintptr_t)4095, had = (cur + 4095) & ~(uintptr_t)4095;
    if (keep < had)
        madvise((void *)keep, had - keep, MADV_DONTNEED);
    g_brk_cur = want;
    return 0;
}

LAB_EXPORT void *sbrk(intptr_t inc)
{
    if (!g_on) {
        static void *(*real)(intptr_t);
        if (!real)
            real = (void *(*)(intptr_t))dlsym(RTLD_NEXT, "sbrk");
        return real(inc);
    }
    if (brk_reserve() != 0) {
        errno = ENOMEM;
        return (void *)-1;
    }
    uintptr_t old = g_brk_cur;
    if ((inc > 0 && (uintptr_t)inc > UINTPTR_MAX - old) || brk_move(old + (uintptr_t)inc) != 0) {
        errno = ENOMEM;
        return (void *)-1;
    }
    return (void *)old;
}

LAB_EXPORT int brk(void *addr)
{
    if (!g_on) {
        static int (*real)(void *);
        if (!real)
            real = (int (*)(void *))dlsym(RTLD_NEXT, "brk");
        return real(addr);
    }
    if (brk_reserve() != 0) {
        errno = ENOMEM;
        return -1;
    }
    return brk_move((uintptr_t)addr);
}
