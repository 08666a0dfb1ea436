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
public sealed unsafe partial class LabFileSystem : IFuseFileSystem, IDisposable
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
        public readonly Fd Fd; // O_PATH
        public long Lookups;
        public string Name;
        public CachedFile? Cache;
        public Node(ulong id, ulong dev, ulong ino, uint type, Fd fd, string name)
        { Id = id; Dev = dev; Ino = ino; Type = type; Fd = fd; Name = name; }
    }

    private struct DirEnt { public int NameStart, NameLen; public ulong Ino; public uint Type; }

    private sealed class Handle
    {
        public Node? Node;
        public Fd? Fd;
        public byte[]? Virtual;          // rendered .lab file
        public VNode? VDir;              // a directory under .lab
        public bool Served;              // a READDIR came (the snapshot of OPENDIR is used once)
        public List<DirEnt>? Entries;    // directory snapshot
        public byte[] Names = [];
        public readonly object Gate = new();
    }

    private readonly LabTree? _tree; // the .lab subtree; null without an ILabDirectory
    private readonly object _nodesLock = new(); // guards the node tables only, never held over I/O of pages
    private readonly Dictionary<ulong, Node> _byId = new();
    private readonly Dictionary<(ulong Dev, ulong Ino), Node> _byKey = new();
    private readonly Dictionary<ulong, Node> _byIno = new();
    private readonly ConcurrentDictionary<ulong, Handle> _handles = new();
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
        var fd = Native.Open(BackingDir, Native.O_PATH | Native.O_DIRECTORY | Native.O_CLOEXEC, 0);
        if (fd.IsInvalid) throw new IOException($"backing directory {BackingDir}: {Errno.StrError(Errno.Last)}");
        Native.Statx st;
        if (Native.StatxAt(fd, Native.EmptyPath, Native.AT_EMPTY_PATH, Native.STATX_BASIC_STATS, &st) != 0)
        {
            fd.Dispose();
            throw new IOException($"backing directory {BackingDir}: {Errno.StrError(Errno.Last)}");
        }
        _root = new Node(RootId, st.Dev, st.Ino, S_IFDIR, fd, "") { Lookups = 1 };
        _byId[RootId] = _root;
        _byKey[(st.Dev, st.Ino)] = _root;
        _byIno[st.Ino] = _root;
        if (labDir != null) _tree = new LabTree(labDir, st.Ino, _uid, _gid);
    }

    // ---------------- helpers ----------------

    private static int Err() => Errno.Last;

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

    /// <summary>Whether a node is the .lab subtree's: its requests go to <see cref="_tree"/>.</summary>
    private bool IsVirtual(ulong id) => _tree != null && LabTree.Owns(id);

    private bool IsLabName(ulong parent, ReadOnlySpan<byte> name) =>
        _tree != null && parent == RootId && name.SequenceEqual(LabName);

    /// <summary>The errno for changing a name in (parent, name) when that touches .lab.</summary>
    private int Protected(ulong parent, ReadOnlySpan<byte> name) =>
        IsVirtual(parent) ? Errno.EACCES : IsLabName(parent, name) ? Errno.EACCES : 0;

    private static int Stat(Fd fd, out Native.Statx st)
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
    private int Register(Fd fd, ReadOnlySpan<byte> name, out FuseEntryOut e)
    {
        int err = Stat(fd, out var st);
        if (err != 0) { fd.Dispose(); e = default; return err; }
        FillAttr(in st, out var attr);
        Node node;
        Fd? unused = fd;
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
                unused = null;
            }
        }
        unused?.Dispose();
        // Sizes come from the cache when it exists (its writes are already in the file, but keep one truth).
        var cache = Volatile.Read(ref node.Cache);
        if (cache != null) attr.Size = (ulong)cache.Size;
        Entry(node.Id, in attr, out e);
        return 0;
    }

    private int LookupReal(Node parent, byte* cname, ReadOnlySpan<byte> name, out FuseEntryOut e)
    {
        var fd = Native.OpenAt(parent.Fd, cname, Native.O_PATH | Native.O_NOFOLLOW | Native.O_CLOEXEC, 0);
        if (fd.IsInvalid) { e = default; return Err(); }
        return Register(fd, name, out e);
    }

    // ---------------- lookups ----------------

    public int Lookup(in FuseContext c, ulong parent, ReadOnlySpan<byte> name, out FuseEntryOut entry)
    {
        entry = default;
        byte* cn = stackalloc byte[256];
        int err = CName(name, cn);
        if (err != 0) return err;
        if (IsVirtual(parent)) return _tree!.Lookup(parent, name, out entry);
        if (IsLabName(parent, name)) { _tree!.DirEntry(out entry); return 0; }
        var p = Get(parent);
        if (p == null) return Errno.ENOENT;
        return LookupReal(p, cn, name, out entry);
    }

    public void Forget(ulong node, ulong nlookup)
    {
        if (node == RootId) return;
        if (IsVirtual(node)) { _tree!.Forget(node, nlookup); return; }
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
        drop.Fd.Dispose();
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

    public int SyncFs(in FuseContext c)
    {
        int e = FlushAll();
        if (e != 0) return e;
        return Native.SyncFs(_root.Fd) == 0 ? 0 : Err();
    }

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
            n.Fd.Dispose();
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
            n.Fd.Dispose();
        }
        foreach (var h in _handles.Values) h.Fd?.Dispose();
        _handles.Clear();
    }
}
