/* inoreuse: mappings of files whose inode numbers are reused, checked byte for byte.
 *
 *   inoreuse loop DIR shared|private N
 *       N times: write a 1 MiB file DIR/f (every byte of round r is 'A'+r%26, the first 8 bytes of
 *       each page its round and page), map it, check one byte per page, unmap, close, unlink. A file
 *       system hands the freed inode number to the next file, so rounds after the first meet a number
 *       the lab saw before.
 *   inoreuse rename DIR shared|private
 *       Maps DIR/old, renames a new file over it, checks the old mapping still shows the old bytes and
 *       a mapping of the name shows the new ones; then churns files (reusing the freed numbers) and
 *       checks both mappings again.
 *
 *   inoreuse touch FILE
 *       Maps FILE private and prints its first byte (a file that cannot be read gives SIGBUS).
 *
 * Prints "ino N" per file and "ok" at the end; any wrong byte or failed call: a message, exit 1. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define SIZE (1 << 20)
#define PAGE 4096

static void die(const char *what)
{
    fprintf(stderr, "inoreuse: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* The byte at off of a file made in round r. */
static unsigned char expect(int r, size_t off)
{
    size_t in = off % PAGE;
    if (in < 8) {
        uint64_t tag = ((uint64_t)r << 32) | (off / PAGE);
        return (unsigned char)(tag >> (8 * in));
    }
    return (unsigned char)('A' + r % 26);
}

static void make(const char *path, int r)
{
    static unsigned char buf[SIZE];
    for (size_t i = 0; i < SIZE; i++)
        buf[i] = expect(r, i);
    int fd = open(path, O_CREAT | O_TRUNC | O_WRONLY, 0644);
    if (fd < 0)
        die(path);
    for (size_t done = 0; done < SIZE;) {
        ssize_t n = write(fd, buf + done, SIZE - done);
        if (n <= 0)
            die("write");
        done += (size_t)n;
    }
    if (close(fd) != 0)
        die("close");
}

static unsigned char *map(const char *path, int shared, int *fdp)
{
    int fd = open(path, shared ? O_RDWR : O_RDONLY);
    if (fd < 0)
        die(path);
    struct stat st;
    if (fstat(fd, &st) != 0)
        die("fstat");
    printf("ino %llu\n", (unsigned long long)st.st_ino);
    void *p = mmap(NULL, SIZE, PROT_READ, shared ? MAP_SHARED : MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED)
        die("mmap");
    *fdp = fd;
    return p;
}

/* Every page's tag and one byte past it. */
static void check(const unsigned char *p, int r, const char *what)
{
    for (size_t off = 0; off < SIZE; off += PAGE) {
        for (size_t i = 0; i < 9; i++)
            if (p[off + i] != expect(r, off + i)) {
                fprintf(stderr, "inoreuse: %s: byte %zu is %#x, want %#x (round %d)\n", what, off + i,
                        p[off + i], expect(r, off + i), r);
                exit(1);
            }
    }
}

int main(int argc, char **argv)
{
    if (argc == 3 && !strcmp(argv[1], "touch")) {
        int fd;
        unsigned char *p = map(argv[2], 0, &fd);
        printf("byte %d\n", p[0]);
        return 0;
    }
    if (argc < 4 || (strcmp(argv[3], "shared") && strcmp(argv[3], "private"))) {
        fprintf(stderr, "usage: inoreuse loop DIR shared|private N | rename DIR shared|private | touch FILE\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *dir = argv[2];
    int shared = !strcmp(argv[3], "shared");
    char f[4096], old[4096], tmp[4096];
    snprintf(f, sizeof f, "%s/f", dir);
    snprintf(old, sizeof old, "%s/old", dir);
    snprintf(tmp, sizeof tmp, "%s/new.tmp", dir);

    if (!strcmp(argv[1], "loop") && argc == 5) {
        int n = atoi(argv[4]);
        for (int r = 0; r < n; r++) {
            make(f, r);
            int fd;
            unsigned char *p = map(f, shared, &fd);
            check(p, r, "loop");
            if (munmap(p, SIZE) != 0)
                die("munmap");
            close(fd);
            if (unlink(f) != 0)
                die("unlink");
        }
    } else if (!strcmp(argv[1], "rename") && argc == 4) {
        make(old, 1);
        int ofd;
        unsigned char *o = map(old, shared, &ofd);
        check(o, 1, "old mapping");
        close(ofd); /* the mapping alone keeps the old file */
        make(tmp, 2);
        if (rename(tmp, old) != 0)
            die("rename");
        int nfd;
        unsigned char *nw = map(old, shared, &nfd);
        check(nw, 2, "new file under the old name");
        close(nfd);
        check(o, 1, "old mapping after the rename");
        /* Files made and deleted now may take the old file's number if anything let it go. */
        for (int r = 3; r < 7; r++) {
            make(f, r);
            int fd;
            unsigned char *p = map(f, shared, &fd);
            check(p, r, "churn");
            munmap(p, SIZE);
            close(fd);
            unlink(f);
        }
        check(o, 1, "old mapping after churn");
        check(nw, 2, "new mapping after churn");
        munmap(o, SIZE);
        munmap(nw, SIZE);
        unlink(old);
    } else {
        fprintf(stderr, "inoreuse: bad arguments\n");
        return 2;
    }
    printf("ok\n");
    return 0;
}
