namespace Lab.Vm;

// Page-out, the VM half: the daemon chooses the pages and owns the store.
public sealed partial class AddressSpace
{
    // ---- page-out (the VM half: the daemon chooses the pages and owns the store) ----

    /// <summary>
    /// Page out the page at <paramref name="va"/>: <see cref="BeginEvict"/> then
    /// <see cref="CompleteEvict"/>, for a pmap whose Remove is synchronous.
    /// </summary>
    public EvictResult Evict(ulong va)
    {
        var r = BeginEvict(va);
        if (r is EvictResult.Evicted or EvictResult.Clean) CompleteEvict(va);
        return r;
    }

    /// <summary>
    /// First half of a page-out. The page's bytes are saved where they are not already
    /// kept: a dirty anonymous page (a shadow object's, or an anon's) is write-protected,
    /// read from the process and written to a new swap slot, and the model then says the
    /// slot holds it. A page equal to the file or zero, a shared file page, or one whose
    /// swap copy is current is dropped without I/O. Then <see cref="IPmap.Remove"/> is
    /// asked; until <see cref="CompleteEvict"/>, faults on the page get
    /// <see cref="FaultResult.Retry"/>. Nothing changes unless the result is Evicted or Clean.
    /// </summary>
    public EvictResult BeginEvict(ulong va)
    {
        va &= ~PageMask;
        ulong vpn = va >> Vm.PageShift;
        lock (MapLock)
        {
            var e = Live(OnDestroyed.Ignore) ? FindEntry(va) : null;
            if (e == null || !installed.Contains(vpn)) return EvictResult.NotResident;
            if (e.Wired) return EvictResult.Wired;
            if (evictingCount > 0 && evicting.Contains(vpn)) return EvictResult.Busy;
            if (FaultingVpn(vpn)) return EvictResult.Busy;   // the fault's page, busy until it ends
            var r = e.Shared ? EvictResult.Clean : Layer.Evict(this, e, va);
            if (r is not (EvictResult.Evicted or EvictResult.Clean)) return r;
            if (r == EvictResult.Clean) Interlocked.Increment(ref Counters.evict_clean);
            evicting.Add(vpn);
            evictingCount++;
            // No Bump(): a page-out is no map change. A fault in progress on this page was
            // refused above; faults on other pages do not depend on it.
            Pmap.Remove(va, 1);
            return r;
        }
    }

    /// <summary>A 64-bit check word of a page's bytes (FNV-1a over its words; never 0). The shim computes the same.</summary>
    public static ulong PageCheck(ReadOnlySpan<byte> page)
    {
        var words = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ulong>(page);
        ulong h = 0xcbf29ce484222325;
        foreach (ulong w in words) h = (h ^ w) * 0x100000001b3;
        return h | 1;
    }

    /// <summary>
    /// What evicting a page holding <paramref name="content"/> takes: Clean (its bytes are
    /// kept elsewhere: a current swap copy, zero, the file), Evicted (they must be saved to
    /// swap first) or Busy (in transit). <paramref name="mustSave"/>: its swap copy is stale.
    /// </summary>
    internal static EvictResult EvictNeeds(PageContent content, bool mustSave) => content switch
    {
        PageContent.Swap when !mustSave => EvictResult.Clean,
        PageContent.Zero or PageContent.File => EvictResult.Clean,
        PageContent.Swap or PageContent.InSpaces => EvictResult.Evicted,
        _ => EvictResult.Busy,
    };

    /// <summary>The pmap has removed the page: forget it as installed and let its faults through.</summary>
    public void CompleteEvict(ulong va)
    {
        ulong vpn = (va & ~PageMask) >> Vm.PageShift;
        lock (MapLock)
        {
            if (!evicting.Remove(vpn)) return;
            evictingCount--;
            installed.Remove(vpn);
            queues.Unprotected(vpn);
            mustSave.Remove(vpn);
        }
    }

    /// <summary>
    /// The pmap could not take the page out after all (the process's agent was busy or
    /// failed): the page stays installed. Its bytes are still equal to what
    /// <see cref="BeginEvict"/> saved (it is write-protected; a write would have waited), so
    /// it is clean against its swap copy as far as faults show; but the kernel may write a
    /// page it holds pinned for I/O without a fault, so its next page-out saves it again.
    /// Faults on it go through again.
    /// </summary>
    public void AbortEvict(ulong va)
    {
        ulong vpn = (va & ~PageMask) >> Vm.PageShift;
        lock (MapLock)
        {
            if (!evicting.Remove(vpn)) return;
            evictingCount--;
            mustSave.Add(vpn);
        }
    }

    /// <summary>Whether a page-out of <paramref name="va"/> is under way. Caller holds the map lock.</summary>
    internal bool EvictingPage(ulong va) => EvictingVpn(va >> Vm.PageShift);

    /// <summary><see cref="EvictingPage"/> by page number. Caller holds the map lock.</summary>
    internal bool EvictingVpn(ulong vpn) => evictingCount > 0 && evicting.Contains(vpn);

    /// <summary>Whether the page's next page-out must save its bytes again (its eviction was aborted). Caller holds the map lock.</summary>
    internal bool MustSave(ulong va) => mustSave.Contains(va >> Vm.PageShift);


    /// <summary>
    /// Write-protect the page (a write meanwhile becomes a write-protect fault, which
    /// waits), read its bytes from the process and write them to the swap device.
    /// Returns the slot, 0 without a device or when it is full, -1 when the bytes could
    /// not be read. Caller holds the map lock.
    /// </summary>
    internal long PageOut(ulong va, SwapOwnerKind kind, long ownerId, long ownerIndex)
    {
        AssertMapLocked();
        if (Vm.Swap == null) return 0;
        if (!queues.TakeProtected(va >> Vm.PageShift) && !Pmap.TryWriteProtect(va, PageSize))
        {
            queues.PmapRefused();
            return -1;   // without it a write could be lost: later
        }
        var buf = Pmap.Staging(1);
        if (!Pmap.ReadPage(va, buf)) return -1;
        lastSaveCheck = PageCheck(buf[..PageSize]);
        long slot = Vm.SwapWrite(kind, ownerId, ownerIndex, buf);
        if (slot <= 0) return 0;
        Interlocked.Increment(ref Counters.pageouts);
        mustSave.Remove(va >> Vm.PageShift);   // saved now: the copy is current again
        return slot;
    }
}
