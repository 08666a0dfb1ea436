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
        using var pf = Pin(p!, out err);
        if (pf.Fd == null) return err;
        if (Native.SymlinkAt(t, pf.Fd, cn) != 0) return Err();
        return Created(pf.Fd, cn, name, in c, S_IFLNK, NoMode, out entry);
    }

    /// <summary>After creating (dir, name) as a <paramref name="type"/>: give it the owner and mode the
    /// kernel gives a node its caller makes (InitNew), answer its entry. All on a descriptor of what the
    /// name holds now: when the backing side swapped it meanwhile (a symlink renamed over it), that is
    /// answered as it is and changed in nothing.</summary>
    private int Created(Fd dir, byte* cn, ReadOnlySpan<byte> name, in FuseContext c, uint type, uint mode, out FuseEntryOut entry)
    {
        var fd = OpenBeneath(dir, cn, Native.O_PATH, 0);
        if (fd.IsInvalid) { entry = default; return Err(); }
        if (Stat(fd, out var st) == 0 && (st.Mode & S_IFMT) == type) InitNew(fd, dir, mode, in c);
        return Register(fd, name, out entry);
    }

    /// <summary>chmod of an O_PATH fd's own inode (not a symlink: its type was checked): fchmodat2 with
    /// AT_EMPTY_PATH, or before Linux 6.6 through its /proc magic link, which is that inode, never a name.</summary>
    private static int ChmodFd(Fd fd, uint mode)
    {
        if (Native.FChmodAt2(fd, Native.EmptyPath, mode, Native.AT_EMPTY_PATH) == 0) return 0;
        if (Err() != Errno.ENOSYS && Err() != Errno.EINVAL) return Err();
        byte* path = stackalloc byte[32];
        Native.FdPath(fd, new Span<byte>(path, 32));
        return Native.FChmodAt(Fd.Cwd, path, mode, 0) == 0 ? 0 : Err();
    }

    public int Mknod(in FuseContext c, ulong parent, ReadOnlySpan<byte> name, uint mode, uint rdev, out FuseEntryOut entry)
    {
        entry = default;
        byte* cn = stackalloc byte[256];
        int err = Parent(parent, name, cn, out var p);
        if (err != 0) return err;
        using var pf = Pin(p!, out err);
        if (pf.Fd == null) return err;
        // Device nodes too: the kernel lets only a CAP_MKNOD caller ask, and the mount is nodev (FuseMount).
        if (Native.MknodAt(pf.Fd, cn, mode, DevT(rdev)) != 0) return Err();
        return Created(pf.Fd, cn, name, in c, mode & S_IFMT, mode, out entry);
    }

    public int Mkdir(in FuseContext c, ulong parent, ReadOnlySpan<byte> name, uint mode, out FuseEntryOut entry)
    {
        entry = default;
        byte* cn = stackalloc byte[256];
        int err = Parent(parent, name, cn, out var p);
        if (err != 0) return err;
        using var pf = Pin(p!, out err);
        if (pf.Fd == null) return err;
        if (Native.MkdirAt(pf.Fd, cn, mode & 0xFFF) != 0) return Err();
        return Created(pf.Fd, cn, name, in c, S_IFDIR, mode, out entry);
    }

    public int Unlink(in FuseContext c, ulong parent, ReadOnlySpan<byte> name) => Remove(parent, name, 0);
    public int Rmdir(in FuseContext c, ulong parent, ReadOnlySpan<byte> name) => Remove(parent, name, Native.AT_REMOVEDIR);

    private int Remove(ulong parent, ReadOnlySpan<byte> name, int flags)
    {
        byte* cn = stackalloc byte[256];
        int err = Parent(parent, name, cn, out var p);
        if (err != 0) return err;
        using var pf = Pin(p!, out err);
        if (pf.Fd == null) return err;
        return Native.UnlinkAt(pf.Fd, cn, flags) == 0 ? 0 : Err();
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
        using var pf = Pin(p!, out err);
        if (pf.Fd == null) return err;
        using var npf = Pin(np, out err);
        if (npf.Fd == null) return err;
        return Native.RenameAt2(pf.Fd, cn, npf.Fd, cn2, flags) == 0 ? 0 : Err();
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
        using var nf = Pin(n, out err);
        if (nf.Fd == null) return err;
        using var pf = Pin(p!, out err);
        if (pf.Fd == null) return err;
        if (Native.LinkAt(nf.Fd, Native.EmptyPath, pf.Fd, cn, Native.AT_EMPTY_PATH) != 0)
        {
            // AT_EMPTY_PATH needs CAP_DAC_READ_SEARCH; without it, link through the /proc magic link.
            if (Err() != Errno.ENOENT && Err() != Errno.EPERM || n.Type == S_IFLNK) return Err();
            byte* path = stackalloc byte[32];
            Native.FdPath(nf.Fd, new Span<byte>(path, 32));
            if (Native.LinkAt(Fd.Cwd, path, pf.Fd, cn, Native.AT_SYMLINK_FOLLOW) != 0) return Err();
        }
        // The link is made: answer with the linked inode itself (not whatever the new name holds by now).
        return LookupAgain(n, nf.Fd, out entry);
    }

    /// <summary>One more lookup of a known node, answered from its pinned fd (no name, nothing to fail
    /// on but the stat); ENOENT when it left the tables meanwhile.</summary>
    private int LookupAgain(Node n, Fd fd, out FuseEntryOut entry)
    {
        entry = default;
        int err = Stat(fd, out var st);
        if (err != 0) return err;
        FillAttr(in st, out var attr);
        lock (_nodesLock)
        {
            if (!_byId.TryGetValue(n.Id, out var cur) || cur != n) return Errno.ENOENT;
            n.Lookups++;
        }
        var cache = Volatile.Read(ref n.Cache);
        if (cache != null) attr.Size = (ulong)cache.Size;
        Entry(n.Id, in attr, out entry);
        return 0;
    }

    public int Create(in FuseContext c, ulong parent, ReadOnlySpan<byte> name, uint flags, uint mode, out FuseEntryOut entry, out FuseOpenOut open)
    {
        entry = default;
        open = default;
        byte* cn = stackalloc byte[256];
        int err = Parent(parent, name, cn, out var p);
        if (err != 0) return err;
        int baseFlags = (int)flags & ~StripFlags;
        bool created = true;
        using var pf = Pin(p!, out err);
        if (pf.Fd == null) return err;
        var fd = OpenBeneath(pf.Fd, cn, baseFlags | Native.O_CREAT | Native.O_EXCL, mode & 0xFFF);
        if (fd.IsInvalid && Err() == Errno.EEXIST && ((int)flags & Native.O_EXCL) == 0)
        {
            created = false;
            fd.Dispose();
            fd = OpenBeneath(pf.Fd, cn, baseFlags, 0);
        }
        if (fd.IsInvalid) return Err();
        // From here the file exists (maybe made by us): what follows works on its descriptor, and a
        // failure only after creating it does not make the create fail, as long as it can be answered.
        if (created) InitNew(fd, pf.Fd, mode, in c);
        var pathFd = Reopen(fd, Native.O_PATH);
        if (pathFd.IsInvalid) { err = Err(); fd.Dispose(); return err; }
        err = Register(pathFd, name, out entry, hold: true);
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
        using var pf = Pin(p, out int err);
        if (pf.Fd == null) return err;
        var fd = Native.OpenAt(pf.Fd, Dot, f, mode & 0xFFF); // "." is the directory itself, never a link
        if (fd.IsInvalid) return Err();
        InitNew(fd, pf.Fd, mode, in c);
        var pathFd = Reopen(fd, Native.O_PATH);
        if (pathFd.IsInvalid) { int e = Err(); fd.Dispose(); return e; }
        err = Register(pathFd, ""u8, out entry, hold: true);
        var n = err == 0 ? Get(entry.NodeId) : null;
        if (n == null) { fd.Dispose(); return err != 0 ? err : Errno.ENOENT; }
        open.Fh = AddHandle(new Handle { Node = n, Fd = fd });
        open.OpenFlags = FuseOpenOut.DirectIo;
        return 0;
    }
}
