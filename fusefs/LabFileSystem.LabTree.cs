using System.Text;

namespace Lab.Fusefs;

public sealed unsafe partial class LabFileSystem
{
    /// <summary>A virtual node under .lab: one path and type, kept while the kernel holds a lookup on it.</summary>
    private sealed class VNode
    {
        public readonly ulong Id;
        public readonly string Path; // relative to .lab, "" for .lab itself
        public readonly uint Type;   // S_IFDIR, S_IFREG or S_IFLNK (control)
        public long Lookups;
        public VNode(ulong id, string path, uint type) { Id = id; Path = path; Type = type; }
    }

    /// <summary>
    /// The virtual <c>.lab/</c> directory, a subtree of its own: its nodes (ids [2, FirstRealId)), their
    /// attributes, lookups, listings and file contents, all from the <see cref="ILabDirectory"/>. Read-only:
    /// a request that would change it is refused. LabFileSystem hands it every request on one of its
    /// nodes (<see cref="Owns"/>) and takes no backing lock for them; it never touches the backing tree.
    /// </summary>
    private sealed class LabTree
    {
        private readonly ILabDirectory _lab;
        private readonly ulong _rootIno; // ".." of .lab
        private readonly uint _uid, _gid;
        private readonly object _labLock = new(); // guards the virtual tables; never taken for backing nodes
        private readonly Dictionary<ulong, VNode> _vById = new();
        private readonly Dictionary<string, VNode> _vByPath = new(StringComparer.Ordinal);
        private ulong _nextVirtualId = LabFileBase;

        public LabTree(ILabDirectory lab, ulong rootIno, uint uid, uint gid)
        {
            _lab = lab;
            _rootIno = rootIno;
            _uid = uid;
            _gid = gid;
            var labDirNode = new VNode(LabDirId, "", S_IFDIR);
            _vById[LabDirId] = labDirNode;
            _vByPath[""] = labDirNode;
            _vById[ControlId] = new VNode(ControlId, "control", S_IFLNK); // not by path: the provider's "control" is never asked
        }

        // By range only, so the backing nodes' requests take no lock here.
        public static bool Owns(ulong id) => id >= LabDirId && id < FirstRealId;

        /// <summary>The entry of .lab itself, as LOOKUP of ".lab" in the root answers it.</summary>
        public void DirEntry(out FuseEntryOut e) => EntryOf(Get(LabDirId)!, out e);

        public int GetAttr(ulong node, out FuseAttrOut attr)
        {
            attr = default;
            var v = Get(node);
            if (v == null) return Errno.ENOENT;
            Attr(v, out attr.Attr);
            attr.AttrValid = Valid(node);
            return 0;
        }

        public int ReadLink(ulong node, Span<byte> dest, out int length)
        {
            length = 0;
            if (node != ControlId) return Errno.EINVAL;
            var target = _lab.ControlSocketPath;
            if (Encoding.UTF8.GetByteCount(target) > dest.Length) return Errno.ENAMETOOLONG;
            length = Encoding.UTF8.GetBytes(target, dest);
            return 0;
        }

        /// <summary>OPEN of a .lab file: its content, rendered now and read from the handle.</summary>
        public int Open(ulong node, uint flags, out byte[]? content)
        {
            content = null;
            var v = Get(node);
            if (v == null) return Errno.ENOENT;
            if (v.Type != S_IFREG) return v.Type == S_IFDIR ? Errno.EISDIR : Errno.EINVAL;
            if (((int)flags & Native.O_ACCMODE) != Native.O_RDONLY || ((int)flags & Native.O_TRUNC) != 0) return Errno.EACCES;
            content = _lab.Render(v.Path);
            return content == null ? Errno.ENOENT : 0; // null: gone since the lookup
        }

        /// <summary>OPENDIR under .lab: a handle listed now, so a directory gone since its lookup fails the
        /// open, not a later read.</summary>
        public int OpenDir(ulong node, out Handle? h)
        {
            h = null;
            var v = Get(node);
            if (v == null) return Errno.ENOENT;
            if (v.Type != S_IFDIR) return Errno.ENOTDIR;
            var made = new Handle { VDir = v };
            int err = Snapshot(made);
            if (err != 0) return err;
            h = made;
            return 0;
        }

        /// <summary>ACCESS: anyone may read and search, nobody may write.</summary>
        public static int Access(int mask) => (mask & 2) != 0 ? Errno.EACCES : 0;

        private VNode? Get(ulong id)
        {
            lock (_labLock) return _vById.GetValueOrDefault(id);
        }

        private static ulong InoOf(VNode v) => VirtualInoBase + v.Id;

        private void Attr(VNode v, out FuseAttr a)
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
                a.Size = (ulong)Encoding.UTF8.GetByteCount(_lab.ControlSocketPath);
            }
            else { a.Mode = S_IFREG | 0x124 /*0444*/; a.Nlink = 1; } // direct-io: size 0 is fine
        }

        // Below .lab/ the tree changes as the daemon runs (processes come and go): the kernel keeps no
        // names or attributes there, so a vanished path is gone at once.
        public static ulong Valid(ulong id) => id < LabFileBase ? 1UL : 0UL;

        private void EntryOf(VNode v, out FuseEntryOut e)
        {
            Attr(v, out var a);
            Entry(v.Id, in a, out e);
            e.EntryValid = e.AttrValid = Valid(v.Id);
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

        public void Forget(ulong id, ulong nlookup)
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

        public int Lookup(ulong parent, ReadOnlySpan<byte> name, out FuseEntryOut entry)
        {
            entry = default;
            var p = Get(parent);
            if (p == null) return Errno.ENOENT;
            if (p.Type != S_IFDIR) return Errno.ENOTDIR;
            if (parent == LabDirId && name.SequenceEqual("control"u8))
            {
                EntryOf(Get(ControlId)!, out entry);
                return 0;
            }
            Span<char> chars = stackalloc char[256];
            if (System.Text.Unicode.Utf8.ToUtf16(name, chars, out _, out int n, replaceInvalidSequences: false)
                != System.Buffers.OperationStatus.Done) return Errno.ENOENT; // the provider's names are strings
            var wanted = chars[..n];
            var list = _lab.List(p.Path);
            if (list == null) return Errno.ENOENT; // the directory itself vanished
            uint type = 0;
            foreach (var e in list)
            {
                if (EntryName(e, out bool dir) is { } en && wanted.SequenceEqual(en)) { type = dir ? S_IFDIR : S_IFREG; break; }
            }
            if (type == 0) return Errno.ENOENT;
            EntryOf(LookupV(Child(p.Path, new string(wanted)), type), out entry);
            return 0;
        }

        /// <summary>A directory under .lab listed from the provider; ENOENT when it is gone.</summary>
        public int Snapshot(Handle h)
        {
            var dir = h.VDir!;
            var list = _lab.List(dir.Path);
            if (list == null) return Errno.ENOENT;
            h.Entries = new List<DirEnt>(list.Count + 3);
            int used = 0;
            bool top = dir.Id == LabDirId;
            AddEnt(h, "."u8, InoOf(dir), 4 /*DT_DIR*/, ref used);
            int slash = dir.Path.LastIndexOf('/');
            ulong up = top ? _rootIno : slash < 0 ? VirtualInoBase + LabDirId : InoOfPath(dir.Path[..slash], S_IFDIR);
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
        public bool DirEntryPlus(VNode dir, ReadOnlySpan<byte> name, uint dtype, out FuseEntryOut e)
        {
            e = default;
            if (name.SequenceEqual("."u8) || name.SequenceEqual(".."u8)) return false;
            if (dir.Id == LabDirId && name.SequenceEqual("control"u8))
            {
                EntryOf(Get(ControlId)!, out e); // a fixed id: its lookups are not counted
                return true;
            }
            var v = LookupV(Child(dir.Path, Encoding.UTF8.GetString(name)), dtype == 4 ? S_IFDIR : S_IFREG);
            EntryOf(v, out e);
            return true;
        }
    }
}
