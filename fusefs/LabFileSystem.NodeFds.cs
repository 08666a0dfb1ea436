namespace Lab.Fusefs;

// The descriptors of nodes, held by need. The kernel may remember any number of inodes (a tree of
// 100,000 files is looked up and kept); a descriptor for each would end the mount at RLIMIT_NOFILE.
// So a node keeps its backing inode's file handle (name_to_handle_at) and an O_PATH descriptor only
// while it is among the most recently used (an LRU of at most _fdCap): a closed one is reopened from
// the handle (open_by_handle_at on the backing file system), which names that very inode (the handle
// carries the generation: a reused inode number gives ESTALE, never another file). Nodes with open
// FUSE handles or a page cache keep theirs (an unlinked file cannot be reopened by handle). Without
// handles (another file system mounted inside the backing dir, no CAP_DAC_READ_SEARCH) a node holds
// its descriptor for life, as before. Every use of a node's fd goes through Pin, which holds a
// reference, so an fd the LRU closes meanwhile is closed only after the call (its number is never
// reused under a /proc/self/fd path being used).
public sealed unsafe partial class LabFileSystem
{
    private const int EMFILE = 24, ENFILE = 23, ESTALE = 116;
    private readonly object _fdLock = new(); // guards Node.Fd/Lru/Opens/Dropped and _lru; taken after _nodesLock, never before
    private readonly LinkedList<Node> _lru = new();
    private readonly int _fdCap;
    private readonly bool _byHandle; // open_by_handle_at works on the backing file system here

    /// <summary>How many node descriptors may stay open: a quarter of RLIMIT_NOFILE (the rest is for open
    /// files, page caches and the daemon), between 16 and 4096.</summary>
    private static int DefaultFdCap()
    {
        Native.Rlimit r;
        if (Native.GetRlimit(Native.RLIMIT_NOFILE, &r) != 0) return 256;
        return (int)Math.Clamp(r.Cur / 4, 16UL, 4096UL);
    }

    /// <summary>A node's O_PATH fd with a reference held (null: none, see the errno given with it);
    /// Dispose releases it. Made by <see cref="Pin"/>.</summary>
    private readonly struct NodeFd : IDisposable
    {
        public readonly Fd? Fd;
        public NodeFd(Fd? fd) => Fd = fd;
        public void Dispose() => Fd?.DangerousRelease();
    }

    private static bool AddRef(Fd fd)
    {
        bool added = false;
        if (fd.IsClosed) return false;
        try { fd.DangerousAddRef(ref added); }
        catch (ObjectDisposedException) { }
        return added;
    }

    /// <summary>The node's descriptor, reopened from its handle when the LRU closed it; held until the
    /// result is disposed. ENOENT when the node was dropped or its file is gone.</summary>
    private NodeFd Pin(Node n, out int err)
    {
        err = 0;
        lock (_fdLock)
        {
            if (n.Fd is { } fd && AddRef(fd))
            {
                if (n.Lru != null && n.Lru != _lru.First) { _lru.Remove(n.Lru); _lru.AddFirst(n.Lru); }
                return new NodeFd(fd);
            }
            if (n.Handle == null || n.Dropped) { err = Errno.ENOENT; return default; }
        }
        var fresh = Reopen(n, out err);
        if (fresh == null) return default;
        lock (_fdLock)
        {
            if (n.Fd is { } won && AddRef(won)) { fresh.Dispose(); return new NodeFd(won); }
            if (n.Dropped) { fresh.Dispose(); err = Errno.ENOENT; return default; }
            n.Fd = fresh;
            AddRef(fresh);
            Track(n);
            return new NodeFd(fresh);
        }
    }

    private Fd? Reopen(Node n, out int err)
    {
        err = 0;
        fixed (byte* h = n.Handle)
        {
            for (int tries = 0; ; tries++)
            {
                var fd = Native.OpenByHandleAt(_rootFd, h, Native.O_PATH | Native.O_CLOEXEC);
                if (!fd.IsInvalid) return fd;
                err = Err();
                if (tries < 3 && Exhausted(err) && Shed()) continue;
                if (err == ESTALE) err = Errno.ENOENT; // the inode is gone (deleted on the backing side)
                return null;
            }
        }
    }

    private static bool Exhausted(int err) => err == EMFILE || err == ENFILE;

    /// <summary>Out of descriptors: closes half of the LRU's (at least one). False when it has none.</summary>
    private bool Shed()
    {
        lock (_fdLock)
        {
            if (_lru.Count == 0) return false;
            int keep = _lru.Count / 2;
            while (_lru.Count > keep) EvictLast();
            return true;
        }
    }

    /// <summary>Puts an open, closable fd in the LRU and closes the oldest beyond the cap (under _fdLock).</summary>
    private void Track(Node n)
    {
        if (n.Fd == null || n.Handle == null || n.Opens > 0 || n.Cache != null || n.Dropped || n.Lru != null) return;
        n.Lru = _lru.AddFirst(n);
        while (_lru.Count > _fdCap) EvictLast();
    }

    private void EvictLast()
    {
        var old = _lru.Last!.Value;
        _lru.RemoveLast();
        old.Lru = null;
        var fd = old.Fd;
        old.Fd = null;
        fd?.Dispose(); // closes now, or when the last Pin of it ends
    }

    /// <summary>An open FUSE handle (or a page cache) keeps the node's fd: call while it is pinned.</summary>
    private void Hold(Node n)
    {
        lock (_fdLock)
        {
            n.Opens++;
            if (n.Lru != null) { _lru.Remove(n.Lru); n.Lru = null; }
        }
    }

    private void Unhold(Node n)
    {
        lock (_fdLock)
        {
            if (--n.Opens == 0) Track(n);
        }
    }

    /// <summary>A node leaves the tables: its fd closes (after any call using it).</summary>
    private void DropFd(Node n)
    {
        Fd? fd;
        lock (_fdLock)
        {
            n.Dropped = true;
            if (n.Lru != null) { _lru.Remove(n.Lru); n.Lru = null; }
            fd = n.Fd;
            n.Fd = null;
        }
        fd?.Dispose();
    }

    /// <summary>Gives a node whose fd the LRU closed a fresh one (from a lookup); false when it needs none.</summary>
    private bool GiveFd(Node n, Fd fd)
    {
        lock (_fdLock)
        {
            if (n.Fd != null || n.Dropped || n.Handle == null) return false;
            n.Fd = fd;
            Track(n);
            return true;
        }
    }

    /// <summary>The file handle of an fd's inode; null when it cannot be reopened by one here (no
    /// handles, or another file system than the backing dir's root, whose fd decodes the handles).</summary>
    private byte[]? HandleOf(Fd fd, ulong dev)
    {
        if (!_byHandle || dev != _root.Dev) return null;
        byte* buf = stackalloc byte[8 + Native.MAX_HANDLE_SZ];
        *(uint*)buf = Native.MAX_HANDLE_SZ;
        int mountId;
        if (Native.NameToHandleAt(fd, Native.EmptyPath, buf, &mountId, Native.AT_EMPTY_PATH) != 0) return null;
        uint len = *(uint*)buf;
        return len > Native.MAX_HANDLE_SZ ? null : new ReadOnlySpan<byte>(buf, 8 + (int)len).ToArray();
    }

    /// <summary>Whether reopening by handle works here: the backing dir's own handle opens again.</summary>
    private static bool HandlesWork(Fd root)
    {
        byte* buf = stackalloc byte[8 + Native.MAX_HANDLE_SZ];
        *(uint*)buf = Native.MAX_HANDLE_SZ;
        int mountId;
        if (Native.NameToHandleAt(root, Native.EmptyPath, buf, &mountId, Native.AT_EMPTY_PATH) != 0) return false;
        using var fd = Native.OpenByHandleAt(root, buf, Native.O_PATH | Native.O_CLOEXEC);
        return !fd.IsInvalid;
    }

    /// <summary>How many node descriptors are open now (for tests and the daemon's stats).</summary>
    public int OpenNodeFds()
    {
        lock (_nodesLock)
            lock (_fdLock)
                return _byId.Values.Count(n => n.Fd != null);
    }

    /// <summary>The most node descriptors kept open beyond those of open files and page caches.</summary>
    public int NodeFdLimit => _fdCap;
}
