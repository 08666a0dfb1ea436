/* sharedwp FILE MODE PAGE: warm FILE (map it, read one byte of every page, unmap: the lab's
 * page cache then holds all of it, in this run, so no idle trim can drop it), then map FILE
 * MAP_SHARED read-write (every page of it) again and touch it:
 *   none       touch nothing (the baseline: the program's own faults)
 *   read       read one byte of page PAGE
 *   readwrite  read one byte of page PAGE, then write 'W' at offset 7 of it
 *   readnext   read one byte of page PAGE, then write 'N' at offset 7 of page PAGE+1
 * Prints the byte read (decimal) or "none", then unmaps (the write reaches the file).
 * sharedwp FILE hold 0: warm FILE, say "warm", then wait for EOF on stdin (a run that keeps the daemon
 * busy, so its idle trim does not drop the page cache between two measured runs). */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 4) {
        fprintf(stderr, "usage: sharedwp FILE none|read|readwrite|readnext PAGE\n");
        return 2;
    }
    int fd = open(argv[1], O_RDWR);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        perror(argv[1]);
        return 1;
    }
    long page = atol(argv[3]);
    const char *mode = argv[2];
    volatile unsigned char *w = mmap(NULL, st.st_size, PROT_READ, MAP_SHARED, fd, 0);
    if (w == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    unsigned sum = 0;
    for (off_t i = 0; i < st.st_size; i += 4096)
        sum += w[i];
    if (munmap((void *)w, st.st_size) != 0) {
        perror("munmap");
        return 1;
    }
    if (strcmp(mode, "hold") == 0) {
        printf("warm %u\n", sum);
        fflush(stdout);
        char b[64];
        while (read(0, b, sizeof b) > 0)
            ;
        return 0;
    }
    volatile unsigned char *p = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    int got = -1;
    if (strcmp(mode, "none") != 0)
        got = p[page * 4096];
    if (strcmp(mode, "readwrite") == 0)
        p[page * 4096 + 7] = 'W';
    else if (strcmp(mode, "readnext") == 0)
        p[(page + 1) * 4096 + 7] = 'N';
    if (munmap((void *)p, st.st_size) != 0) {
        perror("munmap");
        return 1;
    }
    close(fd);
    if (got < 0)
        printf("none %u\n", sum);
    else
        printf("%d %u\n", got, sum);
    return 0;
}
