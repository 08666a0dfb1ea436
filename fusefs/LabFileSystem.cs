using System.Collections.Concurrent;
using System.Text;

namespace Lab.Fusefs;

/// <summary>
/// The lab file system: a pass-through to a backing directory. Each node holds an O_PATH fd of its
/// backing inode and every name is resolved relative to its parent's fd (one component, no '/',
/// symlinks not followed), so nothing escapes the backing directory. One node per backing inode
/// (hard links share it); attributes report the backing st_ino. Regular files are opened
/// direct-io so every read and write comes here, where the file's <see cref="CachedFile"/>, when
/// it exists, is authoritative. The virtual <c>.lab/</c> directory comes from an <see cref="ILabDirectory"/>.
/// </summary>
public sealed unsafe class LabFileSystem : IFuseFileSystem, IDisposable
{
    // Node ids: [2, FirstRealId) are the virtual .lab nodes (2 and 3 fixed, the rest allocated from
    // LabFileBase per path), FirstRealId.. the backing nodes, so the two never meet.
    private const ulong RootId = 1, LabDirId = 2, ControlId = 3, LabFileBase = 16;
    private const ulong FirstRealId = 1UL << 32;
    private const ulong VirtualInoBase = 1UL << 62;
    // Inos of .lab entries listed but not looked up (no node id yet): above every allocated id's ino.
    private const ulong UnboundInoBase = VirtualInoBase + FirstRealId;
    private const uint S_IFMT = 0xF000, S_IFDIR = 0x4000, S_IFREG = 0x8000, S_IFLNK = 0xA000;
    private const uint S_IFIFO = 0x1000, S_IFSOCK = 0xC000;
    private static ReadOnlySpan<byte> LabName => ".lab"u8;

    private sealed class Node
    {
        public readonly ulong Id, Dev, Ino;
        public readonly uint Type;
        public readonly int Fd; // O_PATH
        public long Lookups;
        public string Name;
        public CachedFile? Cache;
        public Node(ulong id, ulong dev, ulong ino, uint type, int fd, string name)
        { Id = id; Dev = dev; Ino = ino; Type = type; Fd = fd; Name = name; }
    }

    /// <summary>A virtual node under .lab: one path and type, kept while the kernel holds a lookup on it.</summary>
    private sealed class VNode
    {
        public readonly ulong Id;
        public readonly string Path; // relative to .lab, "" for .lab itself
        public readonly uint Type;   // S_IFDIR, S_IFREG or S_IFLNK (control)
        public long Lookups;
        public VNode(ulong id, string path, uint type) { Id = id; Path = path; Type = type; }
    }

    private struct DirEnt { public int NameStart, NameLen; public ulong Ino; public uint Type; }

    private sealed class Handle
    {
        public Node? Node;
        public int Fd = -1;
        public byte[]? Virtual;          // rendered .lab file
        public VNode? VDir;              // a directory under .lab
        public bool Served;              // a READDIR came (the snapshot of OPENDIR is used once)
        public List<DirEnt>? Entries;    // directory snapshot
        public byte[] Names = [];
        public readonly object Gate = new();
    }

    private readonly ILabDirectory? _lab;
    private readonly object _nodesLock = new(); // guards the node tables only, never held over I/O of pages
    private readonly Dictionary<ulong, Node> _byId = new();
    private readonly Dictionary<(ulong Dev, ulong Ino), Node> _byKey = new();
    private readonly Dictionary<ulong, Node> _byIno = new();
    private readonly ConcurrentDictionary<ulong, Handle> _handles = new();
    private readonly object _labLock = new(); // guards the virtual tables; never taken for backing nodes
    private readonly Dictionary<ulong, VNode> _vById = new();
    private readonly Dictionary<string, VNode> _vByPath = new(StringComparer.Ordinal);
    private ulong _nextVirtualId = LabFileBase;
    private readonly Node _root;
    private readonly uint _uid = Native.GetEuid(), _gid = Native.GetEgid();
    private IFuseNotifier? _notifier;
    private ulong _nextId = FirstRealId;
    private long _nextFh = 1;
    private bool _disposed;

    public string BackingDir { get; }

    public LabFileSystem(string backingDir, ILabDirectory? labDir)
    {
        BackingDir = Path.GetFullPath(backingDir);
        _lab = labDir;
        int fd = Native.Open(BackingDir, Native.O_PATH | Native.O_DIRECTORY | Native.O_CLOEXEC, 0);
        if (fd < 0) throw new IOException($"backing directory {BackingDir}: {Native.StrError(Native.Errno)}");
        Native.Statx st;
        if (Native.StatxAt(fd, Native.EmptyPath, Native.AT_EMPTY_PATH, Native.STATX_BASIC_STATS, &st) != 0)
        {
            Native.Close(fd);
            throw new IOException($"backing directory {BackingDir}: {Native.StrError(Native.Errno)}");
        }
        _root = new Node(RootId, st.Dev, st.Ino, S_IFDIR, fd, "") { Lookups = 1 };
        _byId[RootId] = _root;
        _byKey[(st.Dev, st.Ino)] = _root;
        _byIno[st.Ino] = _root;
        var labDirNode = new VNode(LabDirId, "", S_IFDIR);
        _vById[LabDirId] = labDirNode;
        _vByPath[""] = labDirNode;
        _vById[ControlId] = new VNode(ControlId, "control", S_IFLNK); // not by path: the provider's "control" is never asked
    }

    // ---------------- helpers ----------------

    private static int Err() => Native.Errno;

    /// <summary>Copies one path component into dst (256 bytes) with its NUL; 0 or an errno.</summary>
    private static int CName(ReadOnlySpan<byte> name, byte* dst)
    {
        if (name.Length == 0) return Errno.ENOENT;
        if (name.Length > 255) return Errno.ENAMETOOLONG;
        if (name.IndexOfAny((byte)'/', (byte)0) >= 0) return Errno.EINVAL;
        if (name.SequenceEqual("."u8) || name.SequenceEqual(".."u8)) return Errno.EINVAL;
        name.CopyTo(new Span<byte>(dst, 256));
        dst[name.Length] = 0;
        return 0;
    }

    private Node? Get(ulong id)
    {
        lock (_nodesLock) return _byId.GetValueOrDefault(id);
    }

    // By range only, so the backing nodes' requests take no lock here.
    private bool IsVirtual(ulong id) => _lab != null && id >= LabDirId && id < FirstRealId;

    private bool IsLabName(ulong parent, ReadOnlySpan<byte> name) =>
        _lab != null && parent == RootId && name.SequenceEqual(LabName);

    /// <summary>The errno for changing a name in (parent, name) when that touches .lab.</summary>
    private int Protected(ulong parent, ReadOnlySpan<byte> name) =>
        IsVirtual(parent) ? Errno.EACCES : IsLabName(parent, name) ? Errno.EACCES : 0;

    private static int Stat(int fd, out Native.Statx st)
    {
        fixed (Native.Statx* p = &st)
            return Native.StatxAt(fd, Native.EmptyPath, Native.AT_EMPTY_PATH | Native.AT_SYMLINK_NOFOLLOW,
                                  Native.STATX_BASIC_STATS, p) == 0 ? 0 : Err();
    }

    private static void FillAttr(in Native.Statx st, out FuseAttr a)
    {
        a = default;
        a.Ino = st.Ino;
        a.Size = st.Size;
        a.Blocks = st.Blocks;
        a.Atime = (ulong)st.AtimeSec; a.AtimeNsec = st.AtimeNsec;
        a.Mtime = (ulong)st.MtimeSec; a.MtimeNsec = st.MtimeNsec;
        a.Ctime = (ulong)st.CtimeSec; a.CtimeNsec = st.CtimeNsec;
        a.Mode = st.Mode;
        a.Nlink = st.Nlink;
        a.Uid = st.Uid;
        a.Gid = st.Gid;
        // new_encode_dev, as the kernel decodes fuse_attr.rdev
        a.Rdev = (st.RdevMinor & 0xff) | (st.RdevMajor << 8) | ((st.RdevMinor & ~0xffu) << 12);
        a.BlkSize = st.Blksize;
    }

    private static void Entry(ulong id, in FuseAttr attr, out FuseEntryOut e)
    {
        e = default;
        e.NodeId = id;
        e.EntryValid = 1;
        e.AttrValid = 1;
        e.Attr = attr;
    }

    /// <summary>Registers (or finds) the node of an O_PATH fd and counts one lookup. Takes ownership of fd.</summary>
    private int Register(int fd, ReadOnlySpan<byte> name, out FuseEntryOut e)
    {
        int err = Stat(fd, out var st);
        if (err != 0) { Native.Close(fd); e = default; return err; }
        FillAttr(in st, out var attr);
        Node node;
        lock (_nodesLock)
        {
            if (_byKey.TryGetValue((st.Dev, st.Ino), out var existing))
            {
                node = existing;
                node.Lookups++;
            }
            else
            {
                node = new Node(_nextId++, st.Dev, st.Ino, st.Mode & S_IFMT, fd, Encoding.UTF8.GetString(name)) { Lookups = 1 };
                _byId[node.Id] = node;
                _byKey[(st.Dev, st.Ino)] = node;
                _byIno.TryAdd(st.Ino, node);
                fd = -1;
            }
        }
        Native.CloseQuiet(fd);
        // Sizes come from the cache when it exists (its writes are already in the file, but keep one truth).
        var cache = Volatile.Read(ref node.Cache);
        if (cache != null) attr.Size = (ulong)cache.Size;
        Entry(node.Id, in attr, out e);
        return 0;
    }

    private int LookupReal(Node parent, byte* cname, ReadOnlySpan<byte> name, out FuseEntryOut e)
    {
        int fd = Native.OpenAt(parent.Fd, cname, Native.O_PATH | Native.O_NOFOLLOW | Native.O_CLOEXEC, 0);
        if (fd < 0) { e = default; return Err(); }
        return Register(fd, name, out e);
    }

    private void ChownToCaller(int fd, in FuseContext c)
    {
        if (c.Uid != _uid || c.Gid != _gid)
            Native.FChownAt(fd, Native.EmptyPath, c.Uid, c.Gid, Native.AT_EMPTY_PATH | Native.AT_SYMLINK_NOFOLLOW);
    }

    // ---------------- virtual .lab ----------------

    private VNode? GetV(ulong id)
    {
        lock (_labLock) return _vById.GetValueOrDefault(id);
    }

    private static ulong InoOf(VNode v) => VirtualInoBase + v.Id;

    private void VirtualAttr(VNode v, out FuseAttr a)
    {
        a = default;
        a.Ino = InoOf(v);
        a.Uid = _uid;
        a.Gid = _gid;
        a.BlkSize = 4096;
        long now = DateTimeOffset.UtcNow.ToUnixTimeSeconds();
        a.Atime = a.Mtime = a.Ctime = (ulong)now;
        if (v.Type == S_IFDIR) { a.Mode = S_IFDIR | 0x16D /*0555*/; a.Nlink = 2; }
        else if (v.Type == S_IFLNK)
        {
            a.Mode = S_IFLNK | 0x1FF; a.Nlink = 1;
            a.Size = (ulong)Encoding.UTF8.GetByteCount(_lab?.ControlSocketPath ?? "");
        }
        else { a.Mode = S_IFREG | 0x124 /*0444*/; a.Nlink = 1; } // direct-io: size 0 is fine
    }

    // Below .lab/ the tree changes as the daemon runs (processes come and go): the kernel keeps no
    // names or attributes there, so a vanished path is gone at once.
    private static ulong VirtualValid(ulong id) => id < LabFileBase ? 1UL : 0UL;

    private void VirtualEntry(VNode v, out FuseEntryOut e)
    {
        VirtualAttr(v, out var a);
        Entry(v.Id, in a, out e);
        e.EntryValid = e.AttrValid = VirtualValid(v.Id);
    }

    /// <summary>Finds or makes the node of a path and counts one lookup. A path whose type changed gets a
    /// new id: the kernel refuses a node whose type changes.</summary>
    private VNode LookupV(string path, uint type)
    {
        lock (_labLock)
        {
            if (_vByPath.TryGetValue(path, out var v) && v.Type == type) { v.Lookups++; return v; }
            v = new VNode(AllocVirtualId(), path, type) { Lookups = 1 };
            _vById[v.Id] = v;
            _vByPath[path] = v;
            return v;
        }
    }

    // Wraps within the virtual range, skipping ids still held (under _labLock).
    private ulong AllocVirtualId()
    {
        while (true)
        {
            ulong id = _nextVirtualId++;
            if (_nextVirtualId >= FirstRealId) _nextVirtualId = LabFileBase;
            if (!_vById.ContainsKey(id)) return id;
        }
    }

    private void ForgetV(ulong id, ulong nlookup)
    {
        if (id < LabFileBase) return; // .lab and control live as long as the file system
        lock (_labLock)
        {
            if (!_vById.TryGetValue(id, out var v)) return;
            v.Lookups -= (long)Math.Min(nlookup, (ulong)long.MaxValue);
            if (v.Lookups > 0) return;
            _vById.Remove(id);
            // The path may already name a newer node (it changed type); that one stays.
            if (_vByPath.TryGetValue(v.Path, out var cur) && cur == v) _vByPath.Remove(v.Path);
        }
    }

    /// <summary>The ino of a .lab path: its node's when looked up, else a stable hash of the path.</summary>
    private ulong InoOfPath(string path, uint type)
    {
        lock (_labLock)
            if (_vByPath.TryGetValue(path, out var v) && v.Type == type) return InoOf(v);
        ulong h = 14695981039346656037UL; // FNV-1a
        foreach (char ch in path) { h ^= ch; h *= 1099511628211UL; }
        return UnboundInoBase + (h & ((1UL << 60) - 1));
    }

    private static string Child(string dir, string name) => dir.Length == 0 ? name : dir + "/" + name;

    /// <summary>A name from the provider, as the one path component it must be; null when it is not one.</summary>
    private static string? EntryName(string entry, out bool dir)
    {
        dir = entry.EndsWith('/');
        var name = dir ? entry[..^1] : entry;
        if (name.Length == 0 || name is "." or ".." || name.Contains('/') || name.Contains('\0')) return null;
        return name;
    }

    private int LookupLab(ulong parent, ReadOnlySpan<byte> name, out FuseEntryOut entry)
    {
        entry = default;
        var p = GetV(parent);
        if (p == null) return Errno.ENOENT;
        if (p.Type != S_IFDIR) return Errno.ENOTDIR;
        if (parent == LabDirId && name.SequenceEqual("control"u8))
        {
            VirtualEntry(GetV(ControlId)!, out entry);
            return 0;
        }
        Span<char> chars = stackalloc char[256];
        if (System.Text.Unicode.Utf8.ToUtf16(name, chars, out _, out int n, replaceInvalidSequences: false)
            != System.Buffers.OperationStatus.Done) return Errno.ENOENT; // the provider's names are strings
        var wanted = chars[..n];
        var list = _lab!.List(p.Path);
        if (list == null) return Errno.ENOENT; // the directory itself vanished
        uint type = 0;
        foreach (var e in list)
        {
            if (EntryName(e, out bool dir) is { } en && wanted.SequenceEqual(en)) { type = dir ? S_IFDIR : S_IFREG; break; }
        }
        if (type == 0) return Errno.ENOENT;
        VirtualEntry(LookupV(Child(p.Path, new string(wanted)), type), out entry);
        return 0;
    }

    // ---------------- IFuseFileSystem ----------------

    public int Lookup(in FuseContext c, ulong parent, ReadOnlySpan<byte> name, out FuseEntryOut entry)
    {
        entry = default;
        byte* cn = stackalloc byte[256];
        int err = CName(name, cn);
        if (err != 0) return err;
        if (IsVirtual(parent)) return LookupLab(parent, name, out entry);
        if (IsLabName(parent, name)) { VirtualEntry(GetV(LabDirId)!, out entry); return 0; }
        var p = Get(parent);
        if (p == null) return Errno.ENOENT;
        return LookupReal(p, cn, name, out entry);
    }

    public void Forget(ulong node, ulong nlookup)
    {
        if (node == RootId) return;
        if (IsVirtual(node)) { ForgetV(node, nlookup); return; }
        Node? drop = null;
        lock (_nodesLock)
        {
            if (!_byId.TryGetValue(node, out var n)) return;
            n.Lookups -= (long)Math.Min(nlookup, (ulong)long.MaxValue);
            if (n.Lookups > 0) return;
            n.Lookups = 0;
            // A node with a page cache stays while the daemon may map its memfd (unless its file is
            // gone); DropForgotten frees it once nothing can.
            if (n.Cache != null && (CachesInUse?.Invoke() ?? true) && Stat(n.Fd, out var st) == 0 && st.Nlink > 0) return;
            _byId.Remove(node);
            _byKey.Remove((n.Dev, n.Ino));
            if (_byIno.TryGetValue(n.Ino, out var same) && same == n) _byIno.Remove(n.Ino);
            drop = n;
        }
        // The node's hold only: programs may still map the deleted file (the VM objects hold the cache,
        // whose open fd keeps the backing inode, so its number is not reused while they do).
        drop.Cache?.Release();
        Native.Close(drop.Fd);
    }

    public int GetAttr(in FuseContext c, ulong node, ulong? fh, out FuseAttrOut attr)
    {
        attr = default;
        attr.AttrValid = 1;
        if (IsVirtual(node))
        {
            var v = GetV(node);
            if (v == null) return Errno.ENOENT;
            VirtualAttr(v, out attr.Attr);
            attr.AttrValid = VirtualValid(node);
            return 0;
        }
        var n = Get(node);
        if (n == null) return Errno.ENOENT;
        int err = Stat(n.Fd, out var st);
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
        byte* path = stackalloc byte[32];
        Native.FdPath(n.Fd, new Span<byte>(path, 32));
        bool link = n.Type == S_IFLNK;
        if ((s.Valid & FuseFattr.Mode) != 0)
        {
            if (link) return Errno.EOPNOTSUPP;
            if (Native.FChmodAt(Native.AT_FDCWD, path, s.Mode & 0xFFF, 0) != 0) return Err();
        }
        if ((s.Valid & (FuseFattr.Uid | FuseFattr.Gid)) != 0)
        {
            uint uid = (s.Valid & FuseFattr.Uid) != 0 ? s.Uid : uint.MaxValue;
            uint gid = (s.Valid & FuseFattr.Gid) != 0 ? s.Gid : uint.MaxValue;
            if (Native.FChownAt(n.Fd, Native.EmptyPath, uid, gid, Native.AT_EMPTY_PATH | Native.AT_SYMLINK_NOFOLLOW) != 0) return Err();
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
                ? Native.UtimensAt(n.Fd, Native.EmptyPath, ts, Native.AT_EMPTY_PATH | Native.AT_SYMLINK_NOFOLLOW)
                : Native.UtimensAt(Native.AT_FDCWD, path, ts, 0);
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
        if (fh != 0 && _handles.TryGetValue(fh, out var h) && h.Fd >= 0 && Native.FTruncate(h.Fd, size) == 0) rc = 0;
        else rc = Native.Truncate(path, size) == 0 ? 0 : Err();
        if (rc == 0) Volatile.Read(ref n.Cache)?.ApplyTruncate(size); // a cache made meanwhile
        return rc;
    }

    public int ReadLink(in FuseContext c, ulong node, Span<byte> dest, out int length)
    {
        length = 0;
        if (node == ControlId)
        {
            var target = _lab?.ControlSocketPath ?? "";
            if (Encoding.UTF8.GetByteCount(target) > dest.Length) return Errno.ENAMETOOLONG;
            length = Encoding.UTF8.GetBytes(target, dest);
            return 0;
        }
        if (IsVirtual(node)) return Errno.EINVAL;
        var n = Get(node);
        if (n == null) return Errno.ENOENT;
        fixed (byte* d = dest)
        {
            nint r = Native.ReadlinkAt(n.Fd, Native.EmptyPath, d, (nuint)dest.Length);
            if (r < 0) return Err();
            length = (int)r;
        }
        return 0;
    }

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
        return Created(p, cn, name, in c, out entry);
    }

    // After creating (parent, name): give it to the caller and answer its entry.
    private int Created(Node p, byte* cn, ReadOnlySpan<byte> name, in FuseContext c, out FuseEntryOut entry)
    {
        int fd = Native.OpenAt(p.Fd, cn, Native.O_PATH | Native.O_NOFOLLOW | Native.O_CLOEXEC, 0);
        if (fd < 0) { entry = default; return Err(); }
        ChownToCaller(fd, in c);
        return Register(fd, name, out entry);
    }

    public int Mknod(in FuseContext c, ulong parent, ReadOnlySpan<byte> name, uint mode, uint rdev, out FuseEntryOut entry)
    {
        entry = default;
        byte* cn = stackalloc byte[256];
        int err = Parent(parent, name, cn, out var p);
        if (err != 0) return err;
        uint type = mode & S_IFMT;
        if (type != S_IFREG && type != S_IFIFO && type != S_IFSOCK) return Errno.EPERM; // no devices here
        if (Native.MknodAt(p!.Fd, cn, mode, 0) != 0) return Err();
        Native.FChmodAt(p.Fd, cn, mode & 0xFFF, 0); // our umask must not narrow the caller's mode
        return Created(p, cn, name, in c, out entry);
    }

    public int Mkdir(in FuseContext c, ulong parent, ReadOnlySpan<byte> name, uint mode, out FuseEntryOut entry)
    {
        entry = default;
        byte* cn = stackalloc byte[256];
        int err = Parent(parent, name, cn, out var p);
        if (err != 0) return err;
        if (Native.MkdirAt(p!.Fd, cn, mode & 0xFFF) != 0) return Err();
        Native.FChmodAt(p.Fd, cn, mode & 0xFFF, 0);
        return Created(p, cn, name, in c, out entry);
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
            if (Native.LinkAt(Native.AT_FDCWD, path, p.Fd, cn, Native.AT_SYMLINK_FOLLOW) != 0) return Err();
        }
        return LookupReal(p, cn, newName, out entry);
    }

    private ulong AddHandle(Handle h)
    {
        ulong fh = (ulong)Interlocked.Increment(ref _nextFh);
        _handles[fh] = h;
        return fh;
    }

    // Flags the backing open must not see: creation is done by us, append and O_DIRECT would fight the
    // kernel's offsets and our unaligned buffers.
    private const int StripFlags = Native.O_CREAT | Native.O_EXCL | Native.O_NOCTTY | Native.O_APPEND | Native.O_DIRECT;

    public int Open(in FuseContext c, ulong node, uint flags, out FuseOpenOut open)
    {
        open = default;
        open.OpenFlags = FuseOpenOut.DirectIo;
        if (IsVirtual(node))
        {
            var v = GetV(node);
            if (v == null) return Errno.ENOENT;
            if (v.Type != S_IFREG) return v.Type == S_IFDIR ? Errno.EISDIR : Errno.EINVAL;
            if (((int)flags & Native.O_ACCMODE) != Native.O_RDONLY || ((int)flags & Native.O_TRUNC) != 0) return Errno.EACCES;
            var content = _lab!.Render(v.Path);
            if (content == null) return Errno.ENOENT; // gone since the lookup
            open.Fh = AddHandle(new Handle { Virtual = content });
            return 0;
        }
        var n = Get(node);
        if (n == null) return Errno.ENOENT;
        if (n.Type == S_IFDIR) return Errno.EISDIR;
        if (n.Type == S_IFLNK) return Errno.ELOOP; // the kernel follows links itself; never open one here
        byte* path = stackalloc byte[32];
        Native.FdPath(n.Fd, new Span<byte>(path, 32));
        // O_NOFOLLOW was checked by the kernel already; on the /proc magic link it would give ELOOP.
        int fd = Native.Open(path, ((int)flags & ~(StripFlags | Native.O_NOFOLLOW)) | Native.O_CLOEXEC, 0);
        if (fd < 0) return Err();
        if (((int)flags & Native.O_TRUNC) != 0) Volatile.Read(ref n.Cache)?.ApplyTruncate(0);
        open.Fh = AddHandle(new Handle { Node = n, Fd = fd });
        return 0;
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
        int fd = Native.OpenAt(p!.Fd, cn, baseFlags | Native.O_CREAT | Native.O_EXCL, mode & 0xFFF);
        if (fd < 0 && Err() == Errno.EEXIST && ((int)flags & Native.O_EXCL) == 0)
        {
            created = false;
            fd = Native.OpenAt(p.Fd, cn, baseFlags, 0);
        }
        if (fd < 0) return Err();
        if (created) Native.FChmod(fd, mode & 0xFFF); // our umask must not narrow the caller's mode
        byte* path = stackalloc byte[32];
        Native.FdPath(fd, new Span<byte>(path, 32));
        int pathFd = Native.Open(path, Native.O_PATH | Native.O_CLOEXEC, 0);
        if (pathFd < 0) { err = Err(); Native.Close(fd); return err; }
        if (created) ChownToCaller(pathFd, in c);
        err = Register(pathFd, name, out entry);
        if (err != 0) { Native.Close(fd); return err; }
        var n = Get(entry.NodeId);
        if (n == null) { Native.Close(fd); return Errno.ENOENT; }
        if (!created && ((int)flags & Native.O_TRUNC) != 0) Volatile.Read(ref n.Cache)?.ApplyTruncate(0);
        open.Fh = AddHandle(new Handle { Node = n, Fd = fd });
        open.OpenFlags = FuseOpenOut.DirectIo;
        return 0;
    }

    public int Read(in FuseContext c, ulong node, ulong fh, long offset, Span<byte> dest, out int read)
    {
        read = 0;
        if (!_handles.TryGetValue(fh, out var h)) return Errno.EBADF;
        if (h.Virtual != null)
        {
            if (offset < h.Virtual.Length)
            {
                read = (int)Math.Min(dest.Length, h.Virtual.Length - offset);
                h.Virtual.AsSpan((int)offset, read).CopyTo(dest);
            }
            return 0;
        }
        if (h.Node == null || h.Fd < 0) return Errno.EBADF;
        var cache = Volatile.Read(ref h.Node.Cache);
        if (cache != null) return cache.ReadForFuse(offset, dest, out read);
        fixed (byte* d = dest)
        {
            while (read < dest.Length)
            {
                nint r = Native.PRead(h.Fd, d + read, (nuint)(dest.Length - read), offset + read);
                if (r < 0) { int e = Err(); if (e == Errno.EINTR) continue; return read > 0 ? 0 : e; }
                if (r == 0) break;
                read += (int)r;
            }
        }
        return 0;
    }

    public int Write(in FuseContext c, ulong node, ulong fh, long offset, ReadOnlySpan<byte> data, out int written)
    {
        written = 0;
        if (!_handles.TryGetValue(fh, out var h)) return Errno.EBADF;
        if (h.Node == null || h.Fd < 0) return Errno.EBADF;
        var cache = Volatile.Read(ref h.Node.Cache);
        if (cache != null)
        {
            int e = cache.Write(h.Fd, offset, data);
            if (e == 0) written = data.Length;
            return e;
        }
        fixed (byte* s = data)
        {
            while (written < data.Length)
            {
                nint r = Native.PWrite(h.Fd, s + written, (nuint)(data.Length - written), offset + written);
                if (r < 0) { int e = Err(); if (e == Errno.EINTR) continue; if (written > 0) break; return e; }
                written += (int)r;
            }
        }
        // A cache created while we wrote may hold the old bytes of these pages.
        Volatile.Read(ref h.Node.Cache)?.ApplyWrite(offset, data[..written]);
        return 0;
    }

    public int Flush(in FuseContext c, ulong node, ulong fh)
    {
        if (_handles.TryGetValue(fh, out var h) && h.Node != null)
            return Volatile.Read(ref h.Node.Cache)?.Flush() ?? 0;
        return 0;
    }

    public void Release(in FuseContext c, ulong node, ulong fh)
    {
        if (!_handles.TryRemove(fh, out var h)) return;
        if (h.Node != null) Volatile.Read(ref h.Node.Cache)?.Flush();
        Native.CloseQuiet(h.Fd);
    }

    public int Fsync(in FuseContext c, ulong node, ulong fh, bool dataOnly)
    {
        if (!_handles.TryGetValue(fh, out var h) || h.Virtual != null) return 0;
        int e = h.Node != null ? Volatile.Read(ref h.Node.Cache)?.Flush() ?? 0 : 0;
        if (e != 0) return e;
        if (h.Fd >= 0 && (dataOnly ? Native.FDataSync(h.Fd) : Native.FSync(h.Fd)) != 0) return Err();
        return 0;
    }

    public int OpenDir(in FuseContext c, ulong node, uint flags, out FuseOpenOut open)
    {
        open = default;
        if (IsVirtual(node))
        {
            var v = GetV(node);
            if (v == null) return Errno.ENOENT;
            if (v.Type != S_IFDIR) return Errno.ENOTDIR;
            // Listed now, so a directory gone since its lookup fails the open, not a later read.
            var h = new Handle { VDir = v };
            int err = SnapshotLab(h);
            if (err != 0) return err;
            open.Fh = AddHandle(h);
            return 0;
        }
        var n = Get(node);
        if (n == null) return Errno.ENOENT;
        int fd = Native.OpenAt(n.Fd, Dot, Native.O_RDONLY | Native.O_DIRECTORY | Native.O_CLOEXEC, 0);
        if (fd < 0) return Err();
        open.Fh = AddHandle(new Handle { Node = n, Fd = fd });
        return 0;
    }

    private static readonly byte* Dot = MakeDot();
    private static byte* MakeDot()
    {
        var p = (byte*)System.Runtime.InteropServices.NativeMemory.Alloc(2);
        p[0] = (byte)'.'; p[1] = 0;
        return p;
    }

    public int ReadDir(in FuseContext c, ulong node, ulong fh, long offset, ref FuseDirWriter writer)
    {
        if (!_handles.TryGetValue(fh, out var h)) return Errno.EBADF;
        lock (h.Gate)
        {
            if (h.Entries == null || (offset == 0 && h.Served))
            {
                int err = h.VDir != null ? SnapshotLab(h) : Snapshot(h, node == RootId && _lab != null);
                if (err != 0) return err;
            }
            h.Served = true;
            var list = h.Entries!;
            for (long i = offset; i < list.Count; i++)
            {
                var d = list[(int)i];
                if (!writer.Add(h.Names.AsSpan(d.NameStart, d.NameLen), d.Ino, d.Type, (ulong)(i + 1))) break;
            }
        }
        return 0;
    }

    public bool SupportsReadDirPlus => true;

    public int ReadDirPlus(in FuseContext c, ulong node, ulong fh, long offset, ref FuseDirWriter writer)
    {
        if (!_handles.TryGetValue(fh, out var h)) return Errno.EBADF;
        byte* cn = stackalloc byte[256];
        lock (h.Gate)
        {
            bool root = node == RootId && _lab != null;
            if (h.Entries == null || (offset == 0 && h.Served))
            {
                int err = h.VDir != null ? SnapshotLab(h) : Snapshot(h, root);
                if (err != 0) return err;
            }
            h.Served = true;
            var list = h.Entries!;
            for (long i = offset; i < list.Count; i++)
            {
                var d = list[(int)i];
                var name = h.Names.AsSpan(d.NameStart, d.NameLen);
                if (!writer.Fits(name.Length)) break;
                if (h.VDir != null)
                {
                    if (LabDirEntry(h.VDir, name, d.Type, out var ve)) writer.AddPlus(in ve, name, d.Type, (ulong)(i + 1));
                    else writer.Add(name, d.Ino, d.Type, (ulong)(i + 1));
                    continue;
                }
                // . , .. and .lab go without an entry (node id 0: the kernel counts no lookup for them).
                if (h.Node == null || name.SequenceEqual("."u8) || name.SequenceEqual(".."u8)
                    || (root && name.SequenceEqual(LabName)) || CName(name, cn) != 0
                    || LookupReal(h.Node, cn, name, out var e) != 0) // gone meanwhile: a plain record
                {
                    writer.Add(name, d.Ino, d.Type, (ulong)(i + 1));
                    continue;
                }
                writer.AddPlus(in e, name, d.Type, (ulong)(i + 1));
            }
        }
        return 0;
    }

    private static void AddEnt(Handle h, ReadOnlySpan<byte> name, ulong ino, uint type, ref int used)
    {
        if (used + name.Length > h.Names.Length) Array.Resize(ref h.Names, Math.Max(h.Names.Length * 2, used + name.Length + 4096));
        name.CopyTo(h.Names.AsSpan(used));
        h.Entries!.Add(new DirEnt { NameStart = used, NameLen = name.Length, Ino = ino, Type = type });
        used += name.Length;
    }

    private int Snapshot(Handle h, bool root)
    {
        if (h.Fd < 0) return Errno.EBADF;
        h.Entries = new List<DirEnt>();
        int used = 0;
        if (Native.LSeek(h.Fd, 0, 0) < 0) return Err();
        var buf = System.Buffers.ArrayPool<byte>.Shared.Rent(32768);
        try
        {
            fixed (byte* b = buf)
            {
                while (true)
                {
                    nint n = Native.GetDents64(h.Fd, b, (nuint)buf.Length);
                    if (n < 0) return Err();
                    if (n == 0) break;
                    for (int pos = 0; pos < n;)
                    {
                        ulong ino = *(ulong*)(b + pos);
                        ushort reclen = *(ushort*)(b + pos + 16);
                        byte type = b[pos + 18];
                        var nameSpan = new ReadOnlySpan<byte>(b + pos + 19, reclen - 19);
                        nameSpan = nameSpan[..nameSpan.IndexOf((byte)0)];
                        if (!(root && nameSpan.SequenceEqual(LabName))) AddEnt(h, nameSpan, ino, type, ref used);
                        pos += reclen;
                    }
                }
            }
        }
        finally { System.Buffers.ArrayPool<byte>.Shared.Return(buf); }
        if (root) AddEnt(h, LabName, VirtualInoBase + LabDirId, 4 /*DT_DIR*/, ref used);
        return 0;
    }

    /// <summary>A directory under .lab listed from the provider; ENOENT when it is gone.</summary>
    private int SnapshotLab(Handle h)
    {
        var dir = h.VDir!;
        var list = _lab!.List(dir.Path);
        if (list == null) return Errno.ENOENT;
        h.Entries = new List<DirEnt>(list.Count + 3);
        int used = 0;
        bool top = dir.Id == LabDirId;
        AddEnt(h, "."u8, InoOf(dir), 4 /*DT_DIR*/, ref used);
        int slash = dir.Path.LastIndexOf('/');
        ulong up = top ? _root.Ino : slash < 0 ? VirtualInoBase + LabDirId : InoOfPath(dir.Path[..slash], S_IFDIR);
        AddEnt(h, ".."u8, up, 4, ref used);
        if (top) AddEnt(h, "control"u8, VirtualInoBase + ControlId, 10 /*DT_LNK*/, ref used);
        Span<byte> buf = stackalloc byte[256];
        foreach (var e in list)
        {
            // Names that are not one component (or would shadow control) are not listable, as they are not found.
            if (EntryName(e, out bool isDir) is not { } name || (top && name == "control")) continue;
            if (!Encoding.UTF8.TryGetBytes(name, buf[..255], out int len)) continue; // longer than NAME_MAX
            uint type = isDir ? S_IFDIR : S_IFREG;
            AddEnt(h, buf[..len], InoOfPath(Child(dir.Path, name), type), isDir ? 4u : 8u /*DT_REG*/, ref used);
        }
        return 0;
    }

    /// <summary>READDIRPLUS under .lab: the entry of a listed name, counting one lookup; false for . and ..</summary>
    private bool LabDirEntry(VNode dir, ReadOnlySpan<byte> name, uint dtype, out FuseEntryOut e)
    {
        e = default;
        if (name.SequenceEqual("."u8) || name.SequenceEqual(".."u8)) return false;
        if (dir.Id == LabDirId && name.SequenceEqual("control"u8))
        {
            VirtualEntry(GetV(ControlId)!, out e); // a fixed id: its lookups are not counted
            return true;
        }
        var v = LookupV(Child(dir.Path, Encoding.UTF8.GetString(name)), dtype == 4 ? S_IFDIR : S_IFREG);
        VirtualEntry(v, out e);
        return true;
    }

    public void ReleaseDir(in FuseContext c, ulong node, ulong fh)
    {
        if (_handles.TryRemove(fh, out var h)) Native.CloseQuiet(h.Fd);
    }

    public int FsyncDir(in FuseContext c, ulong node, ulong fh, bool dataOnly)
    {
        if (_handles.TryGetValue(fh, out var h) && h.Fd >= 0 && Native.FSync(h.Fd) != 0) return Err();
        return 0;
    }

    public int StatFs(in FuseContext c, ulong node, out FuseStatfsOut statfs)
    {
        statfs = default;
        Native.StatFs sf;
        if (Native.FStatFs(_root.Fd, &sf) != 0) return Err();
        statfs.Blocks = sf.Blocks;
        statfs.Bfree = sf.Bfree;
        statfs.Bavail = sf.Bavail;
        statfs.Files = sf.Files;
        statfs.Ffree = sf.Ffree;
        statfs.Bsize = (uint)sf.Bsize;
        statfs.NameLen = (uint)Math.Min(sf.Namelen, 255);
        statfs.Frsize = (uint)(sf.Frsize != 0 ? sf.Frsize : sf.Bsize);
        return 0;
    }

    public int Access(in FuseContext c, ulong node, int mask)
    {
        if (IsVirtual(node)) return (mask & 2) != 0 ? Errno.EACCES : 0;
        var n = Get(node);
        if (n == null) return Errno.ENOENT;
        if (n.Type == S_IFLNK) return 0;
        byte* path = stackalloc byte[32];
        Native.FdPath(n.Fd, new Span<byte>(path, 32));
        return Native.FAccessAt(Native.AT_FDCWD, path, mask, 0) == 0 ? 0 : Err();
    }

    private int XattrTarget(ulong node, byte* path, out bool isVirtual)
    {
        isVirtual = IsVirtual(node);
        if (isVirtual) return 0;
        var n = Get(node);
        if (n == null) return Errno.ENOENT;
        if (n.Type == S_IFLNK) return Errno.EOPNOTSUPP; // /proc/self/fd would follow it
        Native.FdPath(n.Fd, new Span<byte>(path, 32));
        return 0;
    }

    private static int XName(ReadOnlySpan<byte> name, byte* dst)
    {
        if (name.Length == 0 || name.Length > 255) return Errno.ERANGE;
        name.CopyTo(new Span<byte>(dst, 256));
        dst[name.Length] = 0;
        return 0;
    }

    public int GetXattr(in FuseContext c, ulong node, ReadOnlySpan<byte> name, Span<byte> dest, out int size)
    {
        size = 0;
        byte* path = stackalloc byte[32], xn = stackalloc byte[256];
        int err = XattrTarget(node, path, out bool v);
        if (err != 0) return err;
        if (v) return Errno.ENODATA;
        if ((err = XName(name, xn)) != 0) return err;
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
        int err = XattrTarget(node, path, out bool v);
        if (err != 0) return err;
        if (v) return Errno.EPERM;
        if ((err = XName(name, xn)) != 0) return err;
        fixed (byte* val = value)
            return Native.SetXattr(path, xn, val, (nuint)value.Length, flags) == 0 ? 0 : Err();
    }

    public int ListXattr(in FuseContext c, ulong node, Span<byte> dest, out int size)
    {
        size = 0;
        byte* path = stackalloc byte[32];
        int err = XattrTarget(node, path, out bool v);
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
        int err = XattrTarget(node, path, out bool v);
        if (err != 0) return err;
        if (v) return Errno.EPERM;
        if ((err = XName(name, xn)) != 0) return err;
        return Native.RemoveXattr(path, xn) == 0 ? 0 : Err();
    }

    public int Fallocate(in FuseContext c, ulong node, ulong fh, int mode, long offset, long length)
    {
        if (!_handles.TryGetValue(fh, out var h) || h.Fd < 0) return Errno.EBADF;
        var cache = h.Node != null ? Volatile.Read(ref h.Node.Cache) : null;
        cache?.Flush(); // the range's dirty pages go first so a punched hole is not refilled later
        if (Native.FAllocate(h.Fd, mode, offset, length) != 0) return Err();
        cache?.Invalidate(offset, length);
        return 0;
    }

    public int Lseek(in FuseContext c, ulong node, ulong fh, long offset, int whence, out long result)
    {
        result = 0;
        if (!_handles.TryGetValue(fh, out var h) || h.Fd < 0) return Errno.EBADF;
        if (h.Node != null) Volatile.Read(ref h.Node.Cache)?.Flush(); // data/hole positions are the file's
        result = Native.LSeek(h.Fd, offset, whence);
        return result < 0 ? Err() : 0;
    }

    public int CopyFileRange(in FuseContext c, ulong nodeIn, ulong fhIn, long offIn, ulong nodeOut, ulong fhOut, long offOut,
                             long length, ulong flags, out long copied)
    {
        copied = 0;
        if (flags != 0) return Errno.EINVAL;
        if (!_handles.TryGetValue(fhIn, out var hi) || hi.Fd < 0 || hi.Node == null) return Errno.EBADF;
        if (!_handles.TryGetValue(fhOut, out var ho) || ho.Fd < 0 || ho.Node == null) return Errno.EBADF;
        var src = Volatile.Read(ref hi.Node.Cache);
        var dst = Volatile.Read(ref ho.Node.Cache);
        if (dst == null)
        {
            src?.Flush(); // the backing copy must see the source's newest bytes
            while (copied < length)
            {
                long i = offIn + copied, o = offOut + copied;
                nint r = Native.CopyFileRange(hi.Fd, &i, ho.Fd, &o, (nuint)(length - copied), 0);
                if (r < 0) { int e = Err(); if (e == Errno.EINTR) continue; return copied > 0 ? 0 : e; }
                if (r == 0) break;
                copied += r;
            }
            // A cache made meanwhile may hold the old bytes of the range.
            if (copied > 0) Volatile.Read(ref ho.Node.Cache)?.Invalidate(offOut, copied);
            return 0;
        }
        // The destination's pages may be mapped: its bytes go through the cache, like a WRITE.
        var buf = System.Buffers.ArrayPool<byte>.Shared.Rent(1 << 20);
        try
        {
            while (copied < length)
            {
                int chunk = (int)Math.Min(buf.Length, length - copied);
                int e = Read(in c, nodeIn, fhIn, offIn + copied, buf.AsSpan(0, chunk), out int got);
                if (e != 0) return copied > 0 ? 0 : e;
                if (got == 0) break;
                e = dst.Write(ho.Fd, offOut + copied, buf.AsSpan(0, got));
                if (e != 0) return copied > 0 ? 0 : e;
                copied += got;
                if (got < chunk) break;
            }
        }
        finally { System.Buffers.ArrayPool<byte>.Shared.Return(buf); }
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
        int fd = Native.OpenAt(p.Fd, Dot, f, mode & 0xFFF);
        if (fd < 0) return Err();
        Native.FChmod(fd, mode & 0xFFF);
        byte* path = stackalloc byte[32];
        Native.FdPath(fd, new Span<byte>(path, 32));
        int pathFd = Native.Open(path, Native.O_PATH | Native.O_CLOEXEC, 0);
        if (pathFd < 0) { int e = Err(); Native.Close(fd); return e; }
        ChownToCaller(pathFd, in c);
        int err = Register(pathFd, ""u8, out entry);
        var n = err == 0 ? Get(entry.NodeId) : null;
        if (n == null) { Native.Close(fd); return err != 0 ? err : Errno.ENOENT; }
        open.Fh = AddHandle(new Handle { Node = n, Fd = fd });
        open.OpenFlags = FuseOpenOut.DirectIo;
        return 0;
    }

    public int SyncFs(in FuseContext c)
    {
        int e = FlushAll();
        if (e != 0) return e;
        return Native.SyncFs(_root.Fd) == 0 ? 0 : Err();
    }

    // ---------------- notifications ----------------

    void IFuseFileSystem.Attach(IFuseNotifier notifier) => _notifier = notifier;

    /// <summary>
    /// Tells the kernel that bytes [offset, offset+length) of the file whose backing st_ino is
    /// <paramref name="ino"/> changed behind its back (length 0: to the end), so it drops its cached
    /// attributes and pages of that range (those of programs that map the file on the mount without the
    /// lab). Only queues the message: never blocks, callable from any thread, a request thread included.
    /// False when the node is unknown (nothing cached) or the session is not running.
    /// </summary>
    public bool NotifyInvalidate(ulong ino, long offset, long length)
    {
        ulong id;
        lock (_nodesLock)
        {
            if (!_byIno.TryGetValue(ino, out var n)) return false;
            id = n.Id;
        }
        return _notifier?.InvalidateInode(id, offset, length) ?? false;
    }

    // The node itself, not its number (a later file may have it): nothing to tell once the node is gone.
    private bool NotifyNode(Node node, long offset, long length)
    {
        lock (_nodesLock)
            if (!_byId.TryGetValue(node.Id, out var cur) || cur != node) return false;
        return _notifier?.InvalidateInode(node.Id, offset, length) ?? false;
    }

    /// <summary>Tells the kernel that the name <paramref name="name"/> in the directory whose backing st_ino
    /// is <paramref name="parentIno"/> changed behind its back (created, removed, renamed). Never blocks.</summary>
    public bool NotifyInvalidateEntry(ulong parentIno, string name)
    {
        ulong id;
        lock (_nodesLock)
        {
            if (!_byIno.TryGetValue(parentIno, out var n)) return false;
            id = n.Id;
        }
        return _notifier?.InvalidateEntry(id, Encoding.UTF8.GetBytes(name)) ?? false;
    }

    // ---------------- page cache ----------------

    /// <summary>The page cache of the regular file whose backing st_ino is <paramref name="ino"/>, made on
    /// first use; null when no node with that ino is known (or it is not a regular file). The caller
    /// must hold the file open on the mount (the shim's fd): its node is then in the tables, and its
    /// O_PATH fd pins the backing inode, so no other file has that number meanwhile. A cache outlives
    /// its node only while held (<see cref="CachedFile.Hold"/>), and is never found by number then.</summary>
    public CachedFile? GetCachedFile(ulong ino)
    {
        Node? n;
        lock (_nodesLock)
        {
            if (!_byIno.TryGetValue(ino, out n) || n.Type != S_IFREG || _disposed) return null;
            if (n.Cache != null) return n.Cache;
        }
        // Made outside the table lock (it does I/O); the first one published wins.
        var made = CachedFile.Create(n.Fd, ino, n.Name, out _);
        if (made == null) return null;
        // Pages written through mappings change the file behind the kernel's back.
        made.Changed = (offset, length) => NotifyNode(n, offset, length);
        lock (_nodesLock)
        {
            if (n.Cache == null && !_disposed) { Volatile.Write(ref n.Cache, made); return made; }
        }
        made.Dispose();
        return Volatile.Read(ref n.Cache);
    }

    /// <summary>The daemon's answer to "may a program map a page cache now?" (called under the node table lock).</summary>
    public Func<bool>? CachesInUse;

    /// <summary>
    /// Frees the nodes the kernel has forgotten that were kept only for their page cache (the
    /// daemon calls it when no program runs): their memfd, pages and descriptors go. Returns how many.
    /// </summary>
    public int DropForgotten()
    {
        List<Node> drop = new();
        lock (_nodesLock)
        {
            if (_disposed) return 0;
            foreach (var n in _byId.Values)
                if (n.Lookups == 0 && n.Id != RootId) drop.Add(n);
            foreach (var n in drop)
            {
                _byId.Remove(n.Id);
                _byKey.Remove((n.Dev, n.Ino));
                if (_byIno.TryGetValue(n.Ino, out var same) && same == n) _byIno.Remove(n.Ino);
            }
        }
        foreach (var n in drop)
        {
            // The node's hold only: a VM object still mapping the file keeps the cache open.
            n.Cache?.Release();
            Native.Close(n.Fd);
        }
        return drop.Count;
    }

    /// <summary>What the file system holds now (for the daemon's stats): nodes the kernel knows, page caches, open handles.</summary>
    public (int Nodes, int Caches, int Handles) Counts()
    {
        lock (_nodesLock)
            return (_byId.Count, _byId.Values.Count(n => n.Cache != null), _handles.Count);
    }

    /// <summary>Writes back every cache's dirty pages; the first error, or 0.</summary>
    public int FlushAll()
    {
        List<CachedFile> caches;
        lock (_nodesLock)
            caches = _byId.Values.Select(n => n.Cache).OfType<CachedFile>().ToList();
        int first = 0;
        foreach (var cf in caches)
        {
            int e = cf.Flush();
            if (first == 0) first = e;
        }
        return first;
    }

    void IFuseFileSystem.Destroy() => FlushAll();

    public void Dispose()
    {
        List<Node> nodes;
        lock (_nodesLock)
        {
            if (_disposed) return;
            _disposed = true;
            nodes = _byId.Values.ToList();
            _byId.Clear(); _byKey.Clear(); _byIno.Clear();
        }
        foreach (var n in nodes)
        {
            // The node's hold only: a VM object still mapping the file keeps the cache open.
            n.Cache?.Release();
            Native.Close(n.Fd);
        }
        foreach (var h in _handles.Values) Native.CloseQuiet(h.Fd);
        _handles.Clear();
    }
}
