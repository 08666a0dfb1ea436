using System.Runtime.InteropServices;

namespace Lab.Interop;

/// <summary>userfaultfd: ioctl numbers (x86-64, measured: shared/notes/LINUX-FACTS.md §0), features, events, structs.</summary>
public static partial class Native
{
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
    public const ulong UFFDIO_COPY_MODE_DONTWAKE = 1, UFFDIO_COPY_MODE_WP = 2, UFFDIO_WRITEPROTECT_MODE_WP = 1,
        UFFDIO_CONTINUE_MODE_WP = 2;   // since 6.3: the page-cache page is mapped write-protected

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
}
