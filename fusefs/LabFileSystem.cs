using System.Collections.Concurrent;
using System.Text;

namespace Lab.Fusefs;

/// <summary>
/// The lab file system: a pass-through to a backing directory. Each node reaches its backing inode by
/// an O_PATH fd held by need (LabFileSystem.NodeFds.cs: a bounded LRU, reopened from the file handle)
/// and every name is resolved relative to its parent's fd by <see cref="OpenBeneath"/> or a call that
/// never follows a name's symlink (one component, no '/'), so nothing escapes the backing directory. One node per backing inode
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
        public readonly byte[]? Handle;  // struct file_handle; null: Fd is held for the node's life
        public Fd? Fd;                   // O_PATH, or null while the LRU has it closed (under _fdLock)
        public LinkedListNode<Node>? Lru; // in _lru: open and closable (under _fdLock)
        public int Opens;                // FUSE handles and a page cache holding Fd open (under _fdLock)
        public bool Dropped;             // left the tables (under _fdLock)
        public long Lookups;
        public string Name;
        public CachedFile? Cache;
        public Node(ulong id, ulong dev, ulong ino, uint type, Fd? fd, byte[]? handle, string name)
        { Id = id; Dev = dev; Ino = ino; Type = type; Fd = fd; Handle = handle; Name = name; }
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
    private readonly Fd _rootFd; // the root node's, held for life: the mount fd of open_by_handle_at
    private readonly uint _uid = Native.GetEuid(), _gid = Native.GetEgid();
    private IFuseNotifier? _notifier;
    private ulong _nextId = FirstRealId;
    private long _nextFh = 1;
    private bool _disposed;

    public string BackingDir { get; }

    /// <param name="maxNodeFds">How many node descriptors may stay open (0: from RLIMIT_NOFILE).</param>
    public LabFileSystem(string backingDir, ILabDirectory? labDir, int maxNodeFds = 0)
    {
        BackingDir = Path.GetFullPath(backingDir);
        // Not O_PATH: open_by_handle_at takes it as its mount fd, and refuses an O_PATH one (EBADF).
        var fd = Native.Open(BackingDir, Native.O_RDONLY | Native.O_DIRECTORY | Native.O_CLOEXEC, 0);
        if (fd.IsInvalid) throw new IOException($"backing directory {BackingDir}: {Errno.StrError(Errno.Last)}");
        Native.Statx st;
        if (Native.StatxAt(fd, Native.EmptyPath, Native.AT_EMPTY_PATH, Native.STATX_BASIC_STATS, &st) != 0)
        {
            fd.Dispose();
            throw new IOException($"backing directory {BackingDir}: {Errno.StrError(Errno.Last)}");
        }
        _rootFd = fd;
        _fdCap = maxNodeFds > 0 ? maxNodeFds : DefaultFdCap();
        _byHandle = HandlesWork(fd);
        _root = new Node(RootId, st.Dev, st.Ino, S_IFDIR, fd, null, "") { Lookups = 1 };
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
    /// <param name="hold">Count an open handle on the node (<see cref="Hold"/>) in the same step, so
    /// the LRU never closes the fd of a file just opened (it may be unlinked before it is reopened).</param>
    private int Register(Fd fd, ReadOnlySpan<byte> name, out FuseEntryOut e, bool hold = false)
    {
        int err = Stat(fd, out var st);
        if (err != 0) { fd.Dispose(); e = default; return err; }
        FillAttr(in st, out var attr);
        var handle = HandleOf(fd, st.Dev);
        Node node;
        Fd? unused = fd;
        lock (_nodesLock)
        {
            // Same (dev, ino) and same handle: the same file. A node whose fd the LRU closed does not
            // pin its inode, so the number may be another file's now: its handle (with the generation)
            // differs, and the new file gets a new node (the old one answers ENOENT until forgotten).
            if (_byKey.TryGetValue((st.Dev, st.Ino), out var existing)
                && (existing.Handle == null || handle == null || existing.Handle.AsSpan().SequenceEqual(handle)))
            {
                node = existing;
                node.Lookups++;
                if (hold) Hold(node);
                if (GiveFd(node, fd)) unused = null;
            }
            else
            {
                node = new Node(_nextId++, st.Dev, st.Ino, st.Mode & S_IFMT, fd, handle, Encoding.UTF8.GetString(name)) { Lookups = 1 };
                _byId[node.Id] = node;
                _byKey[(st.Dev, st.Ino)] = node;
                if (existing != null && _byIno.GetValueOrDefault(st.Ino) == existing) _byIno[st.Ino] = node;
                else _byIno.TryAdd(st.Ino, node);
                unused = null;
                if (hold) node.Opens = 1;
                lock (_fdLock) Track(node);
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
        e = default;
        using var p = Pin(parent, out int err);
        if (p.Fd == null) return err;
        var fd = OpenBeneath(p.Fd, cname, Native.O_PATH, 0);
        if (fd.IsInvalid) return Err();
        return Register(fd, name, out e);
    }

    private const ulong Beneath = Native.RESOLVE_BENEATH | Native.RESOLVE_NO_SYMLINKS | Native.RESOLVE_NO_MAGICLINKS;
    // The kernel's VALID_OPEN_FLAGS (x86-64): openat2 refuses any other bit, openat ignored them.
    private const int ValidOpenFlags = 0x7FFFE3;
    private static bool _noOpenat2;

    /// <summary>
    /// The one way a name in the backing dir is opened: <paramref name="cname"/> (one component) beneath
    /// <paramref name="dir"/>, never through a symlink nor a /proc magic link, never outside dir, whatever
    /// the backing side renames meanwhile (openat2 RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS). A symlink as
    /// the name itself is opened as such with O_PATH, else fails with ELOOP. Out of descriptors, it closes
    /// LRU node fds and tries again. Every other call that takes a name (mkdirat, mknodat, symlinkat,
    /// linkat's new name, unlinkat, renameat2) never follows the name's own symlink; attributes are
    /// changed on descriptors only.
    /// </summary>
    private Fd OpenBeneath(Fd dir, byte* cname, int flags, uint mode)
    {
        flags = (flags & ValidOpenFlags) | Native.O_NOFOLLOW | Native.O_CLOEXEC;
        for (int tries = 0; ; tries++)
        {
            Fd fd;
            if (!Volatile.Read(ref _noOpenat2))
            {
                var how = new Native.OpenHow
                {
                    Flags = (ulong)flags, Resolve = Beneath,
                    Mode = (flags & Native.O_CREAT) != 0 ? mode & 0xFFF : 0,
                };
                fd = Native.OpenAt2(dir, cname, &how);
                if (fd.IsInvalid && Err() == Errno.ENOSYS) { Volatile.Write(ref _noOpenat2, true); continue; }
            }
            else fd = Native.OpenAt(dir, cname, flags, mode & 0xFFF); // one component and O_NOFOLLOW: the same
            if (fd.IsInvalid && tries < 3 && Exhausted(Err()) && Shed()) { fd.Dispose(); continue; }
            return fd;
        }
    }

    /// <summary>Reopens an fd through its /proc magic link (its own inode, never a name), with
    /// <paramref name="flags"/>; out of descriptors, closes LRU node fds and tries again.</summary>
    private Fd Reopen(Fd fd, int flags)
    {
        byte* path = stackalloc byte[32];
        Native.FdPath(fd, new Span<byte>(path, 32));
        for (int tries = 0; ; tries++)
        {
            var r = Native.Open(path, flags | Native.O_CLOEXEC, 0);
            if (r.IsInvalid && tries < 3 && Exhausted(Err()) && Shed()) { r.Dispose(); continue; }
            return r;
        }
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
            if (n.Cache != null && (CachesInUse?.Invoke() ?? true) && Linked(n)) return;
            Unlist(n);
            drop = n;
        }
        // The node's hold only: programs may still map the deleted file (the VM objects hold the cache,
        // whose open fd keeps the backing inode, so its number is not reused while they do).
        drop.Cache?.Release();
        DropFd(drop);
    }

    private bool Linked(Node n)
    {
        using var f = Pin(n, out _);
        return f.Fd != null && Stat(f.Fd, out var st) == 0 && st.Nlink > 0;
    }

    /// <summary>Takes a node out of the tables (under _nodesLock); a newer node of its key or ino stays.</summary>
    private void Unlist(Node n)
    {
        _byId.Remove(n.Id);
        if (_byKey.TryGetValue((n.Dev, n.Ino), out var k) && k == n) _byKey.Remove((n.Dev, n.Ino));
        if (_byIno.TryGetValue(n.Ino, out var same) && same == n) _byIno.Remove(n.Ino);
    }

    public int StatFs(in FuseContext c, ulong node, out FuseStatfsOut statfs)
    {
        statfs = default;
        Native.StatFs sf;
        if (Native.FStatFs(_rootFd, &sf) != 0) return Err();
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
        return Native.SyncFs(_rootFd) == 0 ? 0 : Err();
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
            foreach (var n in drop) Unlist(n);
        }
        foreach (var n in drop)
        {
            // The node's hold only: a VM object still mapping the file keeps the cache open.
            n.Cache?.Release();
            DropFd(n);
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
            DropFd(n);
        }
        foreach (var h in _handles.Values) h.Fd?.Dispose();
        _handles.Clear();
    }
}
