/* The control connection to the daemon: framed messages, one request and its reply, the watcher. */
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

/* ---------- the control connection ---------- */

/* The connection I/O runs on helper threads too: raw system calls only (labsys.h). */
int conn_open(int *out)
{
    int s = (int)lab_sys3(SYS_socket, AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (s < 0)
        return s;
    struct sockaddr_un sa;
    memset(&sa, 0, sizeof sa);
    sa.sun_family = AF_UNIX;
    memcpy(sa.sun_path, g_ctl_path, strlen(g_ctl_path));
    long r;
    while ((r = lab_sys3(SYS_connect, s, &sa, sizeof sa)) < 0) {
        if (r == -EINTR)
            continue;
        lab_sys1(SYS_close, s);
        return (int)r;
    }
    *out = s;
    return 0;
}

/* Header and payload in as many sendmsg calls as it takes; the fd rides on the first. */
int send_msg(int s, const struct lab_hdr *h, const void *pl, size_t len, int fd)
{
    const char *part[2] = {(const char *)h, (const char *)pl};
    size_t plen[2] = {sizeof *h, len};
    size_t total = sizeof *h + len, done = 0;
    int fd_sent = fd < 0;
    while (done < total) {
        struct iovec v[2];
        int nv = 0;
        size_t skip = done;
        for (int i = 0; i < 2; i++) {
            if (skip >= plen[i]) {
                skip -= plen[i];
                continue;
            }
            v[nv].iov_base = (void *)(part[i] + skip);
            v[nv].iov_len = plen[i] - skip;
            skip = 0;
            nv++;
        }
        struct msghdr mh;
        memset(&mh, 0, sizeof mh);
        mh.msg_iov = v;
        mh.msg_iovlen = (size_t)nv;
        union {
            char buf[CMSG_SPACE(sizeof(int))];
            struct cmsghdr align;
        } cm;
        if (!fd_sent) {
            memset(&cm, 0, sizeof cm);
            mh.msg_control = cm.buf;
            mh.msg_controllen = sizeof cm.buf;
            struct cmsghdr *c = CMSG_FIRSTHDR(&mh);
            c->cmsg_level = SOL_SOCKET;
            c->cmsg_type = SCM_RIGHTS;
            c->cmsg_len = CMSG_LEN(sizeof(int));
            memcpy(CMSG_DATA(c), &fd, sizeof(int));
        }
        long n = lab_sys3(SYS_sendmsg, s, &mh, MSG_NOSIGNAL);
        if (n < 0) {
            if (n == -EINTR)
                continue;
            return (int)n;
        }
        fd_sent = 1;
        done += (size_t)n;
    }
    return 0;
}

/* Fill every iovec (one recvmsg when the data is there); any SCM_RIGHTS fd that comes
 * along goes to *fd (extras are closed). */
static int recv_iov(int s, struct iovec *v, int nv, int *fd)
{
    while (nv > 0) {
        if (v->iov_len == 0) {
            v++;
            nv--;
            continue;
        }
        union {
            char buf[CMSG_SPACE(sizeof(int) * 4)];
            struct cmsghdr align;
        } cm;
        struct msghdr mh;
        memset(&mh, 0, sizeof mh);
        mh.msg_iov = v;
        mh.msg_iovlen = (size_t)nv;
        mh.msg_control = cm.buf;
        mh.msg_controllen = sizeof cm.buf;
        long n = lab_sys3(SYS_recvmsg, s, &mh, MSG_CMSG_CLOEXEC);
        if (n < 0) {
            if (n == -EINTR)
                continue;
            return (int)n;
        }
        if (n == 0)
            return -ECONNRESET;
        for (struct cmsghdr *c = CMSG_FIRSTHDR(&mh); c; c = CMSG_NXTHDR(&mh, c)) {
            if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
                continue;
            size_t nfd = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
            for (size_t i = 0; i < nfd; i++) {
                int f;
                memcpy(&f, CMSG_DATA(c) + i * sizeof(int), sizeof f);
                if (fd && *fd < 0)
                    *fd = f;
                else
                    lab_sys1(SYS_close, f);
            }
        }
        for (size_t got = (size_t)n; got > 0 && nv > 0;) {
            size_t k = got < v->iov_len ? got : v->iov_len;
            v->iov_base = (char *)v->iov_base + k;
            v->iov_len -= k;
            got -= k;
            if (v->iov_len == 0) {
                v++;
                nv--;
            }
        }
    }
    return 0;
}

int recv_exact(int s, void *buf, size_t len, int *fd)
{
    struct iovec v = {buf, len};
    return recv_iov(s, &v, 1, fd);
}

/* The next message's header, left in the socket: a reader killed after this has taken nothing. */
static int peek_hdr(int s, struct lab_hdr *h)
{
    for (int tries = 0;; tries++) {
        long n = lab_sys6(SYS_recvfrom, s, h, sizeof *h, MSG_PEEK, 0, 0);
        if (n == -EINTR)
            continue;
        if (n < 0)
            return (int)n;
        if (n == 0)
            return -ECONNRESET;
        if (n == (long)sizeof *h)
            return 0;
        /* the daemon sends a message with one sendmsg: a part header is only a moment's state */
        struct timespec d = {0, 100000};
        lab_sys2(SYS_nanosleep, &d, NULL);
        if (tries > 100000)
            return -EPROTO;
    }
}

/* Read and drop one whole message (header h already peeked) that nobody waits for. */
static int skip_msg(int s, const struct lab_hdr *h)
{
    char sink[256];
    int fd = -1, r = 0;
    for (uint64_t left = sizeof *h + (uint64_t)h->len; r == 0 && left > 0;) {
        size_t k = left < sizeof sink ? (size_t)left : sizeof sink;
        r = recv_exact(s, sink, k, &fd);
        left -= k;
    }
    if (fd >= 0)
        lab_sys1(SYS_close, fd);
    return r;
}

/* One request, one reply. Returns 0 (reply status in *status) or -errno if the
 * connection failed. The reply payload is copied up to repcap bytes (rest zeroed).
 *
 * A process that shares our memory (a clone(CLONE_VM) child: vfork, posix_spawn,
 * stress-ng) uses this connection too, and may be killed between its request and its
 * reply; lab_lock then passes the lock on. Its reply is still to come, before ours (the
 * daemon answers a connection's requests in order): replies whose seq is not ours are
 * read and dropped. A reply is read with one recvmsg after a peek at its header, so a
 * reader killed mid-way leaves whole messages behind. */
int lab_call(uint32_t type, const void *pl, uint32_t len, int send_fd, void *rep, uint32_t repcap,
                    int *rfd, int32_t *status)
{
    int fd = -1, r;
    struct lab_hdr h = {type, len, 0, 0}, rh;
    if (rep)
        memset(rep, 0, repcap);
    lab_lock(&g_conn_lock);
    h.seq = ++g_seq;
    r = send_msg(g_sock, &h, pl, len, send_fd);
    while (r == 0) {
        r = peek_hdr(g_sock, &rh);
        if (r == 0 && rh.len > LAB_MAX_PAYLOAD)
            r = -EPROTO;
        if (r != 0 || rh.seq == h.seq)
            break;
        dbg("dropped a reply (type %#x, seq %u) its requester did not wait for", rh.type, rh.seq);
        r = skip_msg(g_sock, &rh);
    }
    if (r == 0 && rh.type != (type | LAB_REPLY))
        r = -EPROTO;
    if (r == 0) {
        uint32_t take = rh.len < repcap ? rh.len : repcap;
        char sink[256];
        uint32_t more = rh.len - take < sizeof sink ? rh.len - take : (uint32_t)sizeof sink;
        struct iovec v[3] = {{&rh, sizeof rh}, {rep, take}, {sink, more}};
        r = recv_iov(g_sock, v, 3, &fd);
        for (uint32_t left = rh.len - take - more; r == 0 && left > 0;) {
            uint32_t k = left < sizeof sink ? left : (uint32_t)sizeof sink;
            r = recv_exact(g_sock, sink, k, &fd);
            left -= k;
        }
    }
    lab_unlock(&g_conn_lock);
    if (r != 0 || !rfd) {
        if (fd >= 0)
            close(fd);
        fd = -1;
    }
    if (rfd)
        *rfd = fd;
    if (r == 0)
        *status = rh.status;
    return r;
}

/* A request after start-up: a broken connection means the daemon is gone. */
int32_t lab_req(uint32_t type, const void *pl, uint32_t len, void *rep, uint32_t repcap, int *rfd)
{
    int saved = errno;
    int32_t status = 0;
    if (lab_call(type, pl, len, -1, rep, repcap, rfd, &status) != 0)
        die_gone();
    errno = saved;
    return status;
}

/* The helper threads (watcher, agent) are raw threads (labsys.h): glibc does not know
 * them, so its set*id broadcast leaves them out and a single-threaded program stays
 * single-threaded for glibc. They keep the credentials they started with; they need no
 * others. Everything they call must leave TLS (errno) alone. */
static void watcher(void *arg)
{
    int fd = (int)(intptr_t)arg;
    for (;;) {
        /* Only hang-up: replies (POLLIN) belong to the request path. */
        struct pollfd p = {fd, POLLRDHUP, 0};
        long r = lab_sys3(SYS_poll, &p, 1, -1);
        if (r < 0) {
            if (r == -EINTR)
                continue;
            return;
        }
        if (p.revents & POLLNVAL) {
            /* the program closed our socket (e.g. closefrom before exec): nothing left to watch */
            dbg("control socket closed by the program; watcher stops");
            return;
        }
        if (p.revents & (POLLRDHUP | POLLHUP | POLLERR))
            die_gone();
    }
}

/* A helper thread with a small stack and every signal blocked (signals meant for the
 * program must not land on it). */
int start_thread(void (*fn)(void *), void *arg) { return lab_thread_start(fn, arg); }

int start_watcher(void) { return start_thread(watcher, (void *)(intptr_t)g_sock); }
