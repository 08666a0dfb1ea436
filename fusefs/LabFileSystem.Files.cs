namespace Lab.Fusefs;

// Open regular files: OPEN, READ, WRITE, FLUSH, RELEASE, FSYNC, FALLOCATE, LSEEK, COPY_FILE_RANGE.
public sealed unsafe partial class LabFileSystem
{
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
            int err = _tree!.Open(node, flags, out var content);
            if (err == 0) open.Fh = AddHandle(new Handle { Virtual = content });
            return err;
        }
        var n = Get(node);
        if (n == null) return Errno.ENOENT;
        if (n.Type == S_IFDIR) return Errno.EISDIR;
        if (n.Type == S_IFLNK) return Errno.ELOOP; // the kernel follows links itself; never open one here
        Hold(n); // first, so the fd pinned next stays open while the file is (it may be unlinked)
        using var nf = Pin(n, out int perr);
        if (nf.Fd == null) { Unhold(n); return perr; }
        // O_NOFOLLOW was checked by the kernel already; on the /proc magic link it would give ELOOP.
        var fd = Reopen(nf.Fd, (int)flags & ~(StripFlags | Native.O_NOFOLLOW));
        if (fd.IsInvalid) { perr = Err(); Unhold(n); return perr; }
        if (((int)flags & Native.O_TRUNC) != 0) Volatile.Read(ref n.Cache)?.ApplyTruncate(0);
        open.Fh = AddHandle(new Handle { Node = n, Fd = fd });
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
        if (h.Node == null || h.Fd is null) return Errno.EBADF;
        return CachedFile.Read(Volatile.Read(ref h.Node.Cache), h.Fd, offset, dest, out read);
    }

    public int Write(in FuseContext c, ulong node, ulong fh, long offset, ReadOnlySpan<byte> data, out int written)
    {
        written = 0;
        if (!_handles.TryGetValue(fh, out var h)) return Errno.EBADF;
        if (h.Node == null || h.Fd is null) return Errno.EBADF;
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
        h.Fd?.Dispose();
        if (h.Node != null) Unhold(h.Node);
    }

    public int Fsync(in FuseContext c, ulong node, ulong fh, bool dataOnly)
    {
        if (!_handles.TryGetValue(fh, out var h) || h.Virtual != null) return 0;
        int e = h.Node != null ? Volatile.Read(ref h.Node.Cache)?.Flush() ?? 0 : 0;
        if (e != 0) return e;
        if (h.Fd != null && (dataOnly ? Native.FDataSync(h.Fd) : Native.FSync(h.Fd)) != 0) return Err();
        return 0;
    }

    public int Fallocate(in FuseContext c, ulong node, ulong fh, int mode, long offset, long length)
    {
        if (!_handles.TryGetValue(fh, out var h) || h.Fd is null) return Errno.EBADF;
        var cache = h.Node != null ? Volatile.Read(ref h.Node.Cache) : null;
        cache?.Flush(); // the range's dirty pages go first so a punched hole is not refilled later
        if (Native.FAllocate(h.Fd, mode, offset, length) != 0) return Err();
        cache?.Invalidate(offset, length);
        return 0;
    }

    public int Lseek(in FuseContext c, ulong node, ulong fh, long offset, int whence, out long result)
    {
        result = 0;
        if (!_handles.TryGetValue(fh, out var h) || h.Fd is null) return Errno.EBADF;
        if (h.Node != null) Volatile.Read(ref h.Node.Cache)?.Flush(); // data/hole positions are the file's
        result = Native.LSeek(h.Fd, offset, whence);
        return result < 0 ? Err() : 0;
    }

    public int CopyFileRange(in FuseContext c, ulong nodeIn, ulong fhIn, long offIn, ulong nodeOut, ulong fhOut, long offOut,
                             long length, ulong flags, out long copied)
    {
        copied = 0;
        if (flags != 0) return Errno.EINVAL;
        if (!_handles.TryGetValue(fhIn, out var hi) || hi.Fd is null || hi.Node == null) return Errno.EBADF;
        if (!_handles.TryGetValue(fhOut, out var ho) || ho.Fd is null || ho.Node == null) return Errno.EBADF;
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
}
