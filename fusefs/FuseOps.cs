using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace Lab.Fusefs;

/// <summary>One request after the generic parse: the caller, the node, the opcode's fixed input struct,
/// its names (each without its NUL) and what follows them (WRITE data, SETXATTR value).</summary>
internal readonly ref struct FuseRequest
{
    public readonly FuseOpcode Op;
    public readonly FuseContext Context;
    public readonly ulong Node;
    public readonly ReadOnlySpan<byte> In, Name, Name2, Tail;

    public FuseRequest(FuseOpcode op, in FuseContext context, ulong node, ReadOnlySpan<byte> @in,
                       ReadOnlySpan<byte> name, ReadOnlySpan<byte> name2, ReadOnlySpan<byte> tail)
    {
        Op = op; Context = context; Node = node; In = @in; Name = name; Name2 = name2; Tail = tail;
    }

    public ulong Unique => Context.Unique;

    /// <summary>The fixed input struct; the parse made sure it is all there.</summary>
    public T Arg<T>() where T : unmanaged => MemoryMarshal.Read<T>(In);
}

/// <summary>Calls the file system for one parsed request and encodes its reply; returns the reply length.</summary>
internal delegate int FuseHandler(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply);

/// <summary>What the transport knows of one opcode: its name, the size of its fixed input struct, how many
/// NUL-terminated names follow it, whether it is answered at all, and its handler.</summary>
internal sealed record FuseOp(string Name, int InSize, int Names, bool Replies, FuseHandler? Handler);

/// <summary>
/// The opcode table and the one generic parse. A request too short for its opcode's struct, or missing a
/// name's NUL, is refused here with EINVAL, before any handler runs; an opcode not in the table gets ENOSYS.
/// </summary>
internal static unsafe class FuseOps
{
    private static readonly FuseOp?[] Table = Build();

    public static FuseOp? Get(FuseOpcode op) => (uint)op < (uint)Table.Length ? Table[(int)op] : null;

    /// <summary>The kernel's name of an opcode ("LOOKUP"), or its number.</summary>
    public static string NameOf(uint opcode) => Get((FuseOpcode)opcode)?.Name ?? $"opcode {opcode}";

    private static FuseOp?[] Build()
    {
        var t = new FuseOp?[(int)FuseOpcode.Tmpfile + 1];
        void Add(FuseOpcode op, string name, int inSize, int names, FuseHandler? h, bool replies = true) =>
            t[(int)op] = new FuseOp(name, inSize, names, replies, h);
        int S<T>() where T : unmanaged => sizeof(T);

        // By opcode number, as linux/fuse.h lists them. Opcodes not here (locks, BMAP, IOCTL, POLL, DESTROY,
        // the DAX mappings...) are answered ENOSYS.
        Add(FuseOpcode.Lookup, "LOOKUP", 0, 1, Lookup);
        // Never answered (the kernel waits for no reply): FuseServer.Forget takes it.
        Add(FuseOpcode.Forget, "FORGET", 0, 0, null, replies: false);
        // GETATTR's struct is optional (older kernels send none): the handler reads it from Tail.
        Add(FuseOpcode.GetAttr, "GETATTR", 0, 0, GetAttr);
        Add(FuseOpcode.SetAttr, "SETATTR", S<FuseSetAttrIn>(), 0, SetAttr);
        Add(FuseOpcode.ReadLink, "READLINK", 0, 0, ReadLink);
        Add(FuseOpcode.Symlink, "SYMLINK", 0, 2, Symlink);
        Add(FuseOpcode.Mknod, "MKNOD", S<FuseMknodIn>(), 1, Mknod);
        Add(FuseOpcode.Mkdir, "MKDIR", S<FuseMkdirIn>(), 1, Mkdir);
        Add(FuseOpcode.Unlink, "UNLINK", 0, 1, Unlink);
        Add(FuseOpcode.Rmdir, "RMDIR", 0, 1, Rmdir);
        Add(FuseOpcode.Rename, "RENAME", S<FuseRenameIn>(), 2, Rename);
        Add(FuseOpcode.Link, "LINK", S<FuseLinkIn>(), 1, Link);
        Add(FuseOpcode.Open, "OPEN", S<FuseOpenIn>(), 0, Open);
        Add(FuseOpcode.Read, "READ", S<FuseReadIn>(), 0, Read);
        Add(FuseOpcode.Write, "WRITE", S<FuseWriteIn>(), 0, Write);
        Add(FuseOpcode.StatFs, "STATFS", 0, 0, StatFs);
        Add(FuseOpcode.Release, "RELEASE", S<FuseReleaseIn>(), 0, Release);
        Add(FuseOpcode.Fsync, "FSYNC", S<FuseFsyncIn>(), 0, Fsync);
        Add(FuseOpcode.SetXattr, "SETXATTR", S<FuseSetXattrIn>(), 1, SetXattr);
        Add(FuseOpcode.GetXattr, "GETXATTR", S<FuseGetXattrIn>(), 1, GetXattr);
        Add(FuseOpcode.ListXattr, "LISTXATTR", S<FuseGetXattrIn>(), 0, ListXattr);
        Add(FuseOpcode.RemoveXattr, "REMOVEXATTR", 0, 1, RemoveXattr);
        Add(FuseOpcode.Flush, "FLUSH", S<FuseFlushIn>(), 0, Flush);
        // Answered once, by FuseServer.Negotiate; no handler: a second one is refused.
        Add(FuseOpcode.Init, "INIT", 0, 0, null);
        Add(FuseOpcode.OpenDir, "OPENDIR", S<FuseOpenIn>(), 0, OpenDir);
        Add(FuseOpcode.ReadDir, "READDIR", S<FuseReadIn>(), 0, ReadDir);
        Add(FuseOpcode.ReleaseDir, "RELEASEDIR", S<FuseReleaseIn>(), 0, ReleaseDir);
        Add(FuseOpcode.FsyncDir, "FSYNCDIR", S<FuseFsyncIn>(), 0, FsyncDir);
        Add(FuseOpcode.Access, "ACCESS", S<FuseAccessIn>(), 0, Access);
        Add(FuseOpcode.Create, "CREATE", S<FuseCreateIn>(), 1, Create);
        Add(FuseOpcode.Interrupt, "INTERRUPT", 0, 0, null, replies: false);
        Add(FuseOpcode.BatchForget, "BATCH_FORGET", 0, 0, null, replies: false);
        Add(FuseOpcode.Fallocate, "FALLOCATE", S<FuseFallocateIn>(), 0, Fallocate);
        Add(FuseOpcode.ReadDirPlus, "READDIRPLUS", S<FuseReadIn>(), 0, ReadDir);
        Add(FuseOpcode.Rename2, "RENAME2", S<FuseRename2In>(), 2, Rename2);
        Add(FuseOpcode.Lseek, "LSEEK", S<FuseLseekIn>(), 0, Lseek);
        Add(FuseOpcode.CopyFileRange, "COPY_FILE_RANGE", S<FuseCopyFileRangeIn>(), 0, CopyFileRange);
        Add(FuseOpcode.SyncFs, "SYNCFS", 0, 0, SyncFs);
        // The name TMPFILE comes with is a placeholder ("/"): not parsed.
        Add(FuseOpcode.Tmpfile, "TMPFILE", S<FuseCreateIn>(), 0, Tmpfile);
        return t;
    }

    /// <summary>Why a request is malformed, or null when <paramref name="r"/> holds its parts.</summary>
    public static string? Parse(FuseOp op, FuseOpcode code, in FuseContext c, ulong node, ReadOnlySpan<byte> body,
                                out FuseRequest r)
    {
        r = default;
        if (body.Length < op.InSize) return $"{body.Length} bytes, {op.Name} needs {op.InSize}";
        var rest = body[op.InSize..];
        ReadOnlySpan<byte> name = default, name2 = default;
        if (op.Names >= 1 && !TakeName(ref rest, out name)) return "a name without its NUL";
        if (op.Names >= 2 && !TakeName(ref rest, out name2)) return "a second name without its NUL";
        r = new FuseRequest(code, in c, node, body[..op.InSize], name, name2, rest);
        return null;
    }

    /// <summary>Splits one NUL-terminated name off the front of <paramref name="body"/>.</summary>
    private static bool TakeName(scoped ref ReadOnlySpan<byte> body, out ReadOnlySpan<byte> name)
    {
        int nul = body.IndexOf((byte)0);
        if (nul < 0) { name = default; return false; }
        name = body[..nul];
        body = body[(nul + 1)..];
        return true;
    }

    // ---------------- handlers: one per opcode family ----------------

    private static int Lookup(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        int err = fs.Lookup(in r.Context, r.Node, r.Name, out var entry);
        return FuseReply.Result(reply, r.Unique, err, in entry);
    }

    private static int GetAttr(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        ulong? fh = null;
        if (r.Tail.Length >= sizeof(FuseGetAttrIn))
        {
            var gi = MemoryMarshal.Read<FuseGetAttrIn>(r.Tail);
            if ((gi.GetAttrFlags & FuseConst.GetAttrFh) != 0) fh = gi.Fh;
        }
        int err = fs.GetAttr(in r.Context, r.Node, fh, out var attr);
        return FuseReply.Result(reply, r.Unique, err, in attr);
    }

    private static int SetAttr(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        var si = r.Arg<FuseSetAttrIn>();
        int err = fs.SetAttr(in r.Context, r.Node, in si, out var attr);
        return FuseReply.Result(reply, r.Unique, err, in attr);
    }

    private static int ReadLink(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        var payload = FuseReply.Payload(reply);
        int err = fs.ReadLink(in r.Context, r.Node, payload[..Math.Min(payload.Length, 4096)], out int len);
        return err != 0 ? FuseReply.Error(reply, r.Unique, err) : FuseReply.Data(reply, r.Unique, len);
    }

    private static int Symlink(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        int err = fs.Symlink(in r.Context, r.Node, r.Name, r.Name2, out var entry);
        return FuseReply.Result(reply, r.Unique, err, in entry);
    }

    private static int Mknod(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        var mi = r.Arg<FuseMknodIn>();
        var c = r.Context with { Umask = mi.Umask };
        int err = fs.Mknod(in c, r.Node, r.Name, mi.Mode, mi.Rdev, out var entry);
        return FuseReply.Result(reply, r.Unique, err, in entry);
    }

    private static int Mkdir(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        var mi = r.Arg<FuseMkdirIn>();
        var c = r.Context with { Umask = mi.Umask };
        int err = fs.Mkdir(in c, r.Node, r.Name, mi.Mode, out var entry);
        return FuseReply.Result(reply, r.Unique, err, in entry);
    }

    private static int Unlink(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply) =>
        FuseReply.Error(reply, r.Unique, fs.Unlink(in r.Context, r.Node, r.Name));

    private static int Rmdir(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply) =>
        FuseReply.Error(reply, r.Unique, fs.Rmdir(in r.Context, r.Node, r.Name));

    private static int Rename(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply) =>
        FuseReply.Error(reply, r.Unique, fs.Rename(in r.Context, r.Node, r.Name, r.Arg<FuseRenameIn>().NewDir, r.Name2, 0));

    private static int Rename2(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        var ri = r.Arg<FuseRename2In>();
        return FuseReply.Error(reply, r.Unique, fs.Rename(in r.Context, r.Node, r.Name, ri.NewDir, r.Name2, ri.Flags));
    }

    private static int Link(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        int err = fs.Link(in r.Context, r.Arg<FuseLinkIn>().OldNodeId, r.Node, r.Name, out var entry);
        return FuseReply.Result(reply, r.Unique, err, in entry);
    }

    private static int Open(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        int err = fs.Open(in r.Context, r.Node, r.Arg<FuseOpenIn>().Flags, out var oo);
        return FuseReply.Result(reply, r.Unique, err, in oo);
    }

    private static int OpenDir(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        int err = fs.OpenDir(in r.Context, r.Node, r.Arg<FuseOpenIn>().Flags, out var oo);
        return FuseReply.Result(reply, r.Unique, err, in oo);
    }

    private static int Create(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        var ci = r.Arg<FuseCreateIn>();
        var c = r.Context with { Umask = ci.Umask };
        int err = fs.Create(in c, r.Node, r.Name, ci.Flags, ci.Mode, out var entry, out var oo);
        return err != 0 ? FuseReply.Error(reply, r.Unique, err) : FuseReply.Created(reply, r.Unique, in entry, in oo);
    }

    private static int Tmpfile(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        var ci = r.Arg<FuseCreateIn>();
        var c = r.Context with { Umask = ci.Umask };
        int err = fs.Tmpfile(in c, r.Node, ci.Flags, ci.Mode, out var entry, out var oo);
        return err != 0 ? FuseReply.Error(reply, r.Unique, err) : FuseReply.Created(reply, r.Unique, in entry, in oo);
    }

    private static int Read(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        var ri = r.Arg<FuseReadIn>();
        if (ri.Offset > long.MaxValue) return FuseReply.Error(reply, r.Unique, Errno.EINVAL);
        var payload = FuseReply.Payload(reply);
        int size = (int)Math.Min(ri.Size, (uint)payload.Length);
        int err = fs.Read(in r.Context, r.Node, ri.Fh, (long)ri.Offset, payload[..size], out int n);
        return err != 0 ? FuseReply.Error(reply, r.Unique, err) : FuseReply.Data(reply, r.Unique, Math.Clamp(n, 0, size));
    }

    private static int Write(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        var wi = r.Arg<FuseWriteIn>();
        if (wi.Size > r.Tail.Length) return FuseReply.Malformed;
        if (wi.Offset > long.MaxValue) return FuseReply.Error(reply, r.Unique, Errno.EINVAL);
        // Direct-io writes never pass the kernel's file_remove_privs: the flag is the only word of it.
        if ((wi.WriteFlags & FuseConst.WriteKillSuidgid) != 0)
        {
            int kill = fs.KillSuidGid(in r.Context, r.Node);
            if (kill != 0) return FuseReply.Error(reply, r.Unique, kill);
        }
        int err = fs.Write(in r.Context, r.Node, wi.Fh, (long)wi.Offset, r.Tail[..(int)wi.Size], out int n);
        var wo = new FuseWriteOut { Size = (uint)n };
        return FuseReply.Result(reply, r.Unique, err, in wo);
    }

    private static int StatFs(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        int err = fs.StatFs(in r.Context, r.Node, out var sf);
        return FuseReply.Result(reply, r.Unique, err, in sf);
    }

    private static int Release(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        fs.Release(in r.Context, r.Node, r.Arg<FuseReleaseIn>().Fh);
        return FuseReply.Error(reply, r.Unique, 0);
    }

    private static int ReleaseDir(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        fs.ReleaseDir(in r.Context, r.Node, r.Arg<FuseReleaseIn>().Fh);
        return FuseReply.Error(reply, r.Unique, 0);
    }

    private static int Fsync(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        var fi = r.Arg<FuseFsyncIn>();
        return FuseReply.Error(reply, r.Unique, fs.Fsync(in r.Context, r.Node, fi.Fh, (fi.FsyncFlags & 1) != 0));
    }

    private static int FsyncDir(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        var fi = r.Arg<FuseFsyncIn>();
        return FuseReply.Error(reply, r.Unique, fs.FsyncDir(in r.Context, r.Node, fi.Fh, (fi.FsyncFlags & 1) != 0));
    }

    private static int Flush(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply) =>
        FuseReply.Error(reply, r.Unique, fs.Flush(in r.Context, r.Node, r.Arg<FuseFlushIn>().Fh));

    private static int SetXattr(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        var xi = r.Arg<FuseSetXattrIn>();
        if (xi.Size > r.Tail.Length) return FuseReply.Malformed;
        return FuseReply.Error(reply, r.Unique, fs.SetXattr(in r.Context, r.Node, r.Name, r.Tail[..(int)xi.Size], (int)xi.Flags));
    }

    private static int GetXattr(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply) => Xattr(fs, in r, reply, list: false);
    private static int ListXattr(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply) => Xattr(fs, in r, reply, list: true);

    private static int Xattr(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply, bool list)
    {
        var xi = r.Arg<FuseGetXattrIn>();
        var payload = FuseReply.Payload(reply);
        int cap = (int)Math.Min(xi.Size, (uint)payload.Length);
        int err = list ? fs.ListXattr(in r.Context, r.Node, payload[..cap], out int size)
                       : fs.GetXattr(in r.Context, r.Node, r.Name, payload[..cap], out size);
        if (err != 0) return FuseReply.Error(reply, r.Unique, err);
        if (xi.Size == 0) // the caller asks how big
        {
            var xo = new FuseGetXattrOut { Size = (uint)size };
            return FuseReply.Ok(reply, r.Unique, in xo);
        }
        return FuseReply.Data(reply, r.Unique, Math.Clamp(size, 0, cap));
    }

    private static int RemoveXattr(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply) =>
        FuseReply.Error(reply, r.Unique, fs.RemoveXattr(in r.Context, r.Node, r.Name));

    private static int ReadDir(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        var ri = r.Arg<FuseReadIn>();
        if (ri.Offset > long.MaxValue) return FuseReply.Error(reply, r.Unique, Errno.EINVAL);
        bool plus = r.Op == FuseOpcode.ReadDirPlus;
        var payload = FuseReply.Payload(reply);
        var w = new FuseDirWriter(payload[..(int)Math.Min(ri.Size, (uint)payload.Length)], plus);
        int err = plus ? fs.ReadDirPlus(in r.Context, r.Node, ri.Fh, (long)ri.Offset, ref w)
                       : fs.ReadDir(in r.Context, r.Node, ri.Fh, (long)ri.Offset, ref w);
        return err != 0 ? FuseReply.Error(reply, r.Unique, err) : FuseReply.Data(reply, r.Unique, w.Used);
    }

    private static int CopyFileRange(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        var ci = r.Arg<FuseCopyFileRangeIn>();
        if (ci.OffIn > long.MaxValue || ci.OffOut > long.MaxValue) return FuseReply.Error(reply, r.Unique, Errno.EINVAL);
        // The reply holds a 32-bit count; a short copy makes the caller ask again.
        long len = (long)Math.Min(ci.Len, 1UL << 30);
        int err = fs.CopyFileRange(in r.Context, r.Node, ci.FhIn, (long)ci.OffIn, ci.NodeIdOut, ci.FhOut, (long)ci.OffOut,
                                   len, ci.Flags, out long copied);
        var wo = new FuseWriteOut { Size = (uint)Math.Clamp(copied, 0, len) };
        return FuseReply.Result(reply, r.Unique, err, in wo);
    }

    private static int SyncFs(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply) =>
        FuseReply.Error(reply, r.Unique, fs.SyncFs(in r.Context));

    private static int Access(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply) =>
        FuseReply.Error(reply, r.Unique, fs.Access(in r.Context, r.Node, (int)r.Arg<FuseAccessIn>().Mask));

    private static int Fallocate(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        var fi = r.Arg<FuseFallocateIn>();
        if (fi.Offset > long.MaxValue || fi.Length > long.MaxValue) return FuseReply.Error(reply, r.Unique, Errno.EINVAL);
        return FuseReply.Error(reply, r.Unique, fs.Fallocate(in r.Context, r.Node, fi.Fh, (int)fi.Mode, (long)fi.Offset, (long)fi.Length));
    }

    private static int Lseek(IFuseFileSystem fs, in FuseRequest r, Span<byte> reply)
    {
        var li = r.Arg<FuseLseekIn>();
        int err = fs.Lseek(in r.Context, r.Node, li.Fh, (long)li.Offset, (int)li.Whence, out long pos);
        var lo = new FuseLseekOut { Offset = (ulong)pos };
        return FuseReply.Result(reply, r.Unique, err, in lo);
    }
}

/// <summary>Encodes replies: a struct fuse_out_header, then the payload.</summary>
internal static unsafe class FuseReply
{
    /// <summary>What a handler returns for a request whose own size field overruns the data it came with:
    /// the transport refuses it (EINVAL) and logs it, as it does a request too short for its opcode.</summary>
    public const int Malformed = -1;

    public static Span<byte> Payload(Span<byte> reply) => reply[FuseConst.OutHeaderSize..];

    public static int Header(Span<byte> reply, int len, int errno, ulong unique)
    {
        var h = new FuseOutHeader { Len = (uint)len, Error = -errno, Unique = unique };
        MemoryMarshal.Write(reply, in h);
        return len;
    }

    public static int Error(Span<byte> reply, ulong unique, int errno) =>
        Header(reply, FuseConst.OutHeaderSize, errno, unique);

    /// <summary>A reply whose payload (<paramref name="length"/> bytes) is already in place.</summary>
    public static int Data(Span<byte> reply, ulong unique, int length) =>
        Header(reply, FuseConst.OutHeaderSize + length, 0, unique);

    public static int Ok<T>(Span<byte> reply, ulong unique, in T value) where T : unmanaged
    {
        MemoryMarshal.Write(Payload(reply), in value);
        return Data(reply, unique, sizeof(T));
    }

    public static int Result<T>(Span<byte> reply, ulong unique, int errno, in T value) where T : unmanaged =>
        errno == 0 ? Ok(reply, unique, in value) : Error(reply, unique, errno);

    /// <summary>CREATE and TMPFILE: the entry, then the open file.</summary>
    public static int Created(Span<byte> reply, ulong unique, in FuseEntryOut entry, in FuseOpenOut open)
    {
        var payload = Payload(reply);
        MemoryMarshal.Write(payload, in entry);
        MemoryMarshal.Write(payload[sizeof(FuseEntryOut)..], in open);
        return Data(reply, unique, sizeof(FuseEntryOut) + sizeof(FuseOpenOut));
    }
}
