using System.Text;

namespace Lab.Fusefs;

// The virtual .lab directory: its nodes, lookups and listings.
public sealed unsafe partial class LabFileSystem
{
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
}
