using Lab.Vm.Pageout;

namespace Lab.Vm;

// Page queues: which pages the pageout takes. The queues themselves are Pageout/PageQueues.cs.
public sealed partial class AddressSpace
{
    // Guarded by MapLock like the rest of the space.
    readonly PageQueues queues;

    // The check word of the bytes the last PageOut saved (under the map lock).
    internal ulong lastSaveCheck;

    /// <summary>Pages installed in the pmap now (what counts against a resident limit). Read without the lock.</summary>
    public int ResidentPages => installed.Count;   // an int read: atomic, maybe a little stale

    /// <summary>Pages on the inactive queue now (stale entries included).</summary>
    public int InactivePages { get { lock (MapLock) return queues.InactiveCount; } }

    /// <summary>The installed set, for the page queues' sweep. Caller holds the map lock.</summary>
    internal PageSet InstalledPages => installed;

    /// <summary>
    /// One pageout scan: keep the inactive queue filled (deactivating active pages with the
    /// sweep) and begin the eviction of up to <paramref name="want"/> inactive pages that were
    /// not referenced since. The addresses whose eviction began (Evicted or Clean) go into
    /// <paramref name="begun"/>; the caller has the pmap take them out and then calls
    /// <see cref="CompleteEvict"/> for each. Stops early when the swap device is full.
    /// </summary>
    public int PageoutScan(int want, Span<ulong> begun, out bool swapFull) => PageoutScan(want, begun, Span<ulong>.Empty, out swapFull);

    /// <summary>
    /// <see cref="PageoutScan(int, Span{ulong}, out bool)"/>, also giving for each page begun the
    /// <see cref="PageCheck"/> of the bytes saved for it (0: nothing saved, its copy is older).
    /// The pmap can compare it with the page as it leaves: the kernel may write a page it holds
    /// pinned for I/O without a fault, after the bytes were saved.
    /// </summary>
    public int PageoutScan(int want, Span<ulong> begun, Span<ulong> saved, out bool swapFull)
    {
        swapFull = false;
        want = Math.Min(want, begun.Length);
        if (want <= 0) return 0;
        lock (MapLock)
        {
            if (!Live(OnDestroyed.Ignore)) return 0;
            return queues.Scan(want, begun, saved, out swapFull);
        }
    }
}
