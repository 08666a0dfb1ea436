/* Processes that share the parent's memory (and with it the shim's state) under `lab run`.
 *
 *   clonevm clone FILE ROUNDS   a clone(CLONE_VM) child maps, touches and unmaps lab memory
 *                               (anonymous, and FILE privately) in a loop; the parent kills it
 *                               with SIGKILL at a random moment, then maps lab memory itself and
 *                               checks every byte. Each round kills one child.
 *   clonevm vfork ROUNDS        a vfork child maps and touches lab memory, then execs
 *                               `clonevm exec-child`; the parent checks its own lab memory after.
 *   clonevm spawn ROUNDS        posix_spawn of `clonevm exec-child` (glibc spawns with CLONE_VM|CLONE_VFORK).
 *   clonevm exec-child          maps lab memory, checks it, exits 0.
 *
 * FILE is on the lab mount and holds at least 64 KiB of bytes i*7+3 (mod 256).
 * Prints "ok MODE ROUNDS" and exits 0, or one line naming what went wrong and exits 1.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (64 * 1024)

extern char **environ;
static const char *g_file;
static const char *g_self;
static volatile int g_child_rounds; /* the child counts its loops here (shared memory) */

static void fail(const char *what)
{
    fprintf(stderr, "clonevm: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* Map anonymous lab memory, check it is zero, write it, read it back, unmap it. */
static int anon_round(void)
{
    unsigned char *p = mmap(NULL, CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED)
        return -1;
    for (size_t i = 0; i < CHUNK; i += 4096)
        if (p[i] != 0)
            return -2;
    for (size_t i = 0; i < CHUNK; i += 4096)
        p[i] = (unsigned char)(i >> 12);
    for (size_t i = 0; i < CHUNK; i += 4096)
        if (p[i] != (unsigned char)(i >> 12))
            return -3;
    return munmap(p, CHUNK) == 0 ? 0 : -4;
}

/* Map the lab file privately and check its bytes. */
static int file_round(int fd)
{
    unsigned char *p = mmap(NULL, CHUNK, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED)
        return -1;
    for (size_t i = 0; i < CHUNK; i += 1021)
        if (p[i] != (unsigned char)(i * 7 + 3))
            return -2;
    return munmap(p, CHUNK) == 0 ? 0 : -4;
}

static int child_main(void *arg)
{
    int fd = (int)(intptr_t)arg;
    for (;;) {
        if (anon_round() != 0 || file_round(fd) != 0)
            _exit(3); /* the parent sees a child that was not killed */
        g_child_rounds++;
    }
}

static void check_parent(int fd, const char *when)
{
    int a = anon_round(), f = file_round(fd);
    if (a != 0 || f != 0) {
        fprintf(stderr, "clonevm: parent's lab memory wrong %s (anon %d, file %d)\n", when, a, f);
        exit(1);
    }
}

static void mode_clone(int rounds)
{
    int fd = open(g_file, O_RDONLY);
    if (fd < 0)
        fail(g_file);
    size_t stack_len = 256 * 1024;
    char *stack = mmap(NULL, stack_len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_STACK, -1, 0);
    if (stack == MAP_FAILED)
        fail("stack");
    srand(12345);
    for (int r = 0; r < rounds; r++) {
        g_child_rounds = 0;
        pid_t pid = clone(child_main, stack + stack_len, CLONE_VM | SIGCHLD, (void *)(intptr_t)fd);
        if (pid < 0)
            fail("clone");
        /* Let the child get going, then kill it somewhere in its loop: between a request and
         * its reply, with the connection lock held, or not. */
        while (g_child_rounds == 0) {
            int st;
            if (waitpid(pid, &st, WNOHANG) == pid) {
                fprintf(stderr, "clonevm: child ended by itself (status %#x) in round %d\n", st, r);
                exit(1);
            }
            sched_yield();
        }
        struct timespec d = {0, (rand() % 500) * 1000L};
        nanosleep(&d, NULL);
        kill(pid, SIGKILL);
        int st;
        if (waitpid(pid, &st, 0) != pid)
            fail("waitpid");
        if (!WIFSIGNALED(st) || WTERMSIG(st) != SIGKILL) {
            fprintf(stderr, "clonevm: child ended with status %#x, not by SIGKILL, in round %d\n", st, r);
            exit(1);
        }
        check_parent(fd, "after a killed CLONE_VM child");
    }
    close(fd);
}

/* Its own frame: nothing of the caller's lives across vfork. */
static __attribute__((noinline)) pid_t vfork_child(void)
{
    pid_t pid = vfork();
    if (pid == 0) {
        /* Not async-signal-safe strictly, but programs do it: lab memory in a vfork child. */
        if (anon_round() != 0)
            _exit(4);
        execl(g_self, g_self, "exec-child", (char *)NULL);
        _exit(127);
    }
    return pid;
}

/* The child must exit 0, and the parent's lab memory must read right afterwards. */
static void wait_child_then_check(pid_t pid, const char *how, int r)
{
    int st;
    if (waitpid(pid, &st, 0) != pid)
        fail("waitpid");
    if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "clonevm: %s child status %#x in round %d\n", how, st, r);
        exit(1);
    }
    if (anon_round() != 0) {
        fprintf(stderr, "clonevm: parent's lab memory wrong after %s round %d\n", how, r);
        exit(1);
    }
}

static void mode_vfork(int rounds)
{
    for (int r = 0; r < rounds; r++) {
        pid_t pid = vfork_child();
        if (pid < 0)
            fail("vfork");
        wait_child_then_check(pid, "vfork", r);
    }
}

static void mode_spawn(int rounds)
{
    for (int r = 0; r < rounds; r++) {
        pid_t pid;
        char *argv[] = {(char *)g_self, "exec-child", NULL};
        int e = posix_spawn(&pid, g_self, NULL, NULL, argv, environ);
        if (e != 0) {
            errno = e;
            fail("posix_spawn");
        }
        wait_child_then_check(pid, "spawn", r);
    }
}

int main(int argc, char **argv)
{
    g_self = argv[0];
    if (argc == 2 && strcmp(argv[1], "exec-child") == 0)
        return anon_round() == 0 ? 0 : 5;
    if (argc == 4 && strcmp(argv[1], "clone") == 0) {
        g_file = argv[2];
        mode_clone(atoi(argv[3]));
    } else if (argc == 3 && strcmp(argv[1], "vfork") == 0) {
        mode_vfork(atoi(argv[2]));
    } else if (argc == 3 && strcmp(argv[1], "spawn") == 0) {
        mode_spawn(atoi(argv[2]));
    } else {
        fprintf(stderr, "usage: clonevm clone FILE ROUNDS | vfork ROUNDS | spawn ROUNDS | exec-child\n");
        return 2;
    }
    printf("ok %s %s\n", argv[1], argv[argc - 1]);
    return 0;
}
