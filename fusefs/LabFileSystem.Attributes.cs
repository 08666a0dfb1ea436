namespace Lab.Fusefs;

// Attributes, links, permissions and extended attributes: GETATTR, SETATTR, READLINK, ACCESS, *XATTR.
public sealed unsafe partial class LabFileSystem
{
    private const uint S_ISUID = 0x800, S_ISGID = 0x400, S_IXGRP = 0x8;
    private int _aclProbe; // 0: not probed, 1: the backing stores POSIX ACLs, 2: it does not

    /// <summary>True when the backing file system stores POSIX ACLs (probed once on the backing root: a
    /// getxattr of system.posix_acl_access that is not EOPNOTSUPP). Only then may the kernel enforce them
    /// through us; on a backing side without them every permission check would fail.</summary>
    public bool SupportsPosixAcl
    {
        get
        {
            if (Volatile.Read(ref _aclProbe) == 0)
            {
                byte* path = stackalloc byte[32];
                Native.FdPath(_rootFd, new Span<byte>(path, 32));
                bool ok;
                fixed (byte* name = "system.posix_acl_access\0"u8)
                    ok = Native.GetXattr(path, name, null, 0) >= 0 || Errno.Last != Errno.EOPNOTSUPP;
                Volatile.Write(ref _aclProbe, ok ? 1 : 2);
            }
            return _aclProbe == 1;
        }
    }

    /// <summary>FUSE's rdev (the kernel's new_encode_dev: minor's low byte, 12 bits of major, the rest of
    /// minor) as glibc's dev_t, which mknodat takes.</summary>
    private static ulong DevT(uint rdev)
    {
        ulong major = (rdev & 0xfff00) >> 8, minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
        return ((major & 0xfff) << 8) | (minor & 0xff) | ((major & ~0xfffUL) << 32) | ((minor & ~0xffUL) << 12);
    }

    private static bool IsAclName(ReadOnlySpan<byte> name) => name.StartsWith("system.posix_acl_"u8);

    private const uint NoMode = uint.MaxValue; // InitNew: a symlink, whose mode is not set

    /// <summary>
    /// Gives a node we just made (as root) the owner and mode the kernel gives a node its caller makes:
    /// the caller's uid; the parent's group when the parent is set-group-ID (and S_ISGID to a directory),
    /// else the caller's; the mode less the caller's umask, unless the parent has a default ACL, which the
    /// backing file system applied instead. The chown comes first: a chown clears S_ISUID, which the
    /// caller may have asked for. The kernel already dropped an S_ISGID the caller may not set.
    /// </summary>
    private void InitNew(Fd fd, Fd parent, uint mode, in FuseContext c)
    {
        if (Stat(parent, out var pst) != 0 || Stat(fd, out var st) != 0) return;
        bool sgidDir = (pst.Mode & S_ISGID) != 0;
        uint gid = sgidDir ? pst.Gid : c.Gid;
        if (st.Uid != c.Uid || st.Gid != gid)
            Native.FChownAt(fd, Native.EmptyPath, c.Uid, gid, Native.AT_EMPTY_PATH | Native.AT_SYMLINK_NOFOLLOW);
        uint type = (uint)st.Mode & S_IFMT;
        if (mode == NoMode || type == S_IFLNK) return;
        uint want;
        if (HasDefaultAcl(parent)) want = (uint)st.Mode & 0xFFF; // as made, before the chown
        else
        {
            want = mode & 0xFFF & ~(c.Umask & 0x1FF);
            if (type == S_IFDIR && sgidDir) want |= S_ISGID;
        }
        if (Stat(fd, out var now) == 0 && ((uint)now.Mode & 0xFFF) == want) return;
        ChmodFd(fd, want);
    }

    private bool HasDefaultAcl(Fd dir)
    {
        if (!SupportsPosixAcl) return false;
        byte* path = stackalloc byte[32];
        Native.FdPath(dir, new Span<byte>(path, 32));
        fixed (byte* name = "system.posix_acl_default\0"u8)
            return Native.GetXattr(path, name, null, 0) > 0;
    }

    /// <summary>Whether the caller of a request is in group <paramref name="gid"/>: its fsgid, or one of the
    /// supplementary groups of its thread (/proc/PID/status); false when they cannot be read.</summary>
    private static bool InGroup(in FuseContext c, uint gid)
    {
        if (c.Gid == gid) return true;
        if (c.Pid == 0) return false;
        try
        {
            foreach (var line in File.ReadLines($"/proc/{c.Pid}/status"))
                if (line.StartsWith("Groups:", StringComparison.Ordinal))
                    return line[7..].Split(' ', '\t', StringSplitOptions.RemoveEmptyEntries)
                                    .Any(g => uint.TryParse(g, out var v) && v == gid);
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return false;
    }

    /// <summary>FUSE_WRITE_KILL_SUIDGID: the writer lacks CAP_FSETID. The kernel's rule for such a write
    /// (setattr_should_drop_suidgid): S_ISUID goes; S_ISGID goes when the group may execute, or when the
    /// writer is not in the file's group. Our own write is root's, which keeps both, so we clear them.</summary>
    public int KillSuidGid(in FuseContext c, ulong node)
    {
        if (IsVirtual(node)) return 0;
        var n = Get(node);
        if (n == null) return Errno.ENOENT;
        return n.Type == S_IFREG ? KillPrivs(n, in c, capable: false) : 0;
    }

    public bool HandlesKillPriv => true;

    private int KillPrivs(Node n, in FuseContext c, bool capable)
    {
        using var nf = Pin(n, out int err);
        if (nf.Fd == null) return err;
        err = Stat(nf.Fd, out var st);
        if (err != 0) return err;
        uint mode = (uint)st.Mode & 0xFFF;
        uint kill = mode & S_ISUID;
        if ((mode & S_ISGID) != 0 && ((mode & S_IXGRP) != 0 || !capable && !InGroup(in c, st.Gid))) kill |= S_ISGID;
        if (kill == 0) return 0;
        // EPERM: a daemon that is not root (fusermount3) and not the owner; its own write or truncate,
        // without CAP_FSETID, has the backing kernel clear the bits.
        err = ChmodFd(nf.Fd, mode & ~kill);
        return err == Errno.EPERM ? 0 : err;
    }

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
        if ((s.Valid & FuseFattr.KillSuidgid) != 0 && n.Type == S_IFREG)
        {
            // A chown by anyone, or a truncate by a caller without CAP_FSETID (the kernel sends the flag only
            // then). Root is taken as holding CAP_FSETID: it decides only an S_ISGID without group execute.
            int err = KillPrivs(n, in c, c.Uid == 0);
            if (err != 0) return err;
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
        // A symlink has no ACL: the kernel, which asks for one when it checks permissions, must hear ENODATA.
        if (err == Errno.EOPNOTSUPP && IsAclName(name)) return Errno.ENODATA;
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
