namespace Lab.Tests.Vm;

/// <summary>
/// A pmap that keeps no pages, allocates nothing per call and is safe for concurrent spaces;
/// it counts installs. <paramref name="readPage"/> is what ReadPage answers (eviction asks it for the bytes).
/// </summary>
sealed class NullPmap(bool readPage) : IPmap
{
    readonly byte[] staging = new byte[4096 * 4];
    public long Installs;
    public int PageSize => 4096;
    public Span<byte> Staging(int pages) => staging.AsSpan(0, pages * 4096);
    public bool EnterCopy(ulong va, int pages, bool writable) { Interlocked.Increment(ref Installs); return true; }
    public bool EnterZero(ulong va, bool writable) { Interlocked.Increment(ref Installs); return true; }
    public bool EnterShared(ulong va, IVnode vnode, long pindex, bool writable) { Interlocked.Increment(ref Installs); return true; }
    public void Protect(ulong va, ulong length, bool writeProtect) { }
    public void Poison(ulong va) { }
    public void Wake(ulong va, ulong length) { }
    public bool ReadPage(ulong va, Span<byte> dest) => readPage;
    public void Remove(ulong va, int pages) { }
}
