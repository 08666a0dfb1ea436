using Lab.Vm.Mach;

namespace Lab.Vm.DragonFly;

/// <summary>
/// The DragonFly fault handler (vm_fault / vm_fault_object, September 2006, seed 002).
/// Same shadow-chain lineage as FreeBSD and the same shared steps
/// (<see cref="ChainFault"/>); DragonFly's own parts are here: no soft fast path, a
/// fixed read window of 7 behind / 8 ahead with <c>lastr</c> sequential detection and
/// cache-behind, the COW move only while the map generation is unchanged, and a plain
/// retry (no re-lookup) when the map changed while it was unlocked for I/O.
/// </summary>
public sealed class DragonFlyResolver : IResolver, IChainDesign, IWiringResolver, IWillNeedResolver
{
    // VM_FAULT_READ_AHEAD / VM_FAULT_READ_BEHIND / VM_FAULT_READ, in pages.
    internal const int ReadAhead = 8, ReadBehind = 7, ReadMax = ReadAhead + ReadBehind + 1;
    // Cache-behind scans back at most this many first-object pages (2 * VM_FAULT_READ).
    internal const int CacheBehind = 2 * ReadMax;

    public string Name => "dragonfly";

    public FaultResult Fault(AddressSpace space, ulong va, FaultAccess access) =>
        ChainFault.Drive<DragonFlyResolver>(space, va, access);

    FaultResult IWiringResolver.WiringFault(AddressSpace space, ulong va, FaultAccess access) =>
        ChainFault.Drive<DragonFlyResolver>(space, va, access, wiring: true);

    // vm_map_madvise: pmap_object_init_pt, which maps the pages of vnode objects only.
    int IWillNeedResolver.WillNeed(AddressSpace space, ulong start, ulong end) =>
        ChainFault.WillNeed(space, start, end, vnodeOnly: true, skipWired: false);

    static Step IChainDesign.Run(ref FaultState fs)
    {
        fs.Reset();   // hardfault lives across passes (002: 224)
        fs.ResetWindow();
        var step = ChainFault.Lookup(ref fs);
        if (step != Step.Continue) return step;
        // The user fault path passes VM_FAULT_DIRTY for a write (the program's write, not a
        // wired entry's upgrade); wiring faults pass the wire flags only. With it a writable
        // install dirties the page and drops its swap copy (002: 997, 1022–1026).
        fs.need_dirty = fs.access != FaultAccess.Read && !fs.wiring;
        step = ChainFault.Walk(ref fs);
        if (step == Step.Pager) step = PagerGet(ref fs);
        if (step != Step.Continue) return step;
        // The move needs the map as the lookup saw it (the seed also wants the map lock,
        // which the lab's fault always holds again by now).
        step = ChainFault.Cow(ref fs, moveAllowed: fs.map_generation == fs.space.Version);
        if (step != Step.Continue) return step;
        if (!fs.lookup_still_valid && fs.space.Version != fs.map_generation)
        {
            // KERN_TRY_AGAIN: start over rather than re-look-up. A copy made above stays
            // in the first object, described by its source, and the next pass finds it.
            Interlocked.Increment(ref fs.counters.revalidate_retries);
            return Step.Retry;
        }
        fs.result = ChainFault.Enter(ref fs);
        ChainFault.End(ref fs);
        // pmap_prefault, called after every fault that is not a wiring one.
        if (fs.result == FaultResult.Resolved)
            ChainFault.Prefault(ref fs, ChainFault.PFBAK, ChainFault.PFFOR);
        return Step.Done;
    }

    // ---- pager I/O ----

    static Step PagerGet(ref FaultState fs)
    {
        ReadWindow(ref fs);
        int behindAsked = fs.behind;
        var step = ChainFault.PagerGet(ref fs, out int error);
        // lastr is updated before the call in the seed, from the pages it asked for;
        // the lab knows the clipped window only now (the map lock is held again).
        // As in the seed: "imperfect", the requested behind is subtracted.
        if (error == 0) fs.entry.lastr = fs.pindex + fs.faultcount - behindAsked;
        if (error != 0)
        {
            // The seed fails without looking at the map again.
            return ChainFault.PagerFailed(ref fs);
        }
        return step;
    }

    /// <summary>
    /// RANDOM reads the page alone. Otherwise up to 7 behind and 8 ahead (at least one
    /// ahead, bounded by the object). A SEQUENTIAL entry, or a fault within VM_FAULT_READ
    /// pages after <c>lastr</c>, is sequential: the first-object pages behind it are
    /// cached or deactivated, and behind is folded into ahead.
    /// </summary>
    static void ReadWindow(ref FaultState fs)
    {
        var e = fs.entry;
        long pindex = fs.pindex;
        long behind = 0, ahead = 0;
        if (e.Advice != Advice.Random)
        {
            behind = Math.Min(pindex, ReadBehind);
            ahead = Math.Clamp(fs.obj.Size - pindex, 1, ReadAhead);
        }
        bool sequential = e.Advice == Advice.Sequential
            || (e.Advice != Advice.Random && pindex >= e.lastr && pindex < e.lastr + ReadMax);
        if (sequential)
        {
            CacheBehindPages(ref fs);
            ahead += behind;
            behind = 0;
        }
        fs.behind = (int)behind;
        fs.ahead = (int)ahead;
    }

    /// <summary>
    /// Walk back from the faulting page through up to 32 first-object pages, stopping at
    /// the first one missing; busy pages are skipped. Dirty pages would be unmapped and
    /// deactivated, clean ones moved to the cache queue. The lab's page queues do not take this
    /// advice and the VM cannot unmap another thread's view, so this only counts (behind_deactivated).
    /// </summary>
    static void CacheBehindPages(ref FaultState fs)
    {
        var first = fs.first_object;
        long firstpindex = fs.first_pindex < CacheBehind ? 0 : fs.first_pindex - CacheBehind;
        int n = 0;
        lock (first.Lock)
        {
            for (long p = fs.first_pindex - 1; p >= firstpindex; p--)
            {
                var look = first.Lookup(p, out var st);
                // Missing, or paged out (not resident), ends it (002: 683–685).
                if (look == PageLookup.Absent || st.Content is PageContent.None or PageContent.Swap) break;
                if (look == PageLookup.Busy) continue;
                n++;
            }
        }
        if (n > 0) Interlocked.Add(ref fs.counters.behind_deactivated, n);
    }
}
