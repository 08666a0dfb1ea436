using Lab.Vm.Mach;

namespace Lab.Vm.FreeBsd;

/// <summary>
/// The FreeBSD fault handler (vm_fault_hold, c. 2016, seed 000) over the lab's
/// objects: shadow-chain walk, first-object placeholder, vnode pager with
/// read-behind/ahead and sequential detection, zero fill, copy-on-write by copy or
/// by moving the page, and prefault of resident neighbours. The steps it shares
/// with DragonFly are in <see cref="ChainFault"/>; what is FreeBSD's own is here:
/// the soft fast path, the read window (next_read / read_ahead, advice) and the
/// re-lookup after I/O.
/// </summary>
public sealed class FreeBsdResolver : IResolver, IChainDesign, IWiringResolver, IWillNeedResolver
{
    // Read clustering (VM_FAULT_READ_AHEAD_MIN/MAX, VM_FAULT_READ_DEFAULT), in pages.
    internal const int ReadAheadMin = 7, ReadAheadMax = 31;
    internal const int ReadDefault = 1 + VmMapEntry.ReadAheadInit;
    // vm_fault_dontneed's cluster: the larger of VM_FAULT_DONTNEED_MIN (1 MiB) and the
    // smallest superpage (2 MiB on x86-64), in pages.
    internal const int DontneedPages = (2 << 20) / Vm.PageSize;

    const int PageSize = Vm.PageSize;

    public string Name => "freebsd";

    public FaultResult Fault(AddressSpace space, ulong va, FaultAccess access) =>
        ChainFault.Drive<FreeBsdResolver>(space, va, access);

    FaultResult IWiringResolver.WiringFault(AddressSpace space, ulong va, FaultAccess access) =>
        ChainFault.Drive<FreeBsdResolver>(space, va, access, wiring: true);

    // vm_map_madvise: vm_map_pmap_enter of any entry's object, unless the entry is wired.
    int IWillNeedResolver.WillNeed(AddressSpace space, ulong start, ulong end) =>
        ChainFault.WillNeed(space, start, end, vnodeOnly: false, skipWired: true);

    /// <summary>One pass from RetryFault to the end. The map lock is held on entry and on return.</summary>
    static Step IChainDesign.Run(ref FaultState fs)
    {
        fs.Reset();   // hardfault, behind, ahead, faultcount live across passes (000: 297, 301)
        var step = ChainFault.Lookup(ref fs);
        if (step != Step.Continue) return step;
        // vm_fault_dirty: a write (a wired entry's fault is one when the entry is writable,
        // 000: 348–349) dirties the page, but not a wiring fault (000: 191–193).
        fs.need_dirty = fs.write && !fs.wiring;
        // The soft fast path is not for wiring faults (000: 354–355).
        if (!fs.wiring && FastPath(ref fs)) return Step.Done;
        step = ChainFault.Walk(ref fs);
        if (step == Step.Pager) step = PagerGet(ref fs);
        if (step != Step.Continue) return step;
        step = ChainFault.Cow(ref fs, moveAllowed: true);
        if (step != Step.Continue) return step;
        if (fs.hardfault)
            fs.entry.next_read = fs.pindex + fs.ahead + 1;  // as the seed: fs.pindex after the COW step
        fs.result = ChainFault.Enter(ref fs);
        ChainFault.End(ref fs);
        if (fs.result == FaultResult.Resolved && fs.faultcount != 1)   // no prefault after a zero fill
        {
            ChainFault.Prefault(ref fs,
                fs.faultcount > 0 ? fs.behind : ChainFault.PFBAK,
                fs.faultcount > 0 ? fs.ahead : ChainFault.PFFOR);
        }
        return Step.Done;
    }

    // ---- soft fast path, page resident in the first object ----

    static bool FastPath(ref FaultState fs)
    {
        var first = fs.first_object;
        // A writable mapping of a vnode object not yet mapped writable anywhere takes the slow
        // path, which sets OBJ_MIGHTBEDIRTY (000: 357–366; set at 940 through 196).
        if ((fs.prot & Prot.Write) != 0 && first.Kind == VmObjectKind.Vnode && !first.MightBeDirty) return false;
        PageState m;
        lock (first.Lock)
        {
            // A paged-out page is not resident (000: 367, 369–371).
            if (first.Lookup(fs.first_pindex, out m) != PageLookup.Found || ChainFault.PagedOutFor(ref fs, m)) return false;
        }
        Interlocked.Increment(ref fs.counters.fastpath_hits);
        fs.depth = 1;
        fs.obj = first;
        fs.pindex = fs.first_pindex;
        fs.m = m;
        fs.src = first;
        fs.src_pindex = fs.first_pindex;
        fs.result = ChainFault.Enter(ref fs);
        if (fs.result == FaultResult.Resolved) ChainFault.Prefault(ref fs, ChainFault.PFBAK, ChainFault.PFFOR);
        if (fs.result is FaultResult.Resolved or FaultResult.Superseded)
            Interlocked.Increment(ref fs.counters.ru_minflt);   // the fast path's success is a minor fault (000: 389)
        return true;
    }

    // ---- pager I/O: window, call, re-lookup ----

    static Step PagerGet(ref FaultState fs)
    {
        ReadWindow(ref fs);
        var step = ChainFault.PagerGet(ref fs, out int error);
        if (!Revalidate(ref fs))
        {
            Interlocked.Increment(ref fs.counters.revalidate_retries);
            return Step.Retry;
        }
        return error != 0 ? ChainFault.PagerFailed(ref fs) : step;
    }

    /// <summary>
    /// The read window. RANDOM reads the page alone; SEQUENTIAL reads the maximum
    /// ahead; NORMAL treats a fault at the entry's next_read as sequential and grows
    /// the read-ahead arithmetically up to the maximum, and reads the aligned cluster
    /// around any other fault. Clipped to the entry.
    /// </summary>
    static void ReadWindow(ref FaultState fs)
    {
        var e = fs.entry;
        int era = e.read_ahead, nera;
        long pindex = fs.pindex;
        long behind, ahead;
        if (e.Advice == Advice.Random)
        {
            behind = 0;
            nera = 0;
            ahead = 0;
        }
        else if (e.Advice == Advice.Sequential)
        {
            behind = 0;
            nera = ReadAheadMax;
            ahead = nera;
            if (pindex == e.next_read) Dontneed(ref fs, (int)ahead);
        }
        else if (pindex == e.next_read)
        {
            behind = 0;
            nera = ReadAheadMin;
            if (era > 0)
            {
                nera += era + 1;
                if (nera > ReadAheadMax) nera = ReadAheadMax;
            }
            ahead = nera;
            if (era == ReadAheadMax) Dontneed(ref fs, (int)ahead);
        }
        else
        {
            int cluster_offset = (int)(pindex % ReadDefault);
            behind = Math.Min(cluster_offset, (long)((fs.va - e.Start) / PageSize));
            nera = 0;
            ahead = ReadDefault - 1 - cluster_offset;
        }
        ahead = Math.Min(ahead, (long)((e.End - fs.va) / PageSize) - 1);
        if (era != nera) e.read_ahead = nera;
        fs.behind = (int)behind;
        fs.ahead = (int)ahead;
    }

    /// <summary>
    /// vm_fault_dontneed: when this sequential read's window reaches the last
    /// <paramref name="ahead"/>+1 pages of a DontneedPages-aligned cluster of the address
    /// space, the whole cluster before it (clipped to the entry) would be advised away
    /// (pmap_advise DONTNEED) and its valid, non-busy first-object pages deactivated.
    /// The lab's page queues do not take this advice and the VM cannot zap another thread's pages, so it counts
    /// those pages in behind_deactivated. Backing-object pages are not its concern (the
    /// seed's fault deactivates them elsewhere). A vnode first object's valid pages are
    /// its resident page-cache pages.
    /// </summary>
    static void Dontneed(ref FaultState fs, int ahead)
    {
        const ulong size = (ulong)DontneedPages * PageSize;
        var e = fs.entry;
        ulong vaddr = fs.va;
        ulong end = vaddr / size * size;
        if (vaddr - end < size - PageSize - (ulong)ahead * PageSize || e.Start >= end) return;
        ulong start = end - e.Start < size ? e.Start : end - size;
        long pstart = e.PindexOf(start), pend = e.PindexOf(end);
        var first = fs.first_object;
        int n = 0;
        lock (first.Lock)
        {
            if (first.Kind == VmObjectKind.Vnode)
            {
                var vnode = first.Vnode!;
                for (long p = pstart; p < pend; p++)
                    if (!first.pages.ContainsKey(p) && vnode.IsResident(p)) n++;   // a busy slot is being read
            }
            else
            {
                foreach (var (p, st) in first.pages)
                    if (p >= pstart && p < pend && !st.Busy && st.Content is not (PageContent.None or PageContent.Swap)) n++;   // evicted pages are not resident
            }
        }
        if (n > 0) Interlocked.Add(ref fs.counters.behind_deactivated, n);
    }

    /// <summary>
    /// After the map lock was dropped: if the map changed, look the address up again;
    /// a different object or pindex means start over. (The seed revalidates after its
    /// COW step; the lab does it as soon as the lock is back, so the model is never
    /// changed on a stale lookup and a retried fault does not count its COW twice.)
    /// </summary>
    static bool Revalidate(ref FaultState fs)
    {
        fs.lookup_still_valid = true;
        var space = fs.space;
        if (space.Version == fs.map_generation) return true;
        var e = space.Destroyed ? null : space.FindEntry(fs.va);
        if (e == null || !ChainFault.Permits(e.Protection, fs.write) || (e.needs_copy && fs.write)) return false;
        if (e.Object != fs.first_object || e.PindexOf(fs.va) != fs.first_pindex) return false;
        var prot = e.Protection;
        if (e.needs_copy) prot &= ~Prot.Write;
        fs.prot &= prot;
        fs.entry = e;
        fs.map_generation = space.Version;
        return true;
    }
}
