using System.Runtime.InteropServices;

namespace Lab.Fusefs;

// The wire structs of linux/fuse.h (7.38/7.39 layouts), little-endian, read and written in place.

internal enum FuseOpcode : uint
{
    Lookup = 1, Forget = 2, GetAttr = 3, SetAttr = 4, ReadLink = 5, Symlink = 6, Mknod = 8, Mkdir = 9,
    Unlink = 10, Rmdir = 11, Rename = 12, Link = 13, Open = 14, Read = 15, Write = 16, StatFs = 17,
    Release = 18, Fsync = 20, SetXattr = 21, GetXattr = 22, ListXattr = 23, RemoveXattr = 24, Flush = 25,
    Init = 26, OpenDir = 27, ReadDir = 28, ReleaseDir = 29, FsyncDir = 30, GetLk = 31, SetLk = 32,
    SetLkW = 33, Access = 34, Create = 35, Interrupt = 36, Bmap = 37, Destroy = 38, Ioctl = 39, Poll = 40,
    NotifyReply = 41, BatchForget = 42, Fallocate = 43, ReadDirPlus = 44, Rename2 = 45, Lseek = 46,
    CopyFileRange = 47, SetupMapping = 48, RemoveMapping = 49, SyncFs = 50, Tmpfile = 51,
}

/// <summary>Codes of messages the server sends unasked (unique 0, the code in the error field).</summary>
internal enum FuseNotifyCode
{
    InvalInode = 2, InvalEntry = 3,
}

internal static class FuseConst
{
    public const uint KernelVersion = 7;
    public const uint HighestMinor = 39; // DIRECT_IO_ALLOW_MMAP is the newest thing we use
    public const uint AsyncRead = 1u << 0, BigWrites = 1u << 5, DoReaddirplus = 1u << 13, ReaddirplusAuto = 1u << 14;
    public const uint ParallelDirops = 1u << 18, MaxPagesFlag = 1u << 22, InitExt = 1u << 30;
    public const uint PosixAcl = 1u << 20, DontMask = 1u << 6, HandleKillprivV2 = 1u << 28;
    /// <summary>fuse_write_in.write_flags: the writer lacks CAP_FSETID, so S_ISUID/S_ISGID must go.</summary>
    public const uint WriteKillSuidgid = 1u << 2;
    public const uint DirectIoAllowMmap2 = 1u << 4; // in flags2: 1UL << 36 overall
    public const int MaxWrite = 1 << 20;
    public const ushort MaxPages = 256;
    public const int InHeaderSize = 40, OutHeaderSize = 16;
    public const uint GetAttrFh = 1;
}

/// <summary>Request header common to every request.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 4)]
internal struct FuseInHeader
{
    public uint Len;
    public uint Opcode;
    public ulong Unique;
    public ulong NodeId;
    public uint Uid, Gid, Pid;
    public ushort TotalExtlen, Padding;
}

[StructLayout(LayoutKind.Sequential, Pack = 4)]
internal struct FuseOutHeader
{
    public uint Len;
    public int Error;
    public ulong Unique;
}

[StructLayout(LayoutKind.Sequential, Pack = 4)]
internal struct FuseInitIn
{
    public uint Major, Minor, MaxReadahead, Flags, Flags2;
}

[StructLayout(LayoutKind.Sequential, Pack = 4)]
internal unsafe struct FuseInitOut
{
    public uint Major, Minor, MaxReadahead, Flags;
    public ushort MaxBackground, CongestionThreshold;
    public uint MaxWrite, TimeGran;
    public ushort MaxPages, MapAlignment;
    public uint Flags2;
    public fixed uint Unused[7];
}

/// <summary>struct fuse_attr (88 bytes).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 4)]
public struct FuseAttr
{
    public ulong Ino, Size, Blocks, Atime, Mtime, Ctime;
    public uint AtimeNsec, MtimeNsec, CtimeNsec, Mode, Nlink, Uid, Gid, Rdev, BlkSize, Flags;
}

/// <summary>struct fuse_entry_out (128 bytes): the answer to LOOKUP, MKNOD, MKDIR, SYMLINK, LINK, CREATE.</summary>
[StructLayout(LayoutKind.Sequential, Pack = 4)]
public struct FuseEntryOut
{
    public ulong NodeId, Generation, EntryValid, AttrValid;
    public uint EntryValidNsec, AttrValidNsec;
    public FuseAttr Attr;
}

/// <summary>struct fuse_attr_out (104 bytes).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 4)]
public struct FuseAttrOut
{
    public ulong AttrValid;
    public uint AttrValidNsec, Dummy;
    public FuseAttr Attr;
}

/// <summary>struct fuse_open_out (16 bytes).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 4)]
public struct FuseOpenOut
{
    public ulong Fh;
    public uint OpenFlags;
    public int BackingId;

    public const uint DirectIo = 1, KeepCache = 2, NonSeekable = 4, CacheDir = 8;
}

/// <summary>struct fuse_setattr_in (88 bytes). Valid says which fields apply (FATTR_*).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 4)]
public struct FuseSetAttrIn
{
    public uint Valid, Padding;
    public ulong Fh, Size, LockOwner, Atime, Mtime, Ctime;
    public uint AtimeNsec, MtimeNsec, CtimeNsec, Mode, Unused4, Uid, Gid, Unused5;
}

/// <summary>FATTR_* bits of <see cref="FuseSetAttrIn.Valid"/>.</summary>
public static class FuseFattr
{
    public const uint Mode = 1, Uid = 2, Gid = 4, Size = 8, Atime = 16, Mtime = 32, Fh = 64;
    public const uint AtimeNow = 128, MtimeNow = 256, Ctime = 1024;
    /// <summary>With FUSE_HANDLE_KILLPRIV_V2: a chown, or a truncate by a caller without CAP_FSETID.</summary>
    public const uint KillSuidgid = 2048;
}

/// <summary>struct fuse_kstatfs (80 bytes).</summary>
[StructLayout(LayoutKind.Sequential, Pack = 4)]
public unsafe struct FuseStatfsOut
{
    public ulong Blocks, Bfree, Bavail, Files, Ffree;
    public uint Bsize, NameLen, Frsize, Padding;
    public fixed uint Spare[6];
}

// The small request and reply structs. C# lays a struct out in sequence with natural alignment, as
// the kernel does; none of these has implicit padding, and FuseStructTests checks every size against
// linux/fuse.h (the opcode table takes its size checks from them).
internal struct FuseGetAttrIn { public uint GetAttrFlags, Dummy; public ulong Fh; }
internal struct FuseMknodIn { public uint Mode, Rdev, Umask, Padding; }
internal struct FuseMkdirIn { public uint Mode, Umask; }
internal struct FuseRenameIn { public ulong NewDir; }
internal struct FuseLinkIn { public ulong OldNodeId; }
internal struct FuseRename2In { public ulong NewDir; public uint Flags, Padding; }
internal struct FuseOpenIn { public uint Flags, OpenFlags; }
internal struct FuseCreateIn { public uint Flags, Mode, Umask, OpenFlags; }
internal struct FuseReadIn { public ulong Fh, Offset; public uint Size, ReadFlags; public ulong LockOwner; public uint Flags, Padding; }
internal struct FuseWriteIn { public ulong Fh, Offset; public uint Size, WriteFlags; public ulong LockOwner; public uint Flags, Padding; }
internal struct FuseReleaseIn { public ulong Fh; public uint Flags, ReleaseFlags; public ulong LockOwner; }
internal struct FuseFlushIn { public ulong Fh; public uint Unused, Padding; public ulong LockOwner; }
internal struct FuseFsyncIn { public ulong Fh; public uint FsyncFlags, Padding; }
internal struct FuseForgetOne { public ulong NodeId, NLookup; }
internal struct FuseBatchForgetIn { public uint Count, Dummy; }
internal struct FuseAccessIn { public uint Mask, Padding; }
internal struct FuseGetXattrIn { public uint Size, Padding; }
internal struct FuseSetXattrIn { public uint Size, Flags; }
internal struct FuseFallocateIn { public ulong Fh, Offset, Length; public uint Mode, Padding; }
internal struct FuseLseekIn { public ulong Fh, Offset; public uint Whence, Padding; }
internal struct FuseCopyFileRangeIn { public ulong FhIn, OffIn, NodeIdOut, FhOut, OffOut, Len, Flags; }
// Replies and notifications.
internal struct FuseGetXattrOut { public uint Size, Padding; }
internal struct FuseWriteOut { public uint Size, Padding; }
internal struct FuseLseekOut { public ulong Offset; }
internal struct FuseNotifyInvalInodeOut { public ulong Ino; public long Off, Len; }
internal struct FuseNotifyInvalEntryOut { public ulong Parent; public uint NameLen, Flags; }

/// <summary>Caller identity of a request.</summary>
public readonly record struct FuseContext(ulong Unique, uint Uid, uint Gid, uint Pid)
{
    /// <summary>The caller's umask, for MKNOD, MKDIR, CREATE and TMPFILE (FUSE_DONT_MASK: the kernel leaves
    /// it to us, since a parent's default ACL replaces it).</summary>
    public uint Umask { get; init; }
}

/// <summary>Appends struct fuse_dirent records into a reply buffer; stops when one does not fit.</summary>
public ref struct FuseDirWriter
{
    private readonly Span<byte> _dest;
    private int _used;

    public FuseDirWriter(Span<byte> dest, bool plus = false) { _dest = dest; _used = 0; Plus = plus; }

    public readonly int Used => _used;
    /// <summary>READDIRPLUS: each record starts with a struct fuse_entry_out (use <see cref="AddPlus"/>).</summary>
    public bool Plus { get; }

    /// <summary>Whether a record with a name of <paramref name="nameLength"/> bytes still fits; a READDIRPLUS
    /// caller asks before it counts a lookup for the entry.</summary>
    public readonly bool Fits(int nameLength) =>
        _used + (((Plus ? 128 : 0) + 24 + nameLength + 7) & ~7) <= _dest.Length;

    /// <summary>Adds a READDIRPLUS record; entry.NodeId 0 means "no lookup counted" (for . and ..).</summary>
    public bool AddPlus(in FuseEntryOut entry, ReadOnlySpan<byte> name, uint type, ulong nextOffset)
    {
        int recLen = (128 + 24 + name.Length + 7) & ~7;
        if (_used + recLen > _dest.Length) return false;
        System.Runtime.InteropServices.MemoryMarshal.Write(_dest[_used..], in entry);
        _used += 128;
        bool ok = AddRecord(name, entry.Attr.Ino, type, nextOffset);
        System.Diagnostics.Debug.Assert(ok);
        return true;
    }

    /// <summary>Adds an entry; false when it does not fit (the caller stops; the kernel asks again from
    /// <paramref name="nextOffset"/> of the last entry added).</summary>
    public bool Add(ReadOnlySpan<byte> name, ulong ino, uint type, ulong nextOffset)
    {
        if (Plus) // a plain record would be misparsed; send an entry without a lookup
        {
            var e = default(FuseEntryOut);
            e.Attr.Ino = ino;
            e.Attr.Mode = type << 12;
            return AddPlus(in e, name, type, nextOffset);
        }
        return AddRecord(name, ino, type, nextOffset);
    }

    private bool AddRecord(ReadOnlySpan<byte> name, ulong ino, uint type, ulong nextOffset)
    {
        int recLen = (24 + name.Length + 7) & ~7;
        if (_used + recLen > _dest.Length) return false;
        var rec = _dest.Slice(_used, recLen);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(rec, ino);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt64LittleEndian(rec[8..], nextOffset);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(rec[16..], (uint)name.Length);
        System.Buffers.Binary.BinaryPrimitives.WriteUInt32LittleEndian(rec[20..], type);
        name.CopyTo(rec[24..]);
        rec[(24 + name.Length)..].Clear();
        _used += recLen;
        return true;
    }
}
