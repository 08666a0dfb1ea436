/* uffd-floor: the smallest correct userfaultfd handler, in C, in the same process:
 * the floor any lab daemon is measured against. The file is read into memory first
 * (untimed); each read fault is then served with one UFFDIO_COPY of its 4 KiB page.
 *
 *   uffd-floor FILE
 *   prints: pages=<n> us_per_page=<x.xxx> sum=<sum of the bytes read>
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static int uffd, stopfd;
static uint8_t *src, *dst;
static size_t pg, len;

static double now_us(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec * 1e6 + (double)t.tv_nsec / 1e3;
}

static void die(const char *what)
{
    fprintf(stderr, "uffd-floor: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void *handler(void *arg)
{
    (void)arg;
    for (;;) {
        struct pollfd p[2] = {{uffd, POLLIN, 0}, {stopfd, POLLIN, 0}};
        if (poll(p, 2, -1) < 0) {
            if (errno == EINTR)
                continue;
            die("poll");
        }
        if (p[1].revents)
            return NULL;
        struct uffd_msg m;
        ssize_t n = read(uffd, &m, sizeof m);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n != (ssize_t)sizeof m)
            die("read uffd");
        if (m.event != UFFD_EVENT_PAGEFAULT)
            continue;
        uint64_t at = m.arg.pagefault.address & ~(uint64_t)(pg - 1);
        struct uffdio_copy c = {
            .dst = at,
            .src = (uint64_t)(uintptr_t)(src + (at - (uint64_t)(uintptr_t)dst)),
            .len = pg,
            .mode = 0,
        };
        /* EEXIST: raced with nothing here, but harmless; the waiter is woken either way */
        if (ioctl(uffd, UFFDIO_COPY, &c) < 0 && errno != EEXIST)
            die("UFFDIO_COPY");
    }
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: uffd-floor FILE\n");
        return 2;
    }
    pg = (size_t)sysconf(_SC_PAGESIZE);
    int fd = open(argv[1], O_RDONLY);
    if (fd < 0)
        die("open");
    struct stat st;
    if (fstat(fd, &st) < 0)
        die("fstat");
    size_t size = (size_t)st.st_size;
    size_t pages = (size + pg - 1) / pg;
    len = pages * pg;
    if (pages == 0) {
        printf("pages=0 us_per_page=0.000 sum=0\n");
        return 0;
    }

    /* whole pages, zero past EOF, so every copy reads inside the buffer */
    src = aligned_alloc(pg, len);
    if (!src)
        die("malloc");
    memset(src + size, 0, len - size);
    for (size_t got = 0; got < size;) {
        ssize_t n = read(fd, src + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            die("read file");
        got += (size_t)n;
    }
    close(fd);

    dst = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (dst == MAP_FAILED)
        die("mmap");
    uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (uffd < 0)
        die("userfaultfd");
    struct uffdio_api api = {.api = UFFD_API, .features = 0};
    if (ioctl(uffd, UFFDIO_API, &api) < 0)
        die("UFFDIO_API");
    struct uffdio_register reg = {
        .range = {.start = (uint64_t)(uintptr_t)dst, .len = len},
        .mode = UFFDIO_REGISTER_MODE_MISSING,
    };
    if (ioctl(uffd, UFFDIO_REGISTER, &reg) < 0)
        die("UFFDIO_REGISTER");
    stopfd = eventfd(0, EFD_CLOEXEC);
    if (stopfd < 0)
        die("eventfd");
    pthread_t t;
    if (pthread_create(&t, NULL, handler, NULL) != 0)
        die("pthread_create");

    volatile uint8_t *p = dst;
    uint64_t sum = 0;
    double t0 = now_us();
    for (size_t i = 0; i < pages; i++)
        sum += p[i * pg];
    double us = now_us() - t0;

    uint64_t one = 1;
    if (write(stopfd, &one, sizeof one) != (ssize_t)sizeof one)
        die("eventfd write");
    pthread_join(t, NULL);
    printf("pages=%zu us_per_page=%.3f sum=%llu\n", pages, us / (double)pages, (unsigned long long)sum);
    return 0;
}
