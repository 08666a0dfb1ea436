namespace Lab.Fusefs;

// Attributes, links, permissions and extended attributes: GETATTR, SETATTR, READLINK, ACCESS, *XATTR.
public sealed unsafe partial class LabFileSystem
{
    public int GetAttr(in FuseContext c, ulong node, ulong? fh, out FuseAttrOut attr)
    {
        if (IsVirtual(node)) return _tree!.GetAttr(node, out attr);
        attr = default;
        attr.AttrValid = 1;
        var n = Get(node);
        if (n == null) return Errno.ENOENT;
        using var nf = Pin(n, out int err);
        if (nf.Fd == null) return err;
        err = Stat(nf.Fd, out var st);
        if (err != 0) return err;
        FillAttr(in st, out attr.Attr);
        var cache = Volatile.Read(ref n.Cache);
        if (cache != null) attr.Attr.Size = (ulong)cache.Size;
        return 0;
    }

    public int SetAttr(in FuseContext c, ulong node, in FuseSetAttrIn s, out FuseAttrOut attr)
    {
        attr = default;
        if (IsVirtual(node)) return Errno.EPERM;
        var n = Get(node);
        if (n == null) return Errno.ENOENT;
        using var nf = Pin(n, out int perr); // held while its /proc path is used
        if (nf.Fd == null) return perr;
        byte* path = stackalloc byte[32];
        Native.FdPath(nf.Fd, new Span<byte>(path, 32));
        bool link = n.Type == S_IFLNK;
        if ((s.Valid & FuseFattr.Mode) != 0)
        {
            if (link) return Errno.EOPNOTSUPP;
            if (Native.FChmodAt(Fd.Cwd, path, s.Mode & 0xFFF, 0) != 0) return Err();
        }
        if ((s.Valid & (FuseFattr.Uid | FuseFattr.Gid)) != 0)
        {
            uint uid = (s.Valid & FuseFattr.Uid) != 0 ? s.Uid : uint.MaxValue;
            uint gid = (s.Valid & FuseFattr.Gid) != 0 ? s.Gid : uint.MaxValue;
            if (Native.FChownAt(nf.Fd, Native.EmptyPath, uid, gid, Native.AT_EMPTY_PATH | Native.AT_SYMLINK_NOFOLLOW) != 0) return Err();
        }
        if ((s.Valid & FuseFattr.Size) != 0)
        {
            if (n.Type == S_IFDIR) return Errno.EISDIR;
            if (n.Type != S_IFREG) return Errno.EINVAL;
            if (s.Size > long.MaxValue) return Errno.EFBIG;
            int err = TruncateNode(n, (long)s.Size, (s.Valid & FuseFattr.Fh) != 0 ? s.Fh : 0, path);
            if (err != 0) return err;
        }
        if ((s.Valid & (FuseFattr.Atime | FuseFattr.Mtime | FuseFattr.AtimeNow | FuseFattr.MtimeNow)) != 0)
        {
            var ts = stackalloc Native.Timespec[2];
            ts[0] = Time(s.Valid, FuseFattr.Atime, FuseFattr.AtimeNow, s.Atime, s.AtimeNsec);
            ts[1] = Time(s.Valid, FuseFattr.Mtime, FuseFattr.MtimeNow, s.Mtime, s.MtimeNsec);
            int rc = link
                ? Native.UtimensAt(nf.Fd, Native.EmptyPath, ts, Native.AT_EMPTY_PATH | Native.AT_SYMLINK_NOFOLLOW)
                : Native.UtimensAt(Fd.Cwd, path, ts, 0);
            if (rc != 0) return Err();
        }
        return GetAttr(in c, node, null, out attr);
    }

    private static Native.Timespec Time(uint valid, uint set, uint now, ulong sec, uint nsec) =>
        (valid & now) != 0 ? new Native.Timespec { Sec = 0, Nsec = Native.UTIME_NOW }
        : (valid & set) != 0 ? new Native.Timespec { Sec = (long)sec, Nsec = nsec }
        : new Native.Timespec { Sec = 0, Nsec = Native.UTIME_OMIT };

    private int TruncateNode(Node n, long size, ulong fh, byte* path)
    {
        var cache = Volatile.Read(ref n.Cache);
        if (cache != null && cache.Truncate(size) == 0) return 0;
        int rc;
        if (fh != 0 && _handles.TryGetValue(fh, out var h) && h.Fd != null && Native.FTruncate(h.Fd, size) == 0) rc = 0;
        else rc = Native.Truncate(path, size) == 0 ? 0 : Err();
        if (rc == 0) Volatile.Read(ref n.Cache)?.ApplyTruncate(size); // a cache made meanwhile
        return rc;
    }

    public int ReadLink(in FuseContext c, ulong node, Span<byte> dest, out int length)
    {
        if (IsVirtual(node)) return _tree!.ReadLink(node, dest, out length);
        length = 0;
        var n = Get(node);
        if (n == null) return Errno.ENOENT;
        using var nf = Pin(n, out int err);
        if (nf.Fd == null) return err;
        fixed (byte* d = dest)
        {
            nint r = Native.ReadlinkAt(nf.Fd, Native.EmptyPath, d, (nuint)dest.Length);
            if (r < 0) return Err();
            length = (int)r;
        }
        return 0;
    }

    public int Access(in FuseContext c, ulong node, int mask)
    {
        if (IsVirtual(node)) return LabTree.Access(mask);
        var n = Get(node);
        if (n == null) return Errno.ENOENT;
        if (n.Type == S_IFLNK) return 0;
        using var nf = Pin(n, out int err);
        if (nf.Fd == null) return err;
        byte* path = stackalloc byte[32];
        Native.FdPath(nf.Fd, new Span<byte>(path, 32));
        return Native.FAccessAt(Fd.Cwd, path, mask, 0) == 0 ? 0 : Err();
    }

    // The node's fd is pinned in nf while its /proc path is used.
    private int XattrTarget(ulong node, byte* path, out bool isVirtual, out NodeFd nf)
    {
        nf = default;
        isVirtual = IsVirtual(node);
        if (isVirtual) return 0;
        var n = Get(node);
        if (n == null) return Errno.ENOENT;
        if (n.Type == S_IFLNK) return Errno.EOPNOTSUPP; // /proc/self/fd would follow it
        nf = Pin(n, out int err);
        if (nf.Fd == null) return err;
        Native.FdPath(nf.Fd, new Span<byte>(path, 32));
        return 0;
    }

    /// <summary>The target as above and the attribute name NUL-terminated in <paramref name="xn"/> (256
    /// bytes); a .lab node gets <paramref name="onLab"/>: its files have no attributes and take none.</summary>
    private int XattrTarget(ulong node, ReadOnlySpan<byte> name, byte* path, byte* xn, int onLab, out NodeFd nf)
    {
        int err = XattrTarget(node, path, out bool v, out nf);
        if (err != 0) return err;
        if (v) return onLab;
        if (name.Length == 0 || name.Length > 255) return Errno.ERANGE;
        name.CopyTo(new Span<byte>(xn, 256));
        xn[name.Length] = 0;
        return 0;
    }

    public int GetXattr(in FuseContext c, ulong node, ReadOnlySpan<byte> name, Span<byte> dest, out int size)
    {
        size = 0;
        byte* path = stackalloc byte[32], xn = stackalloc byte[256];
        int err = XattrTarget(node, name, path, xn, Errno.ENODATA, out var nf);
        using var pinned = nf;
        if (err != 0) return err;
        fixed (byte* d = dest)
        {
            nint r = Native.GetXattr(path, xn, dest.Length == 0 ? null : d, (nuint)dest.Length);
            if (r < 0) return Err();
            size = (int)r;
        }
        return 0;
    }

    public int SetXattr(in FuseContext c, ulong node, ReadOnlySpan<byte> name, ReadOnlySpan<byte> value, int flags)
    {
        byte* path = stackalloc byte[32], xn = stackalloc byte[256];
        int err = XattrTarget(node, name, path, xn, Errno.EPERM, out var nf);
        using var pinned = nf;
        if (err != 0) return err;
        fixed (byte* val = value)
            return Native.SetXattr(path, xn, val, (nuint)value.Length, flags) == 0 ? 0 : Err();
    }

    public int ListXattr(in FuseContext c, ulong node, Span<byte> dest, out int size)
    {
        size = 0;
        byte* path = stackalloc byte[32];
        int err = XattrTarget(node, path, out bool v, out var nf);
        using var pinned = nf;
        if (err != 0) return err == Errno.EOPNOTSUPP ? 0 : err;
        if (v) return 0;
        fixed (byte* d = dest)
        {
            nint r = Native.ListXattr(path, dest.Length == 0 ? null : d, (nuint)dest.Length);
            if (r < 0) return Err();
            size = (int)r;
        }
        return 0;
    }

    public int RemoveXattr(in FuseContext c, ulong node, ReadOnlySpan<byte> name)
    {
        byte* path = stackalloc byte[32], xn = stackalloc byte[256];
        int err = XattrTarget(node, name, path, xn, Errno.EPERM, out var nf);
        using var pinned = nf;
        if (err != 0) return err;
        return Native.RemoveXattr(path, xn) == 0 ? 0 : Err();
    }
}
