using System.Diagnostics;

namespace Lab.Vm.Pageout;

/// <summary>
/// One address space's page queues: which pages the pageout takes (active/inactive,
/// second chance). Guarded by the space's map lock: every member is called with it held.
/// </summary>
/// <remarks>
/// Every installed page is active until a sweep deactivates it. The sweep goes round the
/// installed pages like a clock hand: a page referenced since the hand last passed (it
/// faulted: installed, or written after being write-protected) loses its reference and
/// stays active; an unreferenced one becomes inactive and is write-protected, so that a
/// write to it faults and references it again. Evictions take the inactive pages oldest
/// first; one referenced meanwhile goes back to active (second chance). Reads of a
/// resident page are invisible to us (no accessed bit through userfaultfd): a read-only
/// page is judged by when it faulted in.
/// </remarks>
internal sealed class PageQueues
{
    readonly AddressSpace space;
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

    internal PageQueues(AddressSpace space) => this.space = space;

    [Conditional("DEBUG")]
    void AssertLocked() => Debug.Assert(Monitor.IsEntered(space.MapLock), "caller holds the map lock");

    /// <summary>Pages on the inactive queue now (stale entries included).</summary>
    public int InactiveCount { get { AssertLocked(); return inactive.Count; } }

    /// <summary>The page was just installed (fault, prefault, write-protect resolution): its reference bit is set.</summary>
    public void Installed(ulong vpn)
    {
        referenced.Add(vpn);   // the pageout's reference bit: this page was just used
        if (protectedByPageout.Count > 0) protectedByPageout.Remove(vpn);
    }

    /// <summary>A fork child's page: it starts referenced.</summary>
    public void Reference(ulong vpn) => referenced.Add(vpn);

    /// <summary>The page's protection is no longer the pageout's doing (gone, or changed by someone else).</summary>
    public void Unprotected(ulong vpn) => protectedByPageout.Remove(vpn);

    /// <summary><see cref="Unprotected(ulong)"/> for the pages [first, end).</summary>
    public void Unprotected(ulong first, ulong end)
    {
        if (protectedByPageout.Count > 0) protectedByPageout.RemoveRange(first, end);
    }

    /// <summary>Whether the pageout's deactivation write-protected the page (and forget that it did).</summary>
    public bool TakeProtected(ulong vpn) => protectedByPageout.Remove(vpn);

    /// <summary>The pmap refused a write protection: the scan stops.</summary>
    public void PmapRefused() => pmapRefused = true;

    /// <summary>The page leaves its address (mremap): its queue state goes; returns its reference bit for <see cref="MovedIn"/>.</summary>
    public bool MoveOut(ulong vpn)
    {
        bool r = referenced.Remove(vpn);
        inactive.Remove(vpn);
        protectedByPageout.Remove(vpn);
        return r;
    }

    /// <summary>The page arrived at <paramref name="vpn"/> (mremap), active, with the reference bit it had.</summary>
    public void MovedIn(ulong vpn, bool wasReferenced)
    {
        if (wasReferenced) referenced.Add(vpn);
    }

    /// <summary>The space is destroyed: every queue empties.</summary>
    public void Clear()
    {
        referenced.Clear();
        inactive.Clear();
        protectedByPageout.Clear();
        inactiveCount = 0;
    }

    /// <summary>
    /// One pageout scan (<see cref="AddressSpace.PageoutScan(int, Span{ulong}, Span{ulong}, out bool)"/>)
    /// with the map lock held: keep the inactive queue filled and begin the eviction of up to
    /// <paramref name="want"/> unreferenced inactive pages.
    /// </summary>
    public int Scan(int want, Span<ulong> begun, Span<ulong> saved, out bool swapFull)
    {
        AssertLocked();
        swapFull = false;
        int n = 0;
        var counters = space.Counters;
        var installed = space.InstalledPages;
        Interlocked.Increment(ref counters.pd_scans);
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
                    Interlocked.Increment(ref counters.pd_reactivated);
                    continue;
                }
                ulong va = vpn << Vm.PageShift;
                space.lastSaveCheck = 0;
                var r = space.BeginEvict(va);
                if (r is EvictResult.Evicted or EvictResult.Clean)
                {
                    if (n < saved.Length) saved[n] = r == EvictResult.Evicted ? space.lastSaveCheck : 0;
                    begun[n++] = va;
                }
                // A dirty page with nowhere to go stays active; clean pages behind it are still taken.
                else if (r == EvictResult.NoSwap) swapFull = true;
            }
        }
        return n;
    }

    /// <summary>Move up to <paramref name="count"/> unreferenced active pages to the inactive queue.</summary>
    void Deactivate(int count)
    {
        var installed = space.InstalledPages;
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
        bool ok = space.Pmap.TryWriteProtect(runStart << Vm.PageShift, (ulong)runCount << Vm.PageShift);
        if (ok)
            for (int k = 0; k < runCount; k++) protectedByPageout.Add(runStart + (ulong)k);
        else pmapRefused = true;
        runCount = 0;
        return ok;
    }

    void DeactivateSome(ref int count, ref int budget, Span<ulong> look, ref ulong runStart, ref int runCount)
    {
        var installed = space.InstalledPages;
        while (count > 0 && budget > 0 && !pmapRefused)
        {
            int got = installed.CollectFrom(activeHand, look[..Math.Min(look.Length, budget)]);
            if (got == 0) return;
            budget -= got;
            for (int i = 0; i < got && count > 0; i++)
            {
                ulong vpn = look[i];
                activeHand = vpn + 1;
                if (inactive.Contains(vpn) || space.EvictingVpn(vpn)) continue;
                var e = space.FindEntry(vpn << Vm.PageShift);
                if (e == null || e.Wired) continue;
                if (referenced.Remove(vpn))
                {
                    Interlocked.Increment(ref space.Counters.pd_skipped_referenced);
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
                Interlocked.Increment(ref space.Counters.pd_deactivated);
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
