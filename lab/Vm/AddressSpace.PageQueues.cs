namespace Lab.Vm;

// Page queues: which pages the pageout takes.
public sealed partial class AddressSpace
{
    // ---- page queues: which pages the pageout takes (active/inactive, second chance) ----
    //
    // Every installed page is active until a sweep deactivates it. The sweep goes round the
    // installed pages like a clock hand: a page referenced since the hand last passed (it
    // faulted: installed, or written after being write-protected) loses its reference and
    // stays active; an unreferenced one becomes inactive and is write-protected, so that a
    // write to it faults and references it again. Evictions take the inactive pages oldest
    // first; one referenced meanwhile goes back to active (second chance). Reads of a
    // resident page are invisible to us (no accessed bit through userfaultfd): a read-only
    // page is judged by when it faulted in.

    readonly PageSet referenced = new();
    readonly PageSet inactive = new();
    // Pages this scan's deactivation write-protected and that nothing has touched since (any
    // install, removal, move or mprotect of the page clears its bit): their page-out need
    // not write-protect them again.
    readonly PageSet protectedByPageout = new();
    ulong[] inactiveQueue = new ulong[64];   // FIFO ring of vpns; entries whose bit went are skipped
    int inactiveHead, inactiveCount;
    ulong activeHand;
    // The pmap refused a write protection during this scan: it is not a good moment, stop.
    bool pmapRefused;

    /// <summary>Pages installed in the pmap now (what counts against a resident limit). Read without the lock.</summary>
    public int ResidentPages => installed.Count;   // an int read: atomic, maybe a little stale

    /// <summary>Pages on the inactive queue now (stale entries included).</summary>
    public int InactivePages { get { lock (MapLock) return inactive.Count; } }

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
        int n = 0;
        lock (MapLock)
        {
            if (destroyed) return 0;
            Interlocked.Increment(ref Counters.pd_scans);
            pmapRefused = false;
            // A few rounds: the first sweeps may only clear reference bits.
            for (int round = 0; round < 3 && n < want && !pmapRefused; round++)
            {
                if (inactive.Count < want * 2) Deactivate(want * 2 - inactive.Count);
                while (n < want && inactiveCount > 0 && !pmapRefused)
                {
                    ulong vpn = inactiveQueue[inactiveHead];
                    inactiveHead = (inactiveHead + 1) % inactiveQueue.Length;
                    inactiveCount--;
                    if (!inactive.Remove(vpn)) continue;             // stale: already handled
                    if (!installed.Contains(vpn)) continue;           // gone meanwhile
                    if (referenced.Remove(vpn))
                    {
                        Interlocked.Increment(ref Counters.pd_reactivated);
                        continue;
                    }
                    ulong va = vpn << Vm.PageShift;
                    lastSaveCheck = 0;
                    var r = BeginEvict(va);
                    if (r is EvictResult.Evicted or EvictResult.Clean)
                    {
                        if (n < saved.Length) saved[n] = r == EvictResult.Evicted ? lastSaveCheck : 0;
                        begun[n++] = va;
                    }
                    // A dirty page with nowhere to go stays active; clean pages behind it are still taken.
                    else if (r == EvictResult.NoSwap) swapFull = true;
                }
            }
        }
        return n;
    }

    /// <summary>Move up to <paramref name="count"/> unreferenced active pages to the inactive queue. Caller holds the map lock.</summary>
    void Deactivate(int count)
    {
        if (count <= 0 || installed.Count == 0) return;
        Span<ulong> look = count <= 256 ? stackalloc ulong[256] : new ulong[Math.Min(count * 2, 65536)];
        // Looking at each installed page at most twice: the first time may only clear its bit.
        int budget = Math.Min(installed.Count * 2, 1 << 22);
        ulong runStart = 0;
        int runCount = 0;
        try
        {
            DeactivateSome(ref count, ref budget, look, ref runStart, ref runCount);
        }
        finally
        {
            if (runCount > 0) ProtectRun(ref runStart, ref runCount);
        }
    }

    /// <summary>
    /// Write-protect a run of pages just deactivated; they count as protected by the pageout.
    /// False: the pmap refused (an event is pending): stop the scan. The run's pages stay
    /// inactive unprotected, so their page-out protects them itself.
    /// </summary>
    bool ProtectRun(ref ulong runStart, ref int runCount)
    {
        bool ok = Pmap.TryWriteProtect(runStart << Vm.PageShift, (ulong)runCount << Vm.PageShift);
        if (ok)
            for (int k = 0; k < runCount; k++) protectedByPageout.Add(runStart + (ulong)k);
        else pmapRefused = true;
        runCount = 0;
        return ok;
    }

    void DeactivateSome(ref int count, ref int budget, Span<ulong> look, ref ulong runStart, ref int runCount)
    {
        while (count > 0 && budget > 0 && !pmapRefused)
        {
            int got = installed.CollectFrom(activeHand, look[..Math.Min(look.Length, budget)]);
            if (got == 0) return;
            budget -= got;
            for (int i = 0; i < got && count > 0; i++)
            {
                ulong vpn = look[i];
                activeHand = vpn + 1;
                if (inactive.Contains(vpn) || (evictingCount > 0 && evicting.Contains(vpn))) continue;
                var e = FindEntry(vpn << Vm.PageShift);
                if (e == null || e.Wired) continue;
                if (referenced.Remove(vpn))
                {
                    Interlocked.Increment(ref Counters.pd_skipped_referenced);
                    continue;
                }
                // Shared file pages need no write protection: evicting them loses nothing.
                // The others are protected a run of neighbours at a time (one ioctl per run).
                if (!e.Shared && (e.Protection & Prot.Write) != 0)
                {
                    if (runCount > 0 && vpn != runStart + (ulong)runCount && !ProtectRun(ref runStart, ref runCount)) return;
                    if (runCount == 0) runStart = vpn;
                    runCount++;
                }
                inactive.Add(vpn);
                if (inactiveCount == inactiveQueue.Length) GrowInactiveQueue();
                inactiveQueue[(inactiveHead + inactiveCount) % inactiveQueue.Length] = vpn;
                inactiveCount++;
                Interlocked.Increment(ref Counters.pd_deactivated);
                count--;
            }
        }
    }

    void GrowInactiveQueue()
    {
        var bigger = new ulong[inactiveQueue.Length * 2];
        for (int i = 0; i < inactiveCount; i++) bigger[i] = inactiveQueue[(inactiveHead + i) % inactiveQueue.Length];
        inactiveQueue = bigger;
        inactiveHead = 0;
    }
}
