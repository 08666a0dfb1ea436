using System.Text;

namespace Lab.Fusefs;

// What the daemon asks: notifications to the kernel and the page caches of files.
public sealed unsafe partial class LabFileSystem
{
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
        // Made outside the table lock (it does I/O); the first one published wins. A node with a cache
        // keeps its fd open (one Hold for the cache, never undone: the cache lives as long as the node).
        Hold(n);
        CachedFile? made;
        using (var nf = Pin(n, out _))
            made = nf.Fd == null ? null : CachedFile.Create(nf.Fd, ino, n.Name, out _);
        if (made == null) { Unhold(n); return null; }
        // Pages written through mappings change the file behind the kernel's back.
        made.Changed = (offset, length) => NotifyNode(n, offset, length);
        lock (_nodesLock)
        {
            if (n.Cache == null && !_disposed) { Volatile.Write(ref n.Cache, made); return made; }
        }
        Unhold(n);
        made.Dispose();
        return Volatile.Read(ref n.Cache);
    }

    /// <summary>The daemon's answer to "may a program map a page cache now?" (called under the node table lock).</summary>
    public Func<bool>? CachesInUse;
}
