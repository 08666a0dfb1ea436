using System.Runtime.InteropServices;

namespace Lab.Fusefs;

/// <summary>
/// The page cache of one file (the vnode's pages): a memfd holding the pages, a valid bitmap and a
/// dirty bitmap, over an open fd of the backing file. FUSE read/write and the lab's fault handler both
/// go through it, so a mapping of <see cref="MemfdFd"/> and read(2)/write(2) on the mount see the same
/// bytes. Its lock is held only around the memfd/backing I/O itself: nothing done under it ever waits
/// for a FUSE request or a page fault.
/// </summary>
public sealed unsafe class CachedFile : IDisposable
{
    public const int PageSize = 4096;
    private const int ERANGE = Errno.ERANGE;

    private readonly object _lock = new();
    private readonly Fd _backingFd;
    private readonly bool _writable;
    private readonly Fd _memfd;
    private readonly byte* _scratch; // one page, used only under _lock
    private ulong[] _valid = [];
    private ulong[] _dirty = [];
    private long _size;
    private bool _disposed;
    private int _holds = 1; // its node's, plus one per VM object that maps the file

    public ulong Ino { get; }
    public string Name { get; }
    /// <summary>The memfd holding the pages; programs that map the file MAP_SHARED map this.</summary>
    public Fd MemfdFd => _memfd;
    public long Size { get { lock (_lock) return _size; } }
    /// <summary>Called (outside the lock) when bytes change other than by a FUSE request: pages marked
    /// dirty by the lab's mappings. Arguments: offset and length.</summary>
    internal Action<long, long>? Changed { get; set; }

    private CachedFile(ulong ino, string name, Fd backingFd, bool writable, Fd memfd, long size)
    {
        Ino = ino;
        Name = name;
        _backingFd = backingFd;
        _writable = writable;
        _memfd = memfd;
        _size = size;
        _scratch = (byte*)NativeMemory.AlignedAlloc(PageSize, PageSize);
        Grow(size);
    }

    /// <summary>Opens the cache of the file reachable by the O_PATH fd <paramref name="nodeFd"/>.</summary>
    internal static CachedFile? Create(Fd nodeFd, ulong ino, string name, out int errno)
    {
        byte* path = stackalloc byte[32];
        Native.FdPath(nodeFd, new Span<byte>(path, 32));
        bool writable = true;
        var fd = Native.Open(path, Native.O_RDWR | Native.O_CLOEXEC, 0);
        if (fd.IsInvalid)
        {
            writable = false;
            fd = Native.Open(path, Native.O_RDONLY | Native.O_CLOEXEC, 0);
            if (fd.IsInvalid) { errno = Errno.Last; return null; }
        }
        Native.Statx st;
        if (Native.StatxAt(fd, Native.EmptyPath, Native.AT_EMPTY_PATH, Native.STATX_BASIC_STATS, &st) != 0)
        {
            errno = Errno.Last;
            fd.Dispose();
            return null;
        }
        string memName = "lab:" + (name.Length > 200 ? name[..200] : name);
        var memfd = Native.MemfdCreate(memName, Native.MFD_CLOEXEC);
        if (memfd.IsInvalid || Native.FTruncate(memfd, (long)st.Size) != 0)
        {
            errno = Errno.Last;
            memfd.Dispose();
            fd.Dispose();
            return null;
        }
        errno = 0;
        return new CachedFile(ino, name, fd, writable, memfd, (long)st.Size);
    }

    private static long Pages(long size) => (size + PageSize - 1) / PageSize;

    private void Grow(long size)
    {
        int words = (int)((Pages(size) + 63) / 64);
        if (words > _valid.Length)
        {
            int n = Math.Max(words, _valid.Length * 2);
            Array.Resize(ref _valid, n);
            Array.Resize(ref _dirty, n);
        }
    }

    private static bool Get(ulong[] map, long p) => (ulong)p < (ulong)map.Length * 64 && (map[p >> 6] & (1UL << (int)(p & 63))) != 0;
    private static void Set(ulong[] map, long p) => map[p >> 6] |= 1UL << (int)(p & 63);
    private static void Clear(ulong[] map, long p) { if ((ulong)p < (ulong)map.Length * 64) map[p >> 6] &= ~(1UL << (int)(p & 63)); }

    /// <summary>pread until <paramref name="count"/> bytes or EOF; on an error, <paramref name="got"/> says
    /// how many came before it.</summary>
    internal static int FullPRead(Fd fd, byte* buf, int count, long offset, out int got)
    {
        got = 0;
        while (got < count)
        {
            nint n = Native.PRead(fd, buf + got, (nuint)(count - got), offset + got);
            if (n < 0) { int e = Errno.Last; if (e == Errno.EINTR) continue; return e; }
            if (n == 0) break;
            got += (int)n;
        }
        return 0;
    }

    private static int FullPWrite(Fd fd, byte* buf, int count, long offset)
    {
        int done = 0;
        while (done < count)
        {
            nint n = Native.PWrite(fd, buf + done, (nuint)(count - done), offset + done);
            if (n < 0) { int e = Errno.Last; if (e == Errno.EINTR) continue; return e; }
            if (n == 0) return Errno.EIO;
            done += (int)n;
        }
        return 0;
    }

    // Under _lock: makes page p valid by copying it from the backing file into the memfd.
    private int LoadLocked(long p)
    {
        if (Get(_valid, p)) return 0;
        long off = p * PageSize;
        int len = (int)Math.Min(PageSize, _size - off);
        if (len <= 0) return ERANGE;
        int e = FullPRead(_backingFd, _scratch, len, off, out int got);
        if (e != 0) return e;
        new Span<byte>(_scratch + got, PageSize - got).Clear(); // short read: the rest reads as zeros
        // Write only up to EOF so the memfd keeps the file's size.
        e = FullPWrite(_memfd, _scratch, len, off);
        if (e != 0) return e;
        Set(_valid, p);
        return 0;
    }

    /// <summary>Makes pages valid and copies them into <paramref name="dest"/> (count*4096 bytes; bytes past
    /// EOF are zero). Returns 0, ERANGE when the first page is wholly past EOF (the caller raises
    /// SIGBUS), or another errno.</summary>
    public int ReadPages(long pindex, int count, Span<byte> dest)
    {
        if (pindex < 0 || count < 0 || dest.Length < (long)count * PageSize) return Errno.EINVAL;
        lock (_lock)
        {
            if (_disposed) return Errno.EBADF;
            if (pindex * PageSize >= _size) return ERANGE;
            fixed (byte* d = dest)
            {
                for (int i = 0; i < count; i++)
                {
                    long p = pindex + i;
                    long off = p * PageSize;
                    byte* to = d + (long)i * PageSize;
                    if (off >= _size) { new Span<byte>(to, PageSize).Clear(); continue; }
                    int e = LoadLocked(p);
                    if (e != 0) return e;
                    e = FullPRead(_memfd, to, PageSize, off, out int got);
                    if (e != 0) return e;
                    new Span<byte>(to + got, PageSize - got).Clear();
                }
            }
        }
        return 0;
    }

    /// <summary>Makes pages valid without copying them out. Same results as <see cref="ReadPages"/>.</summary>
    public int LoadPages(long pindex, int count)
    {
        if (pindex < 0 || count < 0) return Errno.EINVAL;
        lock (_lock)
        {
            if (_disposed) return Errno.EBADF;
            if (pindex * PageSize >= _size) return ERANGE;
            for (long p = pindex; p < pindex + count && p * PageSize < _size; p++)
            {
                int e = LoadLocked(p);
                if (e != 0) return e;
            }
        }
        return 0;
    }

    public bool IsResident(long pindex)
    {
        lock (_lock) return pindex >= 0 && Get(_valid, pindex);
    }

    public bool IsDirty(long pindex)
    {
        lock (_lock) return pindex >= 0 && Get(_dirty, pindex);
    }

    /// <summary>Marks the valid pages of the range dirty (their memfd content is newer than the file).</summary>
    public void MarkDirty(long pindex, long count)
    {
        lock (_lock)
        {
            for (long p = Math.Max(0, pindex); p < pindex + count && p * PageSize < _size; p++)
                if (Get(_valid, p)) Set(_dirty, p);
        }
        if (count > 0) Changed?.Invoke(Math.Max(0, pindex) * PageSize, count * PageSize);
    }

    /// <summary>Writes the dirty pages back to the backing file (the last one only up to EOF).</summary>
    public int Flush()
    {
        lock (_lock)
        {
            if (_disposed) return 0;
            int result = 0;
            for (int w = 0; w < _dirty.Length; w++)
            {
                ulong bits = _dirty[w];
                while (bits != 0)
                {
                    int b = System.Numerics.BitOperations.TrailingZeroCount(bits);
                    bits &= bits - 1;
                    long p = (long)w * 64 + b;
                    long off = p * PageSize;
                    int len = (int)Math.Min(PageSize, _size - off);
                    if (len > 0)
                    {
                        int e = _writable ? FullPRead(_memfd, _scratch, len, off, out _) : Errno.EBADF;
                        if (e == 0) e = FullPWrite(_backingFd, _scratch, len, off);
                        if (e != 0) { result = e; continue; } // stays dirty
                    }
                    Clear(_dirty, p);
                }
            }
            return result;
        }
    }

    // ---- used by LabFileSystem for FUSE requests ----

    /// <summary>
    /// FUSE READ of a regular file, mapped or not: every read through the mount comes here. Pages
    /// <paramref name="cache"/> holds come from its memfd, so read(2) sees a MAP_SHARED writer's stores
    /// before write-back; every other byte comes from the backing file through the handle's descriptor
    /// <paramref name="fd"/> (a file nobody maps has no cache: all of it). A read never loads a page
    /// into the cache, so it holds no memory and does no pager work. Bytes read before an error are
    /// returned as a short read; an error before any byte is returned.
    /// </summary>
    internal static int Read(CachedFile? cache, Fd fd, long offset, Span<byte> dest, out int read)
    {
        read = 0;
        if (offset < 0) return Errno.EINVAL; // as pread(2) says
        if (cache == null) return ReadLocked(null, fd, offset, dest, ref read);
        // The lock makes the read whole against WRITE, truncation and invalidation through the cache.
        lock (cache._lock) return cache._disposed ? Errno.EBADF : ReadLocked(cache, fd, offset, dest, ref read);
    }

    // Under cache._lock when there is a cache.
    private static int ReadLocked(CachedFile? cache, Fd fd, long offset, Span<byte> dest, ref int read)
    {
        // Where a read stops: at the size the mount reports for the file (GETATTR), which is the
        // cache's when there is one (the memfd has that size) and the backing file's end otherwise;
        // sooner if the backing file ends first (it was cut behind the mount's back).
        long end = cache?._size ?? long.MaxValue;
        if (offset >= end) return 0;
        long stop = offset + Math.Min(dest.Length, end - offset);
        fixed (byte* d = dest)
        {
            while (offset + read < stop)
            {
                long pos = offset + read;
                // Which source: one pread per run of pages that all are, or all are not, in the cache.
                bool cached = cache != null && Get(cache._valid, pos / PageSize);
                long runEnd = stop;
                if (cache != null)
                {
                    long p = pos / PageSize + 1;
                    while (p * PageSize < stop && Get(cache._valid, p) == cached) p++;
                    runEnd = Math.Min(stop, p * PageSize);
                }
                int chunk = (int)(runEnd - pos);
                int e = FullPRead(cached ? cache!._memfd : fd, d + read, chunk, pos, out int got);
                read += got;
                if (e != 0) return read > 0 ? 0 : e;
                if (got < chunk) break; // the backing file ends here
            }
        }
        return 0;
    }

    /// <summary>FUSE WRITE: writes through to the backing file via <paramref name="fd"/> and into the
    /// valid cached pages, extending the size on growth.</summary>
    internal int Write(Fd fd, long offset, ReadOnlySpan<byte> data)
    {
        lock (_lock)
        {
            fixed (byte* s = data)
            {
                int e = FullPWrite(fd, s, data.Length, offset);
                if (e != 0) return e;
            }
            if (!_disposed) ApplyWriteLocked(offset, data);
        }
        return 0;
    }

    /// <summary>Brings the cache up to a write that already reached the backing file.</summary>
    internal void ApplyWrite(long offset, ReadOnlySpan<byte> data)
    {
        lock (_lock) { if (!_disposed) ApplyWriteLocked(offset, data); }
    }

    private void ApplyWriteLocked(long offset, ReadOnlySpan<byte> data)
    {
        long end = offset + data.Length;
        if (end > _size) ResizeLocked(end);
        fixed (byte* s = data)
        {
            for (long p = offset / PageSize; p * PageSize < end; p++)
            {
                if (!Get(_valid, p)) continue; // will be read from the file when needed
                long from = Math.Max(offset, p * PageSize), to = Math.Min(end, (p + 1) * PageSize);
                FullPWrite(_memfd, s + (from - offset), (int)(to - from), from);
            }
        }
    }

    /// <summary>SETATTR size: truncates the backing file and the cache.</summary>
    internal int Truncate(long size)
    {
        lock (_lock)
        {
            if (_disposed || !_writable) return Errno.EBADF;
            if (Native.FTruncate(_backingFd, size) != 0) return Errno.Last;
            ResizeLocked(size);
        }
        return 0;
    }

    /// <summary>Brings the cache up to a size change made on the backing file by other means.</summary>
    internal void ApplyTruncate(long size)
    {
        lock (_lock) { if (!_disposed && size != _size) ResizeLocked(size); }
    }

    /// <summary>After the backing file changed under the range (fallocate, punch hole, a copy): the size is
    /// re-read and the valid pages of the range are re-read from the file. They stay valid: a page present
    /// in the memfd is mapped by programs without a fault (the lab registers shared mappings for missing
    /// pages only), so the memfd must never hold a page whose bytes are not the file's.</summary>
    internal void Invalidate(long offset, long length)
    {
        lock (_lock)
        {
            if (_disposed) return;
            Native.Statx st;
            if (Native.StatxAt(_backingFd, Native.EmptyPath, Native.AT_EMPTY_PATH, Native.STATX_BASIC_STATS, &st) == 0
                && (long)st.Size != _size)
                ResizeLocked((long)st.Size);
            for (long p = offset / PageSize; p * PageSize < offset + length && p * PageSize < _size; p++)
            {
                if (!Get(_valid, p)) continue;
                Clear(_valid, p);
                Clear(_dirty, p);
                if (LoadLocked(p) != 0) DropLocked(p);
            }
        }
    }

    /// <summary>
    /// Drop every clean page from the cache (the lab's drop_caches): the next access reads the
    /// backing file again, and mappers fault to the lab. The caller makes sure no program holds a
    /// writable shared mapping of the file, whose unflushed stores live only here. Returns pages dropped.
    /// </summary>
    public long DropClean()
    {
        long n = 0;
        lock (_lock)
        {
            if (_disposed) return 0;
            for (long p = 0; p * PageSize < _size; p++)
                if (Get(_valid, p) && !Get(_dirty, p)) { DropLocked(p); n++; }
        }
        return n;
    }

    // Under _lock: page p leaves the memfd, so the next access through a mapping faults to the lab.
    private void DropLocked(long p)
    {
        Clear(_valid, p);
        Clear(_dirty, p);
        Native.FAllocate(_memfd, Native.FALLOC_FL_PUNCH_HOLE | Native.FALLOC_FL_KEEP_SIZE, p * PageSize, PageSize);
    }

    private void ResizeLocked(long size)
    {
        long old = _size;
        Native.FTruncate(_memfd, size); // shrinking tmpfs zeroes the tail of a partial last page
        if (size > old && old % PageSize != 0 && Get(_valid, old / PageSize))
        {
            // Bytes a mapper may have stored past the old EOF must read as zeros now they are inside.
            int gap = (int)Math.Min(PageSize - old % PageSize, size - old);
            new Span<byte>(_scratch, gap).Clear();
            FullPWrite(_memfd, _scratch, gap, old);
        }
        if (size < old)
        {
            for (long p = Pages(size); p < Pages(old); p++) { Clear(_valid, p); Clear(_dirty, p); }
        }
        _size = size;
        Grow(size);
    }

    /// <summary>One more holder (a VM object mapping the file): the cache stays open, even after its node
    /// is gone (the file unlinked or renamed over), until every holder has called <see cref="Release"/>.
    /// False when it is already closed.</summary>
    public bool Hold()
    {
        int h;
        do
        {
            h = Volatile.Read(ref _holds);
            if (h <= 0) return false;
        } while (Interlocked.CompareExchange(ref _holds, h + 1, h) != h);
        return true;
    }

    /// <summary>Drops one hold; the last one writes the dirty pages back and closes the cache.</summary>
    public void Release()
    {
        if (Interlocked.Decrement(ref _holds) != 0) return;
        Flush();
        Dispose();
    }

    public void Dispose()
    {
        lock (_lock)
        {
            if (_disposed) return;
            _disposed = true;
            _memfd.Dispose();
            _backingFd.Dispose();
            NativeMemory.AlignedFree(_scratch);
        }
    }
}
