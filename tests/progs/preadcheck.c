/*
 * preadcheck FILE MIB ROUNDS: the kernel writing into lab memory. Writes MIB MiB of known bytes
 * to FILE, then ROUNDS times: scribbles over a MIB MiB buffer (malloc: lab memory under the lab),
 * reads the whole file into it with one pread (on the lab's mount: direct I/O, so the kernel pins
 * the buffer's pages and the FUSE reply lands in them while they are pinned) and checks every
 * byte. Prints "ok ROUNDS" or the first bad byte, exit 1.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static unsigned char expect(size_t i) { return (unsigned char)((i * 2654435761u) >> 13 ^ i >> 12); }

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: preadcheck FILE MIB ROUNDS\n");
        return 2;
    }
    size_t len = (size_t)strtoul(argv[2], NULL, 10) << 20;
    int rounds = atoi(argv[3]);
    unsigned char *buf = malloc(len);
    if (!buf)
        return 2;
    for (size_t i = 0; i < len; i++)
        buf[i] = expect(i);
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || pwrite(fd, buf, len, 0) != (ssize_t)len) {
        fprintf(stderr, "preadcheck: writing %s: %s\n", argv[1], strerror(errno));
        return 2;
    }
    for (int r = 0; r < rounds; r++) {
        memset(buf, 0xA0 + r, len);
        size_t got = 0;
        while (got < len) {
            ssize_t n = pread(fd, buf + got, len - got, (off_t)got);
            if (n <= 0) {
                fprintf(stderr, "preadcheck: pread: %s\n", n ? strerror(errno) : "end of file");
                return 2;
            }
            got += (size_t)n;
        }
        for (size_t i = 0; i < len; i++)
            if (buf[i] != expect(i)) {
                printf("round %d: byte %zu (page %zu) is %02x, not %02x\n", r, i, i / 4096, buf[i], expect(i));
                return 1;
            }
    }
    printf("ok %d\n", rounds);
    return 0;
}
