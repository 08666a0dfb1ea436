namespace Lab.Fusefs;

// Requests that add or remove names: SYMLINK, MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, CREATE, TMPFILE.
public sealed unsafe partial class LabFileSystem
{
    private int Parent(ulong parent, ReadOnlySpan<byte> name, byte* cn, out Node? p)
    {
        p = null;
        int err = CName(name, cn);
        if (err != 0) return err;
        err = Protected(parent, name);
        if (err != 0) return err;
        p = Get(parent);
        return p == null ? Errno.ENOENT : 0;
    }

    public int Symlink(in FuseContext c, ulong parent, ReadOnlySpan<byte> name, ReadOnlySpan<byte> target, out FuseEntryOut entry)
    {
        entry = default;
        byte* cn = stackalloc byte[256];
        int err = Parent(parent, name, cn, out var p);
        if (err != 0) return err;
        if (target.Length == 0) return Errno.ENOENT;
        if (target.Length >= 4096 || target.IndexOf((byte)0) >= 0) return Errno.ENAMETOOLONG;
        byte* t = stackalloc byte[4097];
        target.CopyTo(new Span<byte>(t, 4096));
        t[target.Length] = 0;
        if (Native.SymlinkAt(t, p!.Fd, cn) != 0) return Err();
        return Created(p, cn, name, in c, NoMode, out entry);
    }

    // After creating (parent, name): give it to the caller and answer its entry.
    private int Created(Node p, byte* cn, ReadOnlySpan<byte> name, in FuseContext c, uint mode, out FuseEntryOut entry)
    {
        var fd = Native.OpenAt(p.Fd, cn, Native.O_PATH | Native.O_NOFOLLOW | Native.O_CLOEXEC, 0);
        if (fd.IsInvalid) { entry = default; return Err(); }
        InitNew(fd, p, mode, in c);
        return Register(fd, name, out entry);
    }

    public int Mknod(in FuseContext c, ulong parent, ReadOnlySpan<byte> name, uint mode, uint rdev, out FuseEntryOut entry)
    {
        entry = default;
        byte* cn = stackalloc byte[256];
        int err = Parent(parent, name, cn, out var p);
        if (err != 0) return err;
        // Device nodes too: the kernel lets only a CAP_MKNOD caller ask, and the mount is nodev (FuseMount).
        if (Native.MknodAt(p!.Fd, cn, mode, DevT(rdev)) != 0) return Err();
        return Created(p, cn, name, in c, mode, out entry);
    }

    public int Mkdir(in FuseContext c, ulong parent, ReadOnlySpan<byte> name, uint mode, out FuseEntryOut entry)
    {
        entry = default;
        byte* cn = stackalloc byte[256];
        int err = Parent(parent, name, cn, out var p);
        if (err != 0) return err;
        if (Native.MkdirAt(p!.Fd, cn, mode & 0xFFF) != 0) return Err();
        return Created(p, cn, name, in c, mode, out entry);
    }

    public int Unlink(in FuseContext c, ulong parent, ReadOnlySpan<byte> name) => Remove(parent, name, 0);
    public int Rmdir(in FuseContext c, ulong parent, ReadOnlySpan<byte> name) => Remove(parent, name, Native.AT_REMOVEDIR);

    private int Remove(ulong parent, ReadOnlySpan<byte> name, int flags)
    {
        byte* cn = stackalloc byte[256];
        int err = Parent(parent, name, cn, out var p);
        if (err != 0) return err;
        return Native.UnlinkAt(p!.Fd, cn, flags) == 0 ? 0 : Err();
    }

    public int Rename(in FuseContext c, ulong parent, ReadOnlySpan<byte> name, ulong newParent, ReadOnlySpan<byte> newName, uint flags)
    {
        const uint NoReplace = 1, Exchange = 2;
        if ((flags & ~(NoReplace | Exchange)) != 0) return Errno.EINVAL;
        byte* cn = stackalloc byte[256], cn2 = stackalloc byte[256];
        int err = Parent(parent, name, cn, out var p);
        if (err == 0) err = Parent(newParent, newName, cn2, out var _);
        if (err != 0) return err;
        var np = Get(newParent);
        if (np == null) return Errno.ENOENT;
        return Native.RenameAt2(p!.Fd, cn, np.Fd, cn2, flags) == 0 ? 0 : Err();
    }

    public int Link(in FuseContext c, ulong node, ulong newParent, ReadOnlySpan<byte> newName, out FuseEntryOut entry)
    {
        entry = default;
        if (IsVirtual(node)) return Errno.EPERM;
        byte* cn = stackalloc byte[256];
        int err = Parent(newParent, newName, cn, out var p);
        if (err != 0) return err;
        var n = Get(node);
        if (n == null) return Errno.ENOENT;
        if (Native.LinkAt(n.Fd, Native.EmptyPath, p!.Fd, cn, Native.AT_EMPTY_PATH) != 0)
        {
            // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; without it, link through the /proc magic link.
            if (Err() != Errno.ENOENT && Err() != Errno.EPERM || n.Type == S_IFLNK) return Err();
            byte* path = stackalloc byte[32];
            Native.FdPath(n.Fd, new Span<byte>(path, 32));
            if (Native.LinkAt(Fd.Cwd, path, p.Fd, cn, Native.AT_SYMLINK_FOLLOW) != 0) return Err();
        }
        return LookupReal(p, cn, newName, out entry);
    }

    public int Create(in FuseContext c, ulong parent, ReadOnlySpan<byte> name, uint flags, uint mode, out FuseEntryOut entry, out FuseOpenOut open)
    {
        entry = default;
        open = default;
        byte* cn = stackalloc byte[256];
        int err = Parent(parent, name, cn, out var p);
        if (err != 0) return err;
        int baseFlags = ((int)flags & ~StripFlags) | Native.O_CLOEXEC | Native.O_NOFOLLOW;
        bool created = true;
        var fd = Native.OpenAt(p!.Fd, cn, baseFlags | Native.O_CREAT | Native.O_EXCL, mode & 0xFFF);
        if (fd.IsInvalid && Err() == Errno.EEXIST && ((int)flags & Native.O_EXCL) == 0)
        {
            created = false;
            fd = Native.OpenAt(p.Fd, cn, baseFlags, 0);
        }
        if (fd.IsInvalid) return Err();
        byte* path = stackalloc byte[32];
        Native.FdPath(fd, new Span<byte>(path, 32));
        var pathFd = Native.Open(path, Native.O_PATH | Native.O_CLOEXEC, 0);
        if (pathFd.IsInvalid) { err = Err(); fd.Dispose(); return err; }
        if (created) InitNew(pathFd, p, mode, in c);
        err = Register(pathFd, name, out entry);
        if (err != 0) { fd.Dispose(); return err; }
        var n = Get(entry.NodeId);
        if (n == null) { fd.Dispose(); return Errno.ENOENT; }
        if (!created && ((int)flags & Native.O_TRUNC) != 0) Volatile.Read(ref n.Cache)?.ApplyTruncate(0);
        open.Fh = AddHandle(new Handle { Node = n, Fd = fd });
        open.OpenFlags = FuseOpenOut.DirectIo;
        return 0;
    }

    private const int O_TMPFILE = 0x400000 | Native.O_DIRECTORY;

    public int Tmpfile(in FuseContext c, ulong parent, uint flags, uint mode, out FuseEntryOut entry, out FuseOpenOut open)
    {
        entry = default;
        open = default;
        if (IsVirtual(parent)) return Errno.EACCES;
        var p = Get(parent);
        if (p == null) return Errno.ENOENT;
        if (p.Type != S_IFDIR) return Errno.ENOTDIR;
        int f = ((int)flags & ~(StripFlags | O_TMPFILE | Native.O_NOFOLLOW)) | O_TMPFILE | Native.O_CLOEXEC;
        var fd = Native.OpenAt(p.Fd, Dot, f, mode & 0xFFF);
        if (fd.IsInvalid) return Err();
        byte* path = stackalloc byte[32];
        Native.FdPath(fd, new Span<byte>(path, 32));
        var pathFd = Native.Open(path, Native.O_PATH | Native.O_CLOEXEC, 0);
        if (pathFd.IsInvalid) { int e = Err(); fd.Dispose(); return e; }
        InitNew(pathFd, p, mode, in c);
        int err = Register(pathFd, ""u8, out entry);
        var n = err == 0 ? Get(entry.NodeId) : null;
        if (n == null) { fd.Dispose(); return err != 0 ? err : Errno.ENOENT; }
        open.Fh = AddHandle(new Handle { Node = n, Fd = fd });
        open.OpenFlags = FuseOpenOut.DirectIo;
        return 0;
    }
}
