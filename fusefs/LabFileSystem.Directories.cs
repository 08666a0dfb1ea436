namespace Lab.Fusefs;

// Open directories: OPENDIR, READDIR, READDIRPLUS, RELEASEDIR, FSYNCDIR.
public sealed unsafe partial class LabFileSystem
{
    public int OpenDir(in FuseContext c, ulong node, uint flags, out FuseOpenOut open)
    {
        open = default;
        if (IsVirtual(node))
        {
            int err = _tree!.OpenDir(node, out var h);
            if (err == 0) open.Fh = AddHandle(h!);
            return err;
        }
        var n = Get(node);
        if (n == null) return Errno.ENOENT;
        Hold(n);
        using var nf = Pin(n, out int err2);
        if (nf.Fd == null) { Unhold(n); return err2; }
        var fd = OpenBeneath(nf.Fd, Dot, Native.O_RDONLY | Native.O_DIRECTORY, 0); // ".": the directory itself
        if (fd.IsInvalid) { err2 = Err(); Unhold(n); return err2; }
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
                int err = h.VDir != null ? _tree!.Snapshot(h) : Snapshot(h, node == RootId && _tree != null);
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
            bool root = node == RootId && _tree != null;
            if (h.Entries == null || (offset == 0 && h.Served))
            {
                int err = h.VDir != null ? _tree!.Snapshot(h) : Snapshot(h, root);
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
                    if (_tree!.DirEntryPlus(h.VDir, name, d.Type, out var ve)) writer.AddPlus(in ve, name, d.Type, (ulong)(i + 1));
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
        if (h.Fd is null) return Errno.EBADF;
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

    public void ReleaseDir(in FuseContext c, ulong node, ulong fh)
    {
        if (!_handles.TryRemove(fh, out var h)) return;
        h.Fd?.Dispose();
        if (h.Node != null) Unhold(h.Node);
    }

    public int FsyncDir(in FuseContext c, ulong node, ulong fh, bool dataOnly)
    {
        if (_handles.TryGetValue(fh, out var h) && h.Fd != null && Native.FSync(h.Fd) != 0) return Err();
        return 0;
    }
}
