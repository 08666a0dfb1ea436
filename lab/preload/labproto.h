/* The control protocol between the shim (liblabpreload.so) and the lab daemon.
 *
 * Transport: a Unix stream socket (SOCK_STREAM|SOCK_CLOEXEC). The path is in the
 * environment variable LAB_CONTROL, set by `lab run`; `MOUNT/.lab/control` is a
 * symlink to the same socket. Every message is a fixed header followed by `len`
 * payload bytes. File descriptors travel as SCM_RIGHTS on the header's sendmsg.
 * All integers are little-endian host order (x86-64 only).
 *
 * Every request from the shim gets exactly one reply with the same `seq`, in request
 * order. A reply carries `status` = 0 or a positive errno. The shim serialises requests
 * on its connection with a lock, so there is at most one request in flight per
 * connection; but a clone(CLONE_VM) child shares the connection and may be killed before
 * it reads its reply, so the shim reads and drops replies whose seq is not the one it
 * waits for. The daemon sends each message with one sendmsg.
 *
 * The C# mirror is lab/Linux/Control.cs ([StructLayout] structs read and written with
 * MemoryMarshal): change both together. The sizes below are asserted here, and
 * tests/Lab.Tests/ControlProtocolTests.cs compares every struct's size and every field's
 * offset with the mirror (tests/progs/protolayout.c prints them from this header).
 *
 * HELLO and CHILD_HELLO carry LAB_PROTO_VERSION: a daemon refuses any other version with
 * status EPROTONOSUPPORT (and logs it once), and the shim then stops the program with one
 * line on stderr, so a stale liblabpreload.so never runs half-understood.
 */
#ifndef LABPROTO_H
#define LABPROTO_H
#include <stdint.h>

/* Tests build a shim with another version (-DLAB_PROTO_VERSION=0) to check the refusal. */
#ifndef LAB_PROTO_VERSION
#define LAB_PROTO_VERSION 1
#endif
#define LAB_MAX_PAYLOAD 65536

enum lab_msg_type {
    /* shim -> daemon */
    LAB_HELLO = 1,        /* lab_hello; SCM_RIGHTS: the process's uffd (fresh exec) */
    LAB_CHILD_HELLO = 2,  /* lab_hello (flags has LAB_HELLO_FORK_CHILD); no fd.
                             Reply carries SCM_RIGHTS: the child's own uffd, which the
                             daemon took from the parent's UFFD_EVENT_FORK. */
    LAB_MAP = 3,          /* lab_map: a range the shim mapped and registered */
    LAB_OPEN_SHARED = 4,  /* lab_open_shared; reply lab_open_shared_reply + SCM_RIGHTS memfd */
    LAB_UNMAP = 5,        /* lab_range: after a real munmap of a lab range; the daemon
                             drops the entries and writes shared dirty pages back */
    LAB_MSYNC = 6,        /* lab_range: write back shared pages in the range */
    LAB_PROTECT = 7,      /* lab_range (prot set): after a real mprotect */
    LAB_FORK_PREPARE = 8, /* empty: write-protect private lab pages (pmap_protect of vmspace_fork) */
    LAB_FORK_DONE = 9,    /* lab_fork_done: the real fork returned in the parent */

    LAB_REAPED = 11,      /* lab_reaped: wait*() reaped this child; the daemon tears its space
                             down now (BSD frees a vmspace at exit, before wait returns) */
    LAB_REMAP = 12,       /* lab_remap: after a real mremap of a lab range (growth extends
                             the mapping; a move itself arrives as UFFD_EVENT_REMAP) */

    /* lab CLI -> daemon (no uffd; the `lab` command itself) */
    LAB_STAT = 10,        /* lab_stat; reply payload: text lines "name value\n" (up to 64 KiB) */
    LAB_DROP_CACHES = 13, /* empty; drop the clean pages of the lab's page cache (files nobody maps
                             writable shared); reply payload: u64 pages dropped. `lab compare`
                             starts every design from a cold cache this way. */

    LAB_AGENT_HELLO = 14, /* lab_agent_hello, on a SECOND connection opened by the shim's agent
                             thread after its HELLO/CHILD_HELLO was answered. After the reply
                             the direction turns: on this connection the daemon sends requests
                             (LAB_EVICT) and the agent answers them. */
    LAB_SET_LIMIT = 16,   /* lab CLI -> daemon: lab_set_limit; the resident limit of one run */
    LAB_RELEASE = 17,     /* lab_range: the program is registering this lab range (anonymous
                             memory) with a userfaultfd of its own. The daemon brings back the
                             range's paged-out pages, forgets the range, unregisters it from
                             the lab's uffd (pages already in the process stay) and replies;
                             the shim has already forgotten it. Counted in uffd_released_*. */
    LAB_ADVISE = 20,      /* lab_range (flags = MADV_NORMAL, MADV_RANDOM, MADV_SEQUENTIAL, MADV_WILLNEED,
                             MADV_WIPEONFORK, MADV_KEEPONFORK, MADV_DONTFORK or MADV_DOFORK): after
                             a real madvise of a lab range: the access pattern that sizes the
                             design's fault window, or what a fork child inherits (wipe-on-fork
                             only on anonymous ranges). DONTNEED (and FREE, which the shim makes
                             DONTNEED on lab memory) arrives as UFFD_EVENT_REMOVE instead. */
    LAB_REMAP_PREPARE = 21, /* lab_remap (flags = MREMAP_DONTUNMAP): BEFORE a real mremap with
                             MREMAP_DONTUNMAP, so that its UFFD_EVENT_REMAP leaves the old range
                             mapped (empty) in the model at once; LAB_REMAP ends the expectation */
    LAB_WIRE = 18,        /* lab_range (flags: LAB_WIRE_ON, with LAB_WIRE_FAULT, or 0): the range
                             is being mlock'd (sent before the real call) or was munlock'd (after
                             it): the daemon marks its entries wired or not, so the pageout never
                             picks a locked page; with LAB_WIRE_FAULT (a lock that populates) it
                             also faults every page in as the design wires (vm_map_wire), so the
                             kernel's populate then finds the pages present */

    LAB_OUTSIDE = 30,     /* lab_outside: just before this image ends (exit, _exit, exec), its
                             resident pages outside lab memory, by kind (coverage.c reads
                             /proc/self/smaps). The daemon keeps the process's last report and
                             adds it to its run's outside_*_pages rows. Processes killed by a
                             signal, and vfork children, send none. */

    /* daemon -> shim agent (on the agent connection) */
    LAB_EVICT = 15,       /* n x lab_span: take each span that is still lab memory out of the
                             process, in order (UFFDIO_MOVE to the scratch, then one madvise of
                             the scratch; MADV_DONTNEED in place for what will not move). Reply:
                             status 0 or an errno (EAGAIN: the shim was busy, try later); payload
                             u32 spans done (those before it are gone, the others untouched or
                             partly done), u32 count, then count u64s: pages of the done spans
                             it left in place, the low bits saying why (1: pinned by the kernel
                             for I/O, 2: mlock'd). The agent never touches lab memory itself, and its
                             madvise blocks until the daemon's uffd reader has read the
                             UFFD_EVENT_REMOVE it raises, so the daemon must answer faults meanwhile. */

    /* daemon -> shim: replies only (type = request type | LAB_REPLY) */
    LAB_REPLY = 0x8000,
};

struct lab_hdr {
    uint32_t type;
    uint32_t len;     /* payload bytes after this header */
    uint32_t seq;     /* echoed in the reply */
    int32_t status;   /* replies: 0 or errno */
};

#define LAB_HELLO_FORK_CHILD 1u

struct lab_hello {
    uint32_t version;   /* LAB_PROTO_VERSION */
    uint32_t flags;     /* LAB_HELLO_* */
    int32_t pid;
    int32_t ppid;
    char vm[16];        /* resolver wanted for this process ("" = the mount's default) */
    char comm[32];      /* argv[0] basename, for display */
    uint64_t run_id;    /* LAB_RUN_ID from the environment (set by `lab run`), 0 if unset */
};

struct lab_hello_reply {
    uint64_t features;  /* uffd features the daemon enabled with UFFDIO_API */
};

enum lab_map_kind {
    LAB_MAP_ANON = 1,          /* private anonymous: registered MISSING|WP */
    LAB_MAP_FILE_PRIVATE = 2,  /* private file: anonymous memory registered MISSING|WP */
    LAB_MAP_FILE_SHARED = 3,   /* shared file: the object's memfd mapped MAP_SHARED, registered MISSING */
};

struct lab_map {
    uint64_t addr;
    uint64_t len;       /* page multiple */
    int32_t prot;       /* PROT_* */
    int32_t flags;      /* the program's MAP_* flags */
    int32_t kind;       /* lab_map_kind */
    int32_t pad;
    uint64_t ino;       /* file kinds: st_ino of the file on the lab mount */
    uint64_t offset;    /* file kinds: file offset of addr */
};

struct lab_open_shared {
    uint64_t ino;       /* st_ino on the lab mount */
};

struct lab_open_shared_reply {
    uint64_t size;      /* current file size */
};

struct lab_range {
    uint64_t addr;
    uint64_t len;
    int32_t prot;       /* LAB_PROTECT only */
    int32_t flags;      /* LAB_MSYNC: MS_* */
};

struct lab_reaped {
    int32_t pid;
    int32_t pad;
};

struct lab_remap {
    uint64_t old_addr;
    uint64_t old_len;
    uint64_t new_addr;
    uint64_t new_len;
    int32_t flags;      /* the program's MREMAP_* flags */
    int32_t pad;
};

struct lab_stat {
    uint64_t run_id;    /* 0: the whole mount; else only the processes of that `lab run` */
};

struct lab_agent_hello {
    int32_t pid;        /* getpid() of the process whose agent this is */
    int32_t pad;
    uint64_t scratch;   /* the agent's scratch area (pages moved out land there, then it is
                           zapped: its REMOVE events are the agent's), 0 if none */
    uint64_t scratch_len;
};

#define LAB_WIRE_ON 1
#define LAB_WIRE_FAULT 2

struct lab_span {
    uint64_t addr;      /* page aligned */
    uint64_t len;       /* page multiple */
};
#define LAB_EVICT_MAX_SPANS (LAB_MAX_PAYLOAD / 16)

struct lab_set_limit {
    uint64_t run_id;    /* the run (LAB_RUN_ID) */
    uint64_t bytes;     /* resident limit for all its processes together; 0 = none */
};

struct lab_fork_done {
    int32_t child_pid;  /* <0: fork failed, the daemon undoes nothing (protection stays) */
    int32_t pad;
};

#define LAB_OUTSIDE_EXIT 1u  /* lab_outside.flags: sent at exit */
#define LAB_OUTSIDE_EXEC 2u  /* sent before an exec (replaced by the exit report if the exec fails) */

struct lab_outside {
    uint64_t file_pages;   /* file mappings: program text, libraries, other files (Rss) */
    uint64_t stack_pages;  /* the main thread's stack, [stack] (private pages) */
    uint64_t heap_pages;   /* the brk heap, [heap] (private pages) */
    uint64_t anon_pages;   /* other anonymous memory: thread stacks, the shim's, memory mapped
                              before the shim connected, memfd/SysV shared memory (private pages) */
    uint64_t other_pages;  /* the kernel's special mappings: vDSO, vvar, vsyscall (Rss) */
    uint32_t flags;        /* LAB_OUTSIDE_EXIT or LAB_OUTSIDE_EXEC */
    uint32_t pad;
};

/* The wire layout (x86-64, natural alignment): a change here is a protocol change. */
_Static_assert(sizeof(struct lab_hdr) == 16, "lab_hdr");
_Static_assert(sizeof(struct lab_hello) == 72, "lab_hello");
_Static_assert(sizeof(struct lab_hello_reply) == 8, "lab_hello_reply");
_Static_assert(sizeof(struct lab_map) == 48, "lab_map");
_Static_assert(sizeof(struct lab_open_shared) == 8, "lab_open_shared");
_Static_assert(sizeof(struct lab_open_shared_reply) == 8, "lab_open_shared_reply");
_Static_assert(sizeof(struct lab_range) == 24, "lab_range");
_Static_assert(sizeof(struct lab_reaped) == 8, "lab_reaped");
_Static_assert(sizeof(struct lab_remap) == 40, "lab_remap");
_Static_assert(sizeof(struct lab_stat) == 8, "lab_stat");
_Static_assert(sizeof(struct lab_agent_hello) == 24, "lab_agent_hello");
_Static_assert(sizeof(struct lab_span) == 16, "lab_span");
_Static_assert(sizeof(struct lab_set_limit) == 16, "lab_set_limit");
_Static_assert(sizeof(struct lab_fork_done) == 8, "lab_fork_done");
_Static_assert(sizeof(struct lab_outside) == 48, "lab_outside");

#endif
