/* A statically linked program (built with -static): the lab's shim cannot enter it.
 *
 *   statichello [MS]   prints "static hello", then stays MS milliseconds (default 0), the
 *                      way a real program would be busy for a while, and exits 0.
 */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int main(int argc, char **argv)
{
    long ms = argc > 1 ? atol(argv[1]) : 0;
    printf("static hello\n");
    fflush(stdout);
    struct timespec d = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&d, NULL);
    return 0;
}
