using System.Runtime.InteropServices;

namespace Lab.Linux;

/// <summary>
/// Every native call of the daemon's machine-dependent layer (userfaultfd, the control
/// socket, signals-free process checks). x86-64 Linux only; ioctl numbers were measured
/// on this kernel (shared/notes/LINUX-FACTS.md §0).
/// </summary>
public static unsafe partial class Native
{
    public const int EINTR = 4, EAGAIN = 11, ENOENT = 2, ESRCH = 3, EEXIST = 17, EFAULT = 14, EINVAL = 22, EBADF = 9, EPIPE = 32;
    public const int AF_UNIX = 1, SOCK_STREAM = 1, SOCK_CLOEXEC = 0x80000, SOL_SOCKET = 1, SO_PEERCRED = 17, SCM_RIGHTS = 1;
    public const int MSG_NOSIGNAL = 0x4000, MSG_CMSG_CLOEXEC = 0x40000000;
    public const short POLLIN = 0x1, POLLERR = 0x8, POLLHUP = 0x10, POLLNVAL = 0x20;
    public const int EFD_CLOEXEC = 0x80000, EFD_NONBLOCK = 0x800;

    // userfaultfd ioctls (x86-64).
    public const ulong UFFDIO_API = 0xc018aa3f, UFFDIO_WAKE = 0x8010aa02, UFFDIO_COPY = 0xc028aa03,
        UFFDIO_ZEROPAGE = 0xc020aa04, UFFDIO_WRITEPROTECT = 0xc018aa06, UFFDIO_POISON = 0xc020aa08,
        UFFDIO_UNREGISTER = 0x8010aa01, UFFDIO_CONTINUE = 0xc020aa07;
    public const ulong UFFD_API = 0xAA;
    public const ulong UFFD_FEATURE_PAGEFAULT_FLAG_WP = 1 << 0, UFFD_FEATURE_EVENT_FORK = 1 << 1,
        UFFD_FEATURE_EVENT_REMAP = 1 << 2, UFFD_FEATURE_EVENT_REMOVE = 1 << 3, UFFD_FEATURE_MISSING_SHMEM = 1 << 5,
        UFFD_FEATURE_EVENT_UNMAP = 1 << 6, UFFD_FEATURE_THREAD_ID = 1 << 8, UFFD_FEATURE_MINOR_SHMEM = 1 << 10, UFFD_FEATURE_WP_HUGETLBFS_SHMEM = 1 << 12,
        UFFD_FEATURE_POISON = 1 << 14, UFFD_FEATURE_MOVE = 1 << 16;
    public const byte UFFD_EVENT_PAGEFAULT = 0x12, UFFD_EVENT_FORK = 0x13, UFFD_EVENT_REMAP = 0x14,
        UFFD_EVENT_REMOVE = 0x15, UFFD_EVENT_UNMAP = 0x16;
    public const ulong UFFD_PAGEFAULT_FLAG_WRITE = 1, UFFD_PAGEFAULT_FLAG_WP = 2, UFFD_PAGEFAULT_FLAG_MINOR = 4;
    public const ulong UFFDIO_COPY_MODE_DONTWAKE = 1, UFFDIO_COPY_MODE_WP = 2, UFFDIO_WRITEPROTECT_MODE_WP = 1;

    [StructLayout(LayoutKind.Sequential)]
    public struct UffdioApi { public ulong Api, Features, Ioctls; }
    [StructLayout(LayoutKind.Sequential)]
    public struct UffdioRange { public ulong Start, Len; }
    [StructLayout(LayoutKind.Sequential)]
    public struct UffdioCopy { public ulong Dst, Src, Len, Mode; public long Copy; }
    [StructLayout(LayoutKind.Sequential)]
    public struct UffdioContinue { public UffdioRange Range; public ulong Mode; public long Mapped; }
    [StructLayout(LayoutKind.Sequential)]
    public struct UffdioZeropage { public UffdioRange Range; public ulong Mode; public long Zeropage; }
    [StructLayout(LayoutKind.Sequential)]
    public struct UffdioWriteprotect { public UffdioRange Range; public ulong Mode; }
    [StructLayout(LayoutKind.Sequential)]
    public struct UffdioPoison { public UffdioRange Range; public ulong Mode; public long Updated; }

    /// <summary>struct uffd_msg: 32 bytes; the union is read by offset.</summary>
    [StructLayout(LayoutKind.Explicit, Size = 32)]
    public struct UffdMsg
    {
        [FieldOffset(0)] public byte Event;
        [FieldOffset(8)] public ulong Arg0;   // pagefault.flags | fork.ufd | remap.from | remove.start
        [FieldOffset(16)] public ulong Arg1;  // pagefault.address | remap.to | remove.end
        [FieldOffset(24)] public ulong Arg2;  // pagefault.feat.ptid | remap.len
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct PollFd { public int Fd; public short Events, Revents; }

    [StructLayout(LayoutKind.Sequential)]
    public struct Ucred { public int Pid, Uid, Gid; }

    [StructLayout(LayoutKind.Sequential)]
    public struct IoVec { public void* Base; public nuint Len; }

    [StructLayout(LayoutKind.Sequential)]
    public struct MsgHdr
    {
        public void* Name; public uint NameLen; public IoVec* Iov; public nuint IovLen;
        public void* Control; public nuint ControlLen; public int Flags;
    }

    /// <summary>Returns the C heap's free memory to the kernel (glibc).</summary>
    [LibraryImport("libc")]
    public static partial int malloc_trim(nuint pad);

    [LibraryImport("libc", SetLastError = true)]
    public static partial int ioctl(int fd, ulong request, void* arg);
    [LibraryImport("libc", SetLastError = true)]
    public static partial nint process_vm_readv(int pid, IoVec* local, nuint liovcnt, IoVec* remote, nuint riovcnt, nuint flags);
    [LibraryImport("libc", SetLastError = true)]
    public static partial nint read(int fd, void* buf, nuint count);
    [LibraryImport("libc", SetLastError = true)]
    public static partial nint write(int fd, void* buf, nuint count);
    [LibraryImport("libc", SetLastError = true)]
    public static partial int close(int fd);
    [LibraryImport("libc", SetLastError = true)]
    public static partial int poll(PollFd* fds, nuint nfds, int timeout);
    [LibraryImport("libc", SetLastError = true)]
    public static partial int eventfd(uint initval, int flags);
    [LibraryImport("libc", SetLastError = true)]
    public static partial int socket(int domain, int type, int protocol);
    [LibraryImport("libc", SetLastError = true)]
    public static partial int bind(int fd, byte* addr, uint len);
    [LibraryImport("libc", SetLastError = true)]
    public static partial int listen(int fd, int backlog);
    [LibraryImport("libc", SetLastError = true)]
    public static partial int accept4(int fd, void* addr, void* len, int flags);
    [LibraryImport("libc", SetLastError = true)]
    public static partial int connect(int fd, byte* addr, uint len);
    [LibraryImport("libc", SetLastError = true)]
    public static partial int shutdown(int fd, int how);
    [LibraryImport("libc", SetLastError = true)]
    public static partial nint sendmsg(int fd, MsgHdr* msg, int flags);
    [LibraryImport("libc", SetLastError = true)]
    public static partial nint recvmsg(int fd, MsgHdr* msg, int flags);
    [LibraryImport("libc", SetLastError = true)]
    public static partial int getsockopt(int fd, int level, int name, void* val, uint* len);
    [LibraryImport("libc", SetLastError = true)]
    public static partial int kill(int pid, int sig);
    [LibraryImport("libc")]
    public static partial uint getuid();
    [LibraryImport("libc", SetLastError = true)]
    public static partial int setsid();

    public const int RUSAGE_CHILDREN = -1;
    [StructLayout(LayoutKind.Sequential)]
    public struct Rusage
    {
        public long UtimeSec, UtimeUsec, StimeSec, StimeUsec;
        public long MaxRss, IxRss, IdRss, IsRss, MinFlt, MajFlt, NSwap, InBlock, OuBlock, MsgSnd, MsgRcv, NSignals, NVcsw, NIvcsw;
    }
    [LibraryImport("libc", SetLastError = true)]
    public static partial int getrusage(int who, Rusage* usage);

    [LibraryImport("libc", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int open(string path, int flags, int mode);
    [LibraryImport("libc", SetLastError = true)]
    public static partial int dup2(int oldfd, int newfd);

    /// <summary>Point stdout and stderr at a log file (append), for a daemon whose starter has gone.</summary>
    public static void RedirectOutput(string path)
    {
        int fd = open(path, 0x1 | 0x40 | 0x400 | 0x80000, 0x180);   // O_WRONLY|O_CREAT|O_APPEND|O_CLOEXEC, 0600
        if (fd < 0) return;
        dup2(fd, 1); dup2(fd, 2); close(fd);
    }

    public static int Errno => Marshal.GetLastPInvokeError();

    public static string StrError(int errno) => Marshal.GetPInvokeErrorMessage(errno);

    /// <summary>Fill a sockaddr_un (110 bytes) for <paramref name="path"/>; false if the path is too long.</summary>
    public static bool SockAddr(string path, Span<byte> addr, out uint len)
    {
        addr.Clear();
        var bytes = System.Text.Encoding.UTF8.GetBytes(path);
        len = 0;
        if (bytes.Length >= 108) return false;
        addr[0] = AF_UNIX;
        bytes.CopyTo(addr[2..]);
        len = (uint)(2 + bytes.Length + 1);
        return true;
    }
}
