/* procmem: an ordinary program that reads and writes its own memory through
 * /proc/self/mem (as debuggers and the kernel's mm selftests do: FOLL_FORCE, so a write
 * to a read-only private mapping goes through and the mapping stays read-only), and
 * through process_vm_writev/readv. It knows nothing of the lab.
 *
 *   procmem FILE
 *
 * FILE is created with 4 pages, byte i = (i * 7 + 3) & 0xff. Each case maps 4 pages
 * (pages 0 and 2 read first, so present; page 1 read through /proc/self/mem first; page 3
 * untouched), writes 3 bytes through
 * /proc/self/mem at offset 100 of each page (pwrite; write after lseek for page 3), reads
 * them back through /proc/self/mem (pread) and directly, then checks every byte of the 4
 * pages against what must be there, and that a direct write to a read-only mapping still
 * raises SIGSEGV. Cases: anonymous private PROT_READ, anonymous private PROT_READ|WRITE,
 * MAP_PRIVATE of FILE PROT_READ, the same PROT_READ|WRITE, MAP_SHARED of FILE PROT_READ
 * (FOLL_FORCE writes are refused: EIO) and PROT_READ|WRITE (the bytes reach FILE), then
 * process_vm_writev/readv on an anonymous PROT_READ|WRITE mapping.
 * One line per case ("anon-ro: ok ..."), exit 0 when all are as expected.
 *
 *   procmem --pages direct|mem-rw|mem-ro   (see pages_mode)
 */
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/uio.h>
#include <unistd.h>

#define PAGES 4
static long g_pg;
static int g_mem;
static sigjmp_buf g_jb;
static int g_bad;

static unsigned char file_byte(long i) { return (unsigned char)((i * 7 + 3) & 0xff); }

static void on_segv(int s)
{
    (void)s;
    siglongjmp(g_jb, 1);
}

/* Does a direct write of one byte at p raise SIGSEGV? (The byte is unchanged either way.) */
static int write_faults(volatile unsigned char *p)
{
    struct sigaction sa = {0}, old;
    sa.sa_handler = on_segv;
    sigaction(SIGSEGV, &sa, &old);
    int faulted = 1;
    if (sigsetjmp(g_jb, 1) == 0) {
        *p = *p;
        faulted = 0;
    }
    sigaction(SIGSEGV, &old, NULL);
    return faulted;
}

static const unsigned char g_data[3] = {0xde, 0xad, 0x42};

/* One case: returns a short result word for the line. */
static void run_case(const char *name, unsigned char *m, int from_file, int ro, int expect_refused)
{
    char res[256] = "";
    /* pages 0 and 2 present before the writes */
    volatile unsigned char sink = m[0] + m[2 * g_pg];
    (void)sink;
    int refused = 0, io_ok = 1;
    /* a read of a page never touched (page 1: it is present, read-only, for the write below) */
    unsigned char first[3];
    uintptr_t r1 = (uintptr_t)m + (uintptr_t)g_pg + 200;
    if (pread(g_mem, first, 3, (off_t)r1) != 3 || memcmp(first, m + g_pg + 200, 3) != 0 ||
        first[0] != (from_file ? file_byte(g_pg + 200) : 0)) {
        io_ok = 0;
        snprintf(res, sizeof res, " first-read:%s", strerror(errno));
    }
    for (int p = 0; p < PAGES; p++) {
        uintptr_t a = (uintptr_t)m + (uintptr_t)p * (uintptr_t)g_pg + 100;
        ssize_t r;
        if (p == 3) {
            r = lseek(g_mem, (off_t)a, SEEK_SET) == (off_t)a ? write(g_mem, g_data, 3) : -1;
        } else {
            r = pwrite(g_mem, g_data, 3, (off_t)a);
        }
        if (r != 3) {
            if (r < 0 && errno == EIO)
                refused++;
            else
                io_ok = 0;
            snprintf(res + strlen(res), sizeof res - strlen(res), " page%d-write:%s", p, r < 0 ? strerror(errno) : "short");
        }
        unsigned char back[3] = {0, 0, 0};
        r = pread(g_mem, back, 3, (off_t)a);
        int want_new = !expect_refused;
        if (r != 3 || memcmp(back, want_new ? g_data : (const unsigned char *)m + (a - (uintptr_t)m), 3) != 0) {
            io_ok = 0;
            snprintf(res + strlen(res), sizeof res - strlen(res), " page%d-read:%s", p, r < 0 ? strerror(errno) : "differs");
        }
    }
    int content_ok = 1;
    for (long i = 0; i < PAGES * g_pg; i++) {
        long off = i % g_pg;
        unsigned char want = from_file ? file_byte(i) : 0;
        if (!expect_refused && off >= 100 && off < 103)
            want = g_data[off - 100];
        if (m[i] != want) {
            content_ok = 0;
            snprintf(res + strlen(res), sizeof res - strlen(res), " byte%ld:%#x!=%#x", i, m[i], want);
            break;
        }
    }
    int segv_ok = ro ? write_faults(m + g_pg) : !write_faults(m + g_pg);
    int ok = content_ok && segv_ok && io_ok && (!expect_refused || refused == PAGES);
    printf("%s: %s%s%s%s\n", name, ok ? "ok" : "BAD", expect_refused ? (refused == PAGES ? " (EIO)" : " (not refused)") : "",
           segv_ok ? "" : (ro ? " (writable!)" : " (not writable!)"), ok ? "" : res);
    g_bad |= !ok;
}

/* --pages HOW: write one byte to each of 8 fresh anonymous pages, directly ("direct") or
 * through /proc/self/mem into a PROT_READ|PROT_WRITE ("mem-rw") or PROT_READ ("mem-ro")
 * mapping; prints "ok" if every page then reads 1. For comparing the lab's counters. */
static int pages_mode(const char *how)
{
    int ro = strcmp(how, "mem-ro") == 0, mem = strncmp(how, "mem-", 4) == 0;
    unsigned char *m = mmap(NULL, 8 * (size_t)g_pg, ro ? PROT_READ : PROT_READ | PROT_WRITE,
                            MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED)
        return 1;
    for (int i = 0; i < 8; i++) {
        unsigned char one = 1;
        if (!mem)
            m[i * g_pg] = 1;
        else if (pwrite(g_mem, &one, 1, (off_t)(uintptr_t)(m + i * g_pg)) != 1) {
            printf("page %d: %s\n", i, strerror(errno));
            return 1;
        }
    }
    for (int i = 0; i < 8; i++)
        if (m[i * g_pg] != 1)
            return 1;
    printf("ok\n");
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: procmem FILE | procmem --pages direct|mem-rw|mem-ro\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    g_pg = sysconf(_SC_PAGESIZE);
    g_mem = open("/proc/self/mem", O_RDWR);
    if (g_mem < 0) {
        perror("/proc/self/mem");
        return 1;
    }
    if (strcmp(argv[1], "--pages") == 0 && argc > 2)
        return pages_mode(argv[2]);
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        perror(argv[1]);
        return 1;
    }
    unsigned char *buf = malloc((size_t)(PAGES * g_pg));
    for (long i = 0; i < PAGES * g_pg; i++)
        buf[i] = file_byte(i);
    if (write(fd, buf, (size_t)(PAGES * g_pg)) != PAGES * g_pg || fsync(fd) != 0) {
        perror("write");
        return 1;
    }
    size_t len = (size_t)(PAGES * g_pg);
    struct {
        const char *name;
        int prot, flags, file;
    } cases[] = {
        {"anon-ro", PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, 0},
        {"anon-rw", PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, 0},
        {"file-private-ro", PROT_READ, MAP_PRIVATE, 1},
        {"file-private-rw", PROT_READ | PROT_WRITE, MAP_PRIVATE, 1},
        {"file-shared-ro", PROT_READ, MAP_SHARED, 1},
        {"file-shared-rw", PROT_READ | PROT_WRITE, MAP_SHARED, 1},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        unsigned char *m = mmap(NULL, len, cases[c].prot, cases[c].flags, cases[c].file ? fd : -1, 0);
        if (m == MAP_FAILED) {
            perror("mmap");
            return 1;
        }
        int shared_ro = (cases[c].flags & MAP_SHARED) && !(cases[c].prot & PROT_WRITE);
        run_case(cases[c].name, m, cases[c].file, !(cases[c].prot & PROT_WRITE), shared_ro);
        if (cases[c].flags & MAP_SHARED) {
            /* what the shared writes left in the file */
            msync(m, len, MS_SYNC);
            unsigned char got[3];
            if (pread(fd, got, 3, 2 * g_pg + 100) != 3) {
                perror("pread");
                return 1;
            }
            int want_new = cases[c].prot & PROT_WRITE;
            int same = memcmp(got, want_new ? g_data : buf + 2 * g_pg + 100, 3) == 0;
            printf("%s: file %s\n", cases[c].name, same ? (want_new ? "has the writes" : "unchanged") : "WRONG");
            g_bad |= !same;
            /* put the file back for the next case */
            if (pwrite(fd, buf, len, 0) != (ssize_t)len) {
                perror("pwrite");
                return 1;
            }
        }
        munmap(m, len);
    }

    /* process_vm_writev / readv into our own lab memory: faults that may wait for the lab */
    unsigned char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    volatile unsigned char sink = m[0];
    (void)sink;
    int ok = 1;
    for (int p = 0; p < PAGES; p++) {
        struct iovec lo = {(void *)g_data, 3}, re = {m + p * g_pg + 100, 3};
        if (process_vm_writev(getpid(), &lo, 1, &re, 1, 0) != 3)
            ok = 0;
        unsigned char back[3];
        struct iovec lb = {back, 3};
        if (process_vm_readv(getpid(), &lb, 1, &re, 1, 0) != 3 || memcmp(back, g_data, 3) != 0)
            ok = 0;
    }
    for (long i = 0; i < PAGES * g_pg; i++) {
        long off = i % g_pg;
        if (m[i] != (off >= 100 && off < 103 ? g_data[off - 100] : 0))
            ok = 0;
    }
    printf("process_vm: %s\n", ok ? "ok" : "BAD");
    g_bad |= !ok;
    munmap(m, len);
    close(fd);
    return g_bad;
}
