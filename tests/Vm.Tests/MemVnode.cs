using Lab.Vm;

namespace Lab.Tests.Vm;

/// <summary>
/// An in-memory file with a page cache: the backing bytes (<see cref="Data"/>), the
/// resident pages (shared mappings point at these arrays), an injectable read error
/// for one pindex, and counters of what the pager was asked.
/// </summary>
public sealed class MemVnode : IVnode
{
    public const int PageSize = 4096;
    static ulong nextIno = 100;

    readonly Dictionary<long, byte[]> cache = new();
    readonly HashSet<long> dirty = new();

    public MemVnode(long size, Func<long, byte>? fill = null, ulong? ino = null)
    {
        Ino = ino ?? Interlocked.Increment(ref nextIno);
        Data = new byte[size];
        fill ??= Pattern;
        for (long i = 0; i < size; i++) Data[i] = fill(i);
    }

    /// <summary>The default content: depends on the byte's position, never zero.</summary>
    public static byte Pattern(long pos) => (byte)(1 + (pos / PageSize * 7 + pos % 251) % 255);

    public byte[] Data { get; private set; }
    public ulong Ino { get; }
    public long Size => Data.Length;

    /// <summary>A pindex whose read fails with EIO while it is not resident.</summary>
    public long? ErrorAt { get; set; }
    /// <summary>Sleep inside LoadPages (concurrency tests).</summary>
    public int LoadDelayMs { get; set; }
    /// <summary>Runs at the start of every pager call (LoadPages), while the fault has the map unlocked.</summary>
    public Action<long, int>? OnLoad { get; set; }

    public int ReadCalls, LoadCalls, IoCalls;
    /// <summary>ObjectCreated less ObjectTerminated: 1 while the VM has an object of this file.</summary>
    public int ObjectHolds;

    public void ObjectCreated() => Interlocked.Increment(ref ObjectHolds);
    public void ObjectTerminated() => Interlocked.Decrement(ref ObjectHolds);
    public long PagesLoaded, PagesCopied;
    public readonly List<(long Pindex, int Count)> Loads = new();

    public int ReadPages(long pindex, int count, Span<byte> dest)
    {
        Interlocked.Increment(ref ReadCalls);
        int err = LoadPages(pindex, count, countCall: false);
        if (err != 0) return err;
        for (int i = 0; i < count; i++)
            lock (cache) cache[pindex + i].CopyTo(dest.Slice(i * PageSize, PageSize));
        Interlocked.Add(ref PagesCopied, count);
        return 0;
    }

    /// <summary>Runs at the end of every pager call (LoadPages) that succeeded, the map still unlocked.</summary>
    public Action<long, int>? AfterLoad { get; set; }

    public int LoadPages(long pindex, int count)
    {
        OnLoad?.Invoke(pindex, count);
        int err = LoadPages(pindex, count, countCall: true);
        if (err == 0) AfterLoad?.Invoke(pindex, count);
        return err;
    }

    int LoadPages(long pindex, int count, bool countCall)
    {
        if (countCall) Interlocked.Increment(ref LoadCalls);
        lock (cache)
        {
            bool any = false;
            for (long p = pindex; p < pindex + count; p++)
            {
                if (cache.ContainsKey(p)) continue;
                if (p == ErrorAt) return 5; // EIO
                any = true;
            }
            if (!any) return 0;
            if (LoadDelayMs > 0) Thread.Sleep(LoadDelayMs);
            IoCalls++;
            Loads.Add((pindex, count));
            for (long p = pindex; p < pindex + count; p++)
            {
                if (cache.ContainsKey(p)) continue;
                var page = new byte[PageSize];
                long off = p * PageSize;
                if (off < Data.Length) Array.Copy(Data, off, page, 0, Math.Min(PageSize, Data.Length - off));
                cache[p] = page;
                PagesLoaded++;
            }
            return 0;
        }
    }

    public bool IsResident(long pindex) { lock (cache) return cache.ContainsKey(pindex); }

    /// <summary>The page cache's page (what a shared mapping maps).</summary>
    public byte[] CachePage(long pindex) { lock (cache) return cache[pindex]; }

    public void MarkDirty(long pindex, long count)
    {
        lock (cache)
            for (long p = pindex; p < pindex + count; p++)
                if (cache.ContainsKey(p)) dirty.Add(p);
    }

    public int Flush()
    {
        lock (cache)
        {
            foreach (var p in dirty)
            {
                long off = p * PageSize;
                if (off >= Data.Length) continue;
                Array.Copy(cache[p], 0, Data, off, Math.Min(PageSize, Data.Length - off));
            }
            dirty.Clear();
        }
        return 0;
    }

    /// <summary>Drop clean pages from the cache (as the kernel may).</summary>
    public void Evict() { lock (cache) cache.Clear(); }
}
