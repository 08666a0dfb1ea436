using System.Runtime.InteropServices;

namespace Lab.Interop;

/// <summary>
/// Every native call of fusefs and the lab daemon. x86-64 Linux; numbers measured on this kernel
/// (shared/notes/LINUX-FACTS.md). Descriptors go as <see cref="Fd"/> (held for the call; a disposed
/// one gives EBADF). Paths on the FUSE request path are raw NUL-terminated byte pointers (names come
/// straight from the request buffer or a stack copy), so that path does not allocate; cold paths
/// (mount, memfd, logs) use UTF-8 string marshalling. Every call sets errno (<see cref="Errno.Last"/>).
/// </summary>
public static unsafe partial class Native
{
    private const string Libc = "libc";

    public const int O_RDONLY = 0, O_WRONLY = 1, O_RDWR = 2, O_ACCMODE = 3;
    public const int O_CREAT = 0x40, O_EXCL = 0x80, O_NOCTTY = 0x100, O_TRUNC = 0x200, O_APPEND = 0x400;
    public const int O_NONBLOCK = 0x800, O_DIRECT = 0x4000, O_DIRECTORY = 0x10000, O_NOFOLLOW = 0x20000;
    public const int O_CLOEXEC = 0x80000, O_PATH = 0x200000;
    public const int AT_FDCWD = -100, AT_SYMLINK_NOFOLLOW = 0x100, AT_REMOVEDIR = 0x200;
    public const int AT_SYMLINK_FOLLOW = 0x400, AT_EMPTY_PATH = 0x1000;
    public const uint STATX_BASIC_STATS = 0x7ff;
    public const ulong MS_NOSUID = 2, MS_NODEV = 4;
    public const int MNT_DETACH = 2;
    public const uint MFD_CLOEXEC = 1;
    public const int FALLOC_FL_KEEP_SIZE = 1, FALLOC_FL_PUNCH_HOLE = 2;
    public const short POLLIN = 0x1, POLLERR = 0x8, POLLHUP = 0x10, POLLNVAL = 0x20;
    public const int EFD_CLOEXEC = 0x80000, EFD_NONBLOCK = 0x800;
    public const int F_SETFD = 2, F_SETFL = 4, FD_CLOEXEC = 1;
    public const int AF_UNIX = 1, SOCK_STREAM = 1, SOCK_CLOEXEC = 0x80000, SOL_SOCKET = 1, SO_PEERCRED = 17, SCM_RIGHTS = 1;
    public const int MSG_NOSIGNAL = 0x4000, MSG_CMSG_CLOEXEC = 0x40000000;
    public const long UTIME_NOW = (1L << 30) - 1, UTIME_OMIT = (1L << 30) - 2;
    // _IOR(229, 0, uint32_t)
    public const ulong FUSE_DEV_IOC_CLONE = 0x8004E500;

    [StructLayout(LayoutKind.Sequential)]
    public struct PollFd { public int Fd; public short Events, Revents; }

    [StructLayout(LayoutKind.Sequential)]
    public struct IoVec { public void* Base; public nuint Len; }

    [StructLayout(LayoutKind.Sequential)]
    public struct MsgHdr
    {
        public void* Name; public uint NameLen; public IoVec* Iov; public nuint IovLen;
        public void* Control; public nuint ControlLen; public int Flags;
    }

    [StructLayout(LayoutKind.Sequential)]
    public struct Ucred { public int Pid, Uid, Gid; }

    [StructLayout(LayoutKind.Sequential)]
    public struct Timespec { public long Sec; public long Nsec; }

    [StructLayout(LayoutKind.Explicit, Size = 256)]
    public struct Statx
    {
        [FieldOffset(0)] public uint Mask;
        [FieldOffset(4)] public uint Blksize;
        [FieldOffset(16)] public uint Nlink;
        [FieldOffset(20)] public uint Uid;
        [FieldOffset(24)] public uint Gid;
        [FieldOffset(28)] public ushort Mode;
        [FieldOffset(32)] public ulong Ino;
        [FieldOffset(40)] public ulong Size;
        [FieldOffset(48)] public ulong Blocks;
        [FieldOffset(64)] public long AtimeSec;
        [FieldOffset(72)] public uint AtimeNsec;
        [FieldOffset(96)] public long CtimeSec;
        [FieldOffset(104)] public uint CtimeNsec;
        [FieldOffset(112)] public long MtimeSec;
        [FieldOffset(120)] public uint MtimeNsec;
        [FieldOffset(128)] public uint RdevMajor;
        [FieldOffset(132)] public uint RdevMinor;
        [FieldOffset(136)] public uint DevMajor;
        [FieldOffset(140)] public uint DevMinor;

        public readonly ulong Dev => ((ulong)DevMajor << 32) | DevMinor;
    }

    // x86_64/aarch64 struct statfs: every field a 64-bit word but f_fsid (two ints), so in sequence.
    public struct StatFs
    {
        public long Type, Bsize;
        public ulong Blocks, Bfree, Bavail, Files, Ffree;
        public long Fsid, Namelen, Frsize, Flags;
        public fixed long Spare[4];
    }

    /// <summary>"" for the *at calls with AT_EMPTY_PATH.</summary>
    public static readonly byte* EmptyPath = (byte*)NativeMemory.AllocZeroed(1);

    // Descriptors: open, close, I/O.
    [LibraryImport(Libc, EntryPoint = "open", SetLastError = true)]
    public static partial Fd Open(byte* path, int flags, uint mode);
    [LibraryImport(Libc, EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial Fd Open(string path, int flags, uint mode);
    [LibraryImport(Libc, EntryPoint = "openat", SetLastError = true)]
    public static partial Fd OpenAt(Fd dirfd, byte* path, int flags, uint mode);
    /// <summary>For <see cref="Fd"/>'s release only: every owned descriptor is closed by disposing its Fd.</summary>
    [LibraryImport(Libc, EntryPoint = "close")]   // no SetLastError: disposing never changes Errno.Last
    internal static partial int CloseNumber(int fd);
    [LibraryImport(Libc, EntryPoint = "dup2", SetLastError = true)]
    public static partial int Dup2(Fd oldfd, int newfd);
    [LibraryImport(Libc, EntryPoint = "fcntl", SetLastError = true)]
    public static partial int Fcntl(Fd fd, int cmd, int arg);
    [LibraryImport(Libc, EntryPoint = "read", SetLastError = true)]
    public static partial nint Read(Fd fd, void* buf, nuint count);
    [LibraryImport(Libc, EntryPoint = "write", SetLastError = true)]
    public static partial nint Write(Fd fd, void* buf, nuint count);
    [LibraryImport(Libc, EntryPoint = "pread", SetLastError = true)]
    public static partial nint PRead(Fd fd, byte* buf, nuint count, long offset);
    [LibraryImport(Libc, EntryPoint = "pwrite", SetLastError = true)]
    public static partial nint PWrite(Fd fd, byte* buf, nuint count, long offset);
    [LibraryImport(Libc, EntryPoint = "ioctl", SetLastError = true)]
    public static partial int Ioctl(Fd fd, ulong request, void* arg);
    /// <summary>The descriptors in <paramref name="fds"/> are raw numbers: hold each one's <see cref="Fd.Use"/> across the call.</summary>
    [LibraryImport(Libc, EntryPoint = "poll", SetLastError = true)]
    public static partial int Poll(PollFd* fds, nuint nfds, int timeout);
    [LibraryImport(Libc, EntryPoint = "eventfd", SetLastError = true)]
    public static partial Fd EventFd(uint initval, int flags);
    [LibraryImport(Libc, EntryPoint = "memfd_create", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial Fd MemfdCreate(string name, uint flags);
    [LibraryImport(Libc, EntryPoint = "ftruncate", SetLastError = true)]
    public static partial int FTruncate(Fd fd, long length);
    [LibraryImport(Libc, EntryPoint = "fsync", SetLastError = true)]
    public static partial int FSync(Fd fd);
    [LibraryImport(Libc, EntryPoint = "fdatasync", SetLastError = true)]
    public static partial int FDataSync(Fd fd);
    [LibraryImport(Libc, EntryPoint = "syncfs", SetLastError = true)]
    public static partial int SyncFs(Fd fd);
    [LibraryImport(Libc, EntryPoint = "fallocate", SetLastError = true)]
    public static partial int FAllocate(Fd fd, int mode, long offset, long len);
    [LibraryImport(Libc, EntryPoint = "lseek", SetLastError = true)]
    public static partial long LSeek(Fd fd, long offset, int whence);
    [LibraryImport(Libc, EntryPoint = "copy_file_range", SetLastError = true)]
    public static partial nint CopyFileRange(Fd fdIn, long* offIn, Fd fdOut, long* offOut, nuint len, uint flags);
    [LibraryImport(Libc, EntryPoint = "getdents64", SetLastError = true)]
    public static partial nint GetDents64(Fd fd, byte* buf, nuint count);
    [LibraryImport(Libc, EntryPoint = "fchmod", SetLastError = true)]
    public static partial int FChmod(Fd fd, uint mode);
    [LibraryImport(Libc, EntryPoint = "fstatfs", SetLastError = true)]
    public static partial int FStatFs(Fd fd, StatFs* buf);

    // Names beneath a directory fd, without symlinks, and inodes by handle (fusefs: the daemon is root and
    // the backing side may race; a node keeps a file handle, not a descriptor).
    public const ulong RESOLVE_NO_XDEV = 1, RESOLVE_NO_MAGICLINKS = 2, RESOLVE_NO_SYMLINKS = 4, RESOLVE_BENEATH = 8;
    public const int MAX_HANDLE_SZ = 128, RLIMIT_NOFILE = 7;
    private const long SYS_openat2 = 437, SYS_fchmodat2 = 452;   // the same on x86-64 and the generic table

    [StructLayout(LayoutKind.Sequential)]
    public struct OpenHow { public ulong Flags, Mode, Resolve; }

    [StructLayout(LayoutKind.Sequential)]
    public struct Rlimit { public ulong Cur, Max; }

    [LibraryImport(Libc, EntryPoint = "syscall", SetLastError = true)]
    private static partial long Syscall(long nr, Fd a, byte* b, void* c, nuint d);

    /// <summary>openat2(2): no libc wrapper in older glibc.</summary>
    public static Fd OpenAt2(Fd dirfd, byte* path, OpenHow* how)
    {
        long r = Syscall(SYS_openat2, dirfd, path, how, (nuint)sizeof(OpenHow));
        return r < 0 ? new Fd() : new Fd((int)r);
    }

    /// <summary>fchmodat2(2) (Linux 6.6): takes AT_EMPTY_PATH, so an O_PATH fd's own inode can be chmodded.</summary>
    public static int FChmodAt2(Fd dirfd, byte* path, uint mode, int flags) =>
        (int)Syscall(SYS_fchmodat2, dirfd, path, (void*)(nuint)mode, (nuint)flags);

    /// <summary>name_to_handle_at(2); <paramref name="handle"/> is a struct file_handle whose first word
    /// (handle_bytes) says how much room follows the 8-byte header.</summary>
    [LibraryImport(Libc, EntryPoint = "name_to_handle_at", SetLastError = true)]
    public static partial int NameToHandleAt(Fd dirfd, byte* path, byte* handle, int* mountId, int flags);
    [LibraryImport(Libc, EntryPoint = "open_by_handle_at", SetLastError = true)]
    public static partial Fd OpenByHandleAt(Fd mountFd, byte* handle, int flags);
    [LibraryImport(Libc, EntryPoint = "getrlimit", SetLastError = true)]
    public static partial int GetRlimit(int resource, Rlimit* rlim);

    // Paths and the *at calls.
    [LibraryImport(Libc, EntryPoint = "truncate", SetLastError = true)]
    public static partial int Truncate(byte* path, long length);
    [LibraryImport(Libc, EntryPoint = "statx", SetLastError = true)]
    public static partial int StatxAt(Fd dirfd, byte* path, int flags, uint mask, Statx* buf);
    [LibraryImport(Libc, EntryPoint = "statx", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int StatxPath(Fd dirfd, string path, int flags, uint mask, Statx* buf);
    [LibraryImport(Libc, EntryPoint = "statfs", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int StatFsPath(string path, StatFs* buf);
    [LibraryImport(Libc, EntryPoint = "renameat2", SetLastError = true)]
    public static partial int RenameAt2(Fd olddirfd, byte* oldpath, Fd newdirfd, byte* newpath, uint flags);
    [LibraryImport(Libc, EntryPoint = "linkat", SetLastError = true)]
    public static partial int LinkAt(Fd olddirfd, byte* oldpath, Fd newdirfd, byte* newpath, int flags);
    [LibraryImport(Libc, EntryPoint = "symlinkat", SetLastError = true)]
    public static partial int SymlinkAt(byte* target, Fd newdirfd, byte* linkpath);
    [LibraryImport(Libc, EntryPoint = "readlinkat", SetLastError = true)]
    public static partial nint ReadlinkAt(Fd dirfd, byte* path, byte* buf, nuint size);
    [LibraryImport(Libc, EntryPoint = "mkdirat", SetLastError = true)]
    public static partial int MkdirAt(Fd dirfd, byte* path, uint mode);
    [LibraryImport(Libc, EntryPoint = "mknodat", SetLastError = true)]
    public static partial int MknodAt(Fd dirfd, byte* path, uint mode, ulong dev);
    [LibraryImport(Libc, EntryPoint = "unlinkat", SetLastError = true)]
    public static partial int UnlinkAt(Fd dirfd, byte* path, int flags);
    [LibraryImport(Libc, EntryPoint = "fchmodat", SetLastError = true)]
    public static partial int FChmodAt(Fd dirfd, byte* path, uint mode, int flags);
    [LibraryImport(Libc, EntryPoint = "fchownat", SetLastError = true)]
    public static partial int FChownAt(Fd dirfd, byte* path, uint uid, uint gid, int flags);
    [LibraryImport(Libc, EntryPoint = "utimensat", SetLastError = true)]
    public static partial int UtimensAt(Fd dirfd, byte* path, Timespec* times, int flags);
    [LibraryImport(Libc, EntryPoint = "faccessat", SetLastError = true)]
    public static partial int FAccessAt(Fd dirfd, byte* path, int mode, int flags);
    [LibraryImport(Libc, EntryPoint = "getxattr", SetLastError = true)]
    public static partial nint GetXattr(byte* path, byte* name, byte* value, nuint size);
    [LibraryImport(Libc, EntryPoint = "setxattr", SetLastError = true)]
    public static partial int SetXattr(byte* path, byte* name, byte* value, nuint size, int flags);
    [LibraryImport(Libc, EntryPoint = "listxattr", SetLastError = true)]
    public static partial nint ListXattr(byte* path, byte* list, nuint size);
    [LibraryImport(Libc, EntryPoint = "removexattr", SetLastError = true)]
    public static partial int RemoveXattr(byte* path, byte* name);

    // Mounts.
    [LibraryImport(Libc, EntryPoint = "mount", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Mount(string source, string target, string fstype, ulong flags, string data);
    [LibraryImport(Libc, EntryPoint = "umount2", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    public static partial int Umount2(string target, int flags);

    // Sockets.
    [LibraryImport(Libc, EntryPoint = "socket", SetLastError = true)]
    public static partial Fd Socket(int domain, int type, int protocol);
    /// <summary>Two new descriptors in <paramref name="sv"/>: wrap each in an <see cref="Fd"/> at once.</summary>
    [LibraryImport(Libc, EntryPoint = "socketpair", SetLastError = true)]
    public static partial int SocketPair(int domain, int type, int protocol, int* sv);
    [LibraryImport(Libc, EntryPoint = "bind", SetLastError = true)]
    public static partial int Bind(Fd fd, byte* addr, uint len);
    [LibraryImport(Libc, EntryPoint = "listen", SetLastError = true)]
    public static partial int Listen(Fd fd, int backlog);
    [LibraryImport(Libc, EntryPoint = "accept4", SetLastError = true)]
    public static partial Fd Accept4(Fd fd, void* addr, void* len, int flags);
    [LibraryImport(Libc, EntryPoint = "connect", SetLastError = true)]
    public static partial int Connect(Fd fd, byte* addr, uint len);
    [LibraryImport(Libc, EntryPoint = "shutdown", SetLastError = true)]
    public static partial int Shutdown(Fd fd, int how);
    /// <summary>An SCM_RIGHTS descriptor in the message is a raw number: hold its <see cref="Fd.Use"/> across the call.</summary>
    [LibraryImport(Libc, EntryPoint = "sendmsg", SetLastError = true)]
    public static partial nint SendMsg(Fd fd, MsgHdr* msg, int flags);
    /// <summary>A received SCM_RIGHTS descriptor is a raw number: wrap it in an <see cref="Fd"/> at once.</summary>
    [LibraryImport(Libc, EntryPoint = "recvmsg", SetLastError = true)]
    public static partial nint RecvMsg(Fd fd, MsgHdr* msg, int flags);
    [LibraryImport(Libc, EntryPoint = "getsockopt", SetLastError = true)]
    public static partial int GetSockOpt(Fd fd, int level, int name, void* val, uint* len);

    // Processes.
    [LibraryImport(Libc, EntryPoint = "process_vm_readv", SetLastError = true)]
    public static partial nint ProcessVmReadv(int pid, IoVec* local, nuint liovcnt, IoVec* remote, nuint riovcnt, nuint flags);
    [LibraryImport(Libc, EntryPoint = "kill", SetLastError = true)]
    public static partial int Kill(int pid, int sig);

    public const int RUSAGE_CHILDREN = -1;
    [StructLayout(LayoutKind.Sequential)]
    public struct Rusage
    {
        public long UtimeSec, UtimeUsec, StimeSec, StimeUsec;
        public long MaxRss, IxRss, IdRss, IsRss, MinFlt, MajFlt, NSwap, InBlock, OuBlock, MsgSnd, MsgRcv, NSignals, NVcsw, NIvcsw;
    }
    /// <summary>getrusage(2): the coverage of a `lab run` compares the lab's faults with the kernel's.</summary>
    [LibraryImport(Libc, EntryPoint = "getrusage", SetLastError = true)]
    public static partial int GetRusage(int who, Rusage* usage);
    [LibraryImport(Libc, EntryPoint = "setsid", SetLastError = true)]
    public static partial int SetSid();
    [LibraryImport(Libc, EntryPoint = "getuid")]
    public static partial uint GetUid();
    [LibraryImport(Libc, EntryPoint = "geteuid")]
    public static partial uint GetEuid();
    [LibraryImport(Libc, EntryPoint = "getegid")]
    public static partial uint GetEgid();
    /// <summary>Returns the C heap's free memory to the kernel (glibc).</summary>
    [LibraryImport(Libc, EntryPoint = "malloc_trim")]
    public static partial int MallocTrim(nuint pad);

    /// <summary>Point stdout and stderr at a log file (append), for a daemon whose starter has gone.</summary>
    public static void RedirectOutput(string path)
    {
        using var fd = Open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0x180);   // 0600
        if (fd.IsInvalid) return;
        Dup2(fd, 1); Dup2(fd, 2);
    }

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

    /// <summary>Writes "/proc/self/fd/N\0" into dest (at least 32 bytes) and returns a pointer to it:
    /// the way to reach an O_PATH node fd with calls that take only a path. The caller keeps
    /// <paramref name="fd"/> open while it uses the path.</summary>
    public static byte* FdPath(Fd fd, Span<byte> dest)
    {
        "/proc/self/fd/"u8.CopyTo(dest);
        fd.Number.TryFormat(dest[14..], out int n, default, System.Globalization.CultureInfo.InvariantCulture);
        dest[14 + n] = 0;
        return (byte*)System.Runtime.CompilerServices.Unsafe.AsPointer(ref dest[0]);
    }
}
