namespace Lab.Vm.Mach;

/// <summary>What a step tells the driver.</summary>
internal enum Step
{
    /// <summary>Go on with the next step.</summary>
    Continue,
    /// <summary>The fault is over; <see cref="FaultState.result"/> says how.</summary>
    Done,
    /// <summary>Start over from the lookup (RetryFault / KERN_TRY_AGAIN).</summary>
    Retry,
    /// <summary>The walk stopped at a vnode object page that must be read: fs.obj/fs.pindex, slot busied.</summary>
    Pager,
}

/// <summary>A design that tells a wiring fault (VM_FAULT_WIRE, from <see cref="AddressSpace.Wire"/>) from a program's fault.</summary>
internal interface IWiringResolver
{
    FaultResult WiringFault(AddressSpace space, ulong va, FaultAccess access);
}

/// <summary>A design whose madvise(MADV_WILLNEED) maps resident pages (FreeBSD, DragonFly; see <see cref="ChainFault.WillNeed"/>).</summary>
internal interface IWillNeedResolver
{
    /// <summary>Map what the design's WILLNEED maps in [start, end); the map lock is held. Returns the pages mapped.</summary>
    int WillNeed(AddressSpace space, ulong start, ulong end);
}

/// <summary>One design of the Mach shadow-chain lineage: how one pass from the lookup to the end runs.</summary>
internal interface IChainDesign
{
    static abstract Step Run(ref FaultState fs);
}

/// <summary>
/// The steps the FreeBSD (seed 000) and DragonFly (seed 002) fault handlers share,
/// one method per step in the manner of NetBSD uvm_fault.c 1.208: lookup, walk,
/// pager I/O, copy-on-write, enter, prefault, failure and cleanup. Each design
/// composes them in its own <see cref="IChainDesign.Run"/> and adds what differs
/// (read window, revalidation, fast path, move condition).
/// </summary>
internal static partial class ChainFault
{
    // Prefault window around a fault (PFBAK/PFFOR); DragonFly's pmap_prefault uses the same.
    internal const int PFBAK = 4, PFFOR = 4;

    const int PageSize = Vm.PageSize;

    /// <summary>The retry loop around <typeparamref name="TDesign"/>'s pass. Generic over a static interface so nothing is allocated.</summary>
    public static FaultResult Drive<TDesign>(AddressSpace space, ulong va, FaultAccess access, bool wiring = false)
        where TDesign : IChainDesign
    {
        ArgumentNullException.ThrowIfNull(space);
        var fs = new FaultState
        {
            space = space,
            counters = space.Counters,
            va = va & ~(ulong)(PageSize - 1),
            access = access,
            write = access != FaultAccess.Read,
            wiring = wiring,
        };
        Monitor.Enter(space.MapLock);
        try
        {
            while (true)
            {
                var step = TDesign.Run(ref fs);
                Release(ref fs);
                if (step != Step.Retry) break;
                Interlocked.Increment(ref fs.counters.fault_retries);
            }
            if (fs.depth > 0) fs.counters.CountWalk(fs.depth);
            // The seeds leave collapse to the object layer; the lab also tries it after a
            // copy-on-write, in the faulting space with its own map lock only.
            if (fs.cowed) space.Vm.CollapseAfterCow(fs.first_object, fs.counters);
            return fs.result;
        }
        finally
        {
            Release(ref fs);
            Monitor.Exit(space.MapLock);
        }
    }

    // ---- map lookup (vm_map_lookup), needs_copy included ----

    public static Step Lookup(ref FaultState fs)
    {
        var space = fs.space;
        if (space.EvictingPage(fs.va))
        {
            // The page's removal is under way: resolving now would install or unprotect a
            // page the removal then takes away. The caller parks the thread and retries.
            Interlocked.Increment(ref fs.counters.evict_retries);
            fs.result = FaultResult.Retry;
            return Step.Done;
        }
        var e = space.Destroyed ? null : space.FindEntry(fs.va);
        if (e == null || !Permits(e.Protection, fs.write))
        {
            Interlocked.Increment(ref fs.counters.sigsegv);
            fs.result = FaultResult.SigSegv;
            return Step.Done;
        }
        var prot = e.Protection;
        if (e.Wired)
        {
            // A wired entry is faulted with its full protection, so copy-on-write is
            // broken now and the page is installed writable.
            fs.wired = true;
            if ((prot & Prot.Write) != 0) fs.write = true;
        }
        if (e.needs_copy)
        {
            if (fs.write)
            {
                // A private copy is needed now: put a shadow in front (vm_object_shadow).
                if (space.Vm.Shadow(e)) Interlocked.Increment(ref fs.counters.shadows_created);
                space.Bump();
            }
            else
            {
                prot &= ~Prot.Write;   // still shared copy-on-write: map read-only
            }
        }
        fs.entry = e;
        fs.first_object = e.Object!;
        fs.first_pindex = e.PindexOf(fs.va);
        fs.prot = prot;
        fs.map_generation = space.Version;
        fs.lookup_still_valid = true;
        return Step.Continue;
    }

    public static bool Permits(Prot prot, bool write) =>
        write ? (prot & Prot.Write) != 0 : (prot & (Prot.Read | Prot.Write | Prot.Exec)) != 0;

    // ---- walk the shadow chain ----

    /// <summary>
    /// From the first object down: a resident page ends the walk (Continue), a busy one
    /// sleeps and retries, a vnode page not resident stops with <see cref="Step.Pager"/>
    /// (its slot busied), the end of the chain becomes a zero fill in the first object.
    /// </summary>
    public static Step Walk(ref FaultState fs)
    {
        fs.obj = fs.first_object;
        fs.pindex = fs.first_pindex;
        fs.depth = 0;
        while (true)
        {
            var obj = fs.obj;
            PageLookup look;
            PageState m;
            bool eof = false, pager = false;
            VmObject? next;
            long nextOffset;
            fs.depth++;
            lock (obj.Lock)
            {
                // Collapsed under us (its pages went up into the object above): start over.
                if (obj.dead) return Step.Retry;
                look = obj.Lookup(fs.pindex, out m);
                if (look == PageLookup.Found && PagedOutFor(ref fs, m))
                {
                    // Paged out: not resident, but the swap pager has it (000: 505, 553;
                    // 002: 575, 632). Busy it so one fault reads it.
                    obj.pages[fs.pindex] = new PageState(PageContent.Swap, busy: true, swapped: m.Swapped);
                    pager = true;
                }
                else if (look == PageLookup.Absent)
                {
                    if (obj.Kind == VmObjectKind.Vnode)
                    {
                        // The pager may have it; busy the slot so one thread reads it.
                        if (fs.pindex >= obj.Size) eof = true;
                        else
                        {
                            obj.pages[fs.pindex] = new PageState(PageContent.None, busy: true);
                            pager = true;
                        }
                    }
                    else if (obj == fs.first_object)
                    {
                        // Placeholder (first_m): holds the slot while deeper objects are searched.
                        obj.pages[fs.pindex] = new PageState(PageContent.None, busy: true);
                        fs.first_m = true;
                        // Asked for pre-zeroed when the object has no backing object (000: 528–530; 002: 607).
                        fs.prezeroed = obj.backing_object == null;
                    }
                }
                next = obj.backing_object;
                nextOffset = obj.backing_object_offset;
            }

            if (look == PageLookup.Busy) return SleepOnBusy(ref fs, obj, fs.pindex);
            if (pager) return Step.Pager;
            if (look == PageLookup.Found)
            {
                fs.m = m;
                return Step.Continue;
            }
            if (eof)
            {
                Interlocked.Increment(ref fs.counters.eof_faults);
                return Fail(ref fs);
            }
            if (next == null)
            {
                // End of the chain: the placeholder in the first object becomes a zero page.
                fs.obj = fs.first_object;
                fs.pindex = fs.first_pindex;
                fs.m = new PageState(PageContent.Zero);
                fs.zerofill = true;
                fs.faultcount = 1;
                if (fs.access == FaultAccess.WriteProtect)
                {
                    // The kernel has a page the model does not: keep the process's bytes
                    // (Enter unprotects), but say the model was wrong.
                    Interlocked.Increment(ref fs.counters.internal_errors);
                    return Step.Continue;
                }
                // The lab's free pages are always pre-zeroed (README "Zero fill"): a page
                // asked for zeroed is one already (000: 729–734; 002: 846–851).
                if (fs.prezeroed) Interlocked.Increment(ref fs.counters.v_ozfod);
                Interlocked.Increment(ref fs.counters.v_zfod);
                return Step.Continue;
            }
            fs.pindex += nextOffset;
            fs.obj = next;
        }
    }

    /// <summary>The page is busy in another fault: give back the placeholder, sleep, retry (v_intrans).</summary>
    static Step SleepOnBusy(ref FaultState fs, VmObject obj, long pindex)
    {
        DropFirstBusy(ref fs);
        UnlockMap(ref fs);
        lock (obj.Lock) obj.SleepWhileBusy(pindex);
        Monitor.Enter(fs.space.MapLock);
        Interlocked.Increment(ref fs.counters.v_intrans);
        return Step.Retry;
    }

    // ---- pager I/O ----

    /// <summary>
    /// The pager step for fs.obj's busied page: the vnode pager (<see cref="PagerIo"/>) or,
    /// for an anonymous object's paged-out page, the swap pager (<see cref="SwapPagerIo"/>).
    /// Both take the design's window in fs.behind/fs.ahead.
    /// </summary>
    public static Step PagerGet(ref FaultState fs, out int error)
    {
        if (fs.obj.Kind == VmObjectKind.Vnode) return PagerIo(ref fs, out error);
        error = 0;
        return SwapPagerIo(ref fs);
    }

    /// <summary>
    /// Read fs.behind/fs.ahead around the busied page of fs.obj, without the map lock.
    /// The window is clipped to the object and stops at the first neighbour the object
    /// holds, resident or busy in another fault's read (002: 1364–1367, 1411–1413); its
    /// pages are busied for the read, so a fault on one of them waits for it. Returns with
    /// the map lock held again and <see cref="FaultState.lookup_still_valid"/> false: the
    /// design decides how to revalidate. A failed window is retried for the page alone,
    /// so an error hits only the page that fails.
    /// </summary>
    public static Step PagerIo(ref FaultState fs, out int error)
    {
        var obj = fs.obj;
        var vnode = obj.Vnode!;
        long pindex = fs.pindex;
        long size = obj.Size;
        int behind = (int)Math.Min(fs.behind, pindex);
        int ahead = (int)Math.Max(0, Math.Min(fs.ahead, size - 1 - pindex));
        lock (obj.Lock)
        {
            for (int i = 1; i <= behind; i++)
                if (obj.Lookup(pindex - i, out _) != PageLookup.Absent) { behind = i - 1; break; }
            for (int i = 1; i <= ahead; i++)
                if (obj.Lookup(pindex + i, out _) != PageLookup.Absent) { ahead = i - 1; break; }
            for (long p = pindex - behind; p <= pindex + ahead; p++)
                if (p != pindex) obj.pages[p] = new PageState(PageContent.None, busy: true);
        }
        long first = pindex - behind, last = pindex + ahead;

        // Keep first_object alive while the map is unlocked.
        ReferenceFirst(ref fs);
        UnlockMap(ref fs);
        try
        {
            error = vnode.LoadPages(pindex - behind, behind + 1 + ahead);
            if (error != 0 && behind + ahead > 0)
            {
                behind = ahead = 0;
                error = vnode.LoadPages(pindex, 1);
            }
        }
        finally
        {
            lock (obj.Lock)
                for (long p = first; p <= last; p++) obj.Unbusy(p);
            Monitor.Enter(fs.space.MapLock);
        }
        fs.behind = behind;
        fs.ahead = ahead;
        if (error != 0) return Step.Done;
        PagerDone(ref fs, behind, ahead);
        lock (obj.Lock) obj.NoteReadAhead(pindex + 1, ahead);
        fs.m = new PageState(PageContent.Cache);
        return Step.Continue;
    }

    /// <summary>
    /// The swap pager (vm_pager_get_pages on a swap-backed object) for fs.obj's paged-out,
    /// busied page: the design's window, clipped to the object and to the neighbours that
    /// are paged out too (it stops at the first resident, busy or never paged-out one),
    /// is brought in. The faulting page's slot is read into the staging buffer (a
    /// write-protect fault has its bytes in the space already); the others become resident
    /// (<see cref="PageContent.SwapClean"/>) and their slots are read when they are
    /// installed. Made with the map lock held (the swap device is called under it). A
    /// failed read poisons the page alone, which stays paged out.
    /// </summary>
    static Step SwapPagerIo(ref FaultState fs)
    {
        var obj = fs.obj;
        long pindex = fs.pindex;
        int behind, ahead;
        long slot;
        lock (obj.Lock)
        {
            behind = (int)Math.Min(fs.behind, pindex);
            ahead = (int)Math.Max(0, Math.Min(fs.ahead, obj.Size - 1 - pindex));
            for (int i = 1; i <= behind; i++)
                if (!PagedOut(obj, pindex - i)) { behind = i - 1; break; }
            for (int i = 1; i <= ahead; i++)
                if (!PagedOut(obj, pindex + i)) { ahead = i - 1; break; }
            slot = obj.SwapSlot(pindex);
        }
        var r = SwapReadResult.Ok;
        if (fs.access != FaultAccess.WriteProtect)
        {
            r = slot > 0 && fs.space.Vm.Swap is { } dev ? dev.Read(slot, fs.space.Pmap.Staging(1)) : SwapReadResult.Missing;
            fs.staged = r == SwapReadResult.Ok;
        }
        lock (obj.Lock)
        {
            if (r == SwapReadResult.Ok)
            {
                for (long p = pindex - behind; p <= pindex + ahead; p++)
                    if (p != pindex && obj.pages.TryGetValue(p, out var st))
                        obj.pages[p] = new PageState(PageContent.SwapClean, swapped: st.Swapped);
                obj.pages[pindex] = new PageState(PageContent.SwapClean, busy: true, swapped: true);
            }
            obj.Unbusy(pindex);
        }
        fs.behind = behind;
        fs.ahead = ahead;
        if (r != SwapReadResult.Ok)
        {
            Interlocked.Increment(ref fs.counters.swap_bad_slots);
            return Fail(ref fs);
        }
        PagerDone(ref fs, behind, ahead);
        Interlocked.Add(ref fs.counters.pageins, behind + 1 + ahead);
        fs.m = new PageState(PageContent.SwapClean, swapped: true);
        return Step.Continue;
    }

    /// <summary>
    /// Whether a found page is paged out for this fault: its bytes are in its slot alone. A
    /// write-protect fault's page is installed in the faulting space, so its bytes are in
    /// memory (a page-out that did not complete, or a page this space kept after another
    /// space paged it out): resident.
    /// </summary>
    public static bool PagedOutFor(ref FaultState fs, PageState m) =>
        m.Content == PageContent.Swap && fs.access != FaultAccess.WriteProtect;

    /// <summary>Whether the page is paged out and not busy. Caller holds the object's lock.</summary>
    static bool PagedOut(VmObject obj, long p) =>
        obj.pages.TryGetValue(p, out var st) && st.Content == PageContent.Swap && !st.Busy;

    /// <summary>The pager brought the window in: a hard fault (counted v_io_faults when the fault ends well, <see cref="End"/>).</summary>
    static void PagerDone(ref FaultState fs, int behind, int ahead)
    {
        fs.hardfault = true;
        fs.faultcount = behind + 1 + ahead;
        Interlocked.Add(ref fs.counters.pager_pages, behind + 1 + ahead);
        Interlocked.Add(ref fs.counters.read_behind_pages, behind);
        Interlocked.Add(ref fs.counters.read_ahead_pages, ahead);
    }

    /// <summary>
    /// The slow path's end, for a fault that ended well: one that called the pager on any
    /// pass counts v_io_faults once and a major fault of the process, any other a minor one
    /// (000: 987–989, 1006; DragonFly 002: 391–394, whose major fault is the lab's v_io_faults).
    /// </summary>
    public static void End(ref FaultState fs)
    {
        if (fs.result is not (FaultResult.Resolved or FaultResult.Superseded)) return;
        if (fs.hardfault)
        {
            Interlocked.Increment(ref fs.counters.v_io_faults);
            Interlocked.Increment(ref fs.counters.ru_majflt);
        }
        else Interlocked.Increment(ref fs.counters.ru_minflt);
    }

    /// <summary>A pager error after <see cref="PagerIo"/>: poison the page.</summary>
    public static Step PagerFailed(ref FaultState fs)
    {
        Interlocked.Increment(ref fs.counters.pager_errors);
        return Fail(ref fs);
    }

    // ---- copy-on-write ----

    /// <summary>
    /// The page was found below the first object. A read maps it read-only. A write
    /// makes it the first object's: by moving it when the backing object is the
    /// first object's direct, anonymous, otherwise unreferenced backing object and
    /// <paramref name="moveAllowed"/> (the design's extra condition) holds
    /// (v_cow_optim), else by copying (v_cow_faults either way).
    /// </summary>
    public static Step Cow(ref FaultState fs, bool moveAllowed)
    {
        fs.src = fs.obj;
        fs.src_pindex = fs.pindex;
        if (fs.obj == fs.first_object) return Step.Continue;
        if (!fs.write)
        {
            fs.prot &= ~Prot.Write;
            return Step.Continue;
        }
        // A write fault (not write-protect) needs the bytes; make sure we can supply them
        // before changing the model.
        if (fs.m.Content == PageContent.InSpaces && fs.access != FaultAccess.WriteProtect
            && !fs.space.Installed(fs.va))
            return InternalError(ref fs);

        var obj = fs.obj;
        var first = fs.first_object;
        bool moved = false;
        // The new first-object page's content. On a write-protect fault the bytes are
        // in this space, but only while the lookup is current; after an unlocked pager
        // call the map may have changed, so keep the source's own description (a vnode
        // page then: the file), which is right for whoever maps the object.
        var content = fs.access == FaultAccess.WriteProtect && fs.lookup_still_valid ? PageContent.InSpaces
            : fs.m.Content == PageContent.Cache ? PageContent.File : fs.m.Content;
        lock (obj.Lock)
        {
            var look = obj.Lookup(fs.pindex, out var m);
            if (look != PageLookup.Found) return Step.Retry;   // changed while unlocked: start over
            fs.m = m;
            if (moveAllowed && obj.Kind == VmObjectKind.Anonymous && obj.shadow_count == 1 && obj.ref_count == 1
                && Monitor.TryEnter(first.Lock))
            {
                try
                {
                    if (first.backing_object == obj)
                    {
                        obj.pages.Remove(fs.pindex);
                        first.pages[fs.first_pindex] = new PageState(content, busy: true, swapped: m.Swapped);
                        if (m.Swapped) first.SetSwapSlot(fs.first_pindex, obj.TakeSwapSlot(fs.pindex));
                        moved = true;
                    }
                }
                finally { Monitor.Exit(first.Lock); }
            }
        }
        if (!moved)
            lock (first.Lock) first.pages[fs.first_pindex] = new PageState(content, busy: true);
        fs.first_m = true;   // the busy slot now holds the real page
        fs.cowed = true;
        if (moved)
        {
            // The page (and its swap slot) is the first object's now: read it from there.
            fs.src = first;
            fs.src_pindex = fs.first_pindex;
            Interlocked.Increment(ref fs.counters.v_cow_optim);
        }
        Interlocked.Increment(ref fs.counters.v_cow_faults);
        fs.obj = first;
        fs.pindex = fs.first_pindex;
        return Step.Continue;
    }

    // ---- enter the page into the pmap ----

    /// <summary>
    /// Install the page. Counters are incremented before the pmap call: the real pmap
    /// wakes the faulting thread, and the program may exit before we return.
    /// </summary>
    public static FaultResult Enter(ref FaultState fs)
    {
        var space = fs.space;
        var pmap = space.Pmap;
        ulong va = fs.va;
        bool inFirst = fs.obj == fs.first_object;
        bool writable = inFirst && (fs.prot & Prot.Write) != 0;
        // vm_fault_dirty with a writable prot marks the page's object might-be-dirty
        // (000: 196 from 940, 383; 002: 999): FreeBSD's fast path checks it for vnodes.
        if (writable && fs.obj.Kind == VmObjectKind.Vnode) fs.obj.MightBeDirty = true;

        if (fs.access == FaultAccess.WriteProtect)
        {
            // The bytes are already in the space: the model's COW is done, unprotect.
            if (!writable) return Install.Superseded(space, fs.counters, va);
            SetFirstContent(ref fs, PageContent.InSpaces);
            return Install.Unprotect(space, fs.counters, va);
        }

        var src = fs.src!;
        bool ok;
        switch (fs.zerofill ? PageContent.Zero : SourceContent(ref fs))
        {
            case PageContent.Cache:
            {
                var vnode = src.Vnode!;
                src.NoteInstalled(fs.src_pindex, fs.counters);
                bool shared = fs.entry.Shared && inFirst;
                if (Install.Fetch(pmap, vnode, fs.src_pindex, shared) != 0) return PagerError(ref fs);
                if (!shared) SetFirstContent(ref fs, writable ? PageContent.InSpaces : PageContent.File);
                ok = Install.Map(space, fs.counters, va, shared ? InstallFrom.Shared : InstallFrom.Staging, writable, vnode, fs.src_pindex);
                break;
            }
            case PageContent.Zero:
                SetFirstContent(ref fs, writable ? PageContent.InSpaces : PageContent.Zero);
                ok = Install.Map(space, fs.counters, va, InstallFrom.Zero, writable);
                break;
            case PageContent.File:
            {
                var (vobj, vpindex) = src.Bottom(fs.src_pindex);
                if (vpindex >= vobj.Size)
                {
                    Interlocked.Increment(ref fs.counters.eof_faults);
                    Fail(ref fs);
                    return FaultResult.SigBus;
                }
                if (Install.Fetch(pmap, vobj.Vnode!, vpindex, shared: false) != 0) return PagerError(ref fs);
                SetFirstContent(ref fs, writable ? PageContent.InSpaces : PageContent.File);
                ok = Install.Map(space, fs.counters, va, InstallFrom.Staging, writable);
                break;
            }
            case PageContent.SwapClean:
            case PageContent.Swap:
            {
                // A resident page the swap pager brought in: its slot holds its bytes. The
                // pager step may have read them already (fs.staged).
                long slot;
                lock (src.Lock) slot = src.SwapSlot(fs.src_pindex);
                var dest = pmap.Staging(1);
                var r = fs.staged ? SwapReadResult.Ok
                    : slot > 0 && space.Vm.Swap is { } dev ? dev.Read(slot, dest) : SwapReadResult.Missing;
                if (r != SwapReadResult.Ok)
                {
                    Interlocked.Increment(ref fs.counters.swap_bad_slots);
                    if (src != fs.first_object && fs.obj == fs.first_object)
                    {
                        // A copy-on-write copy was to be made from it: it has no bytes, drop it.
                        var first = fs.first_object;
                        lock (first.Lock) first.pages[fs.first_pindex] = new PageState(PageContent.None, busy: true);
                    }
                    Fail(ref fs);
                    return FaultResult.SigBus;
                }
                // Installed writable only for a write: a clean page stays write-protected,
                // so the write that makes its swap copy stale is seen.
                bool w = writable && fs.write;
                if (w) SetFirstContent(ref fs, PageContent.InSpaces);
                ok = Install.Map(space, fs.counters, va, InstallFrom.Staging, w);
                break;
            }
            default:
                // Anonymous bytes live only in the spaces that have the page installed.
                if (!space.Installed(va))
                {
                    InternalError(ref fs);
                    return FaultResult.SigBus;
                }
                return Install.Superseded(space, fs.counters, va);
        }
        if (ok) return FaultResult.Resolved;
        Interlocked.Increment(ref fs.counters.superseded);
        return FaultResult.Superseded;
    }

    /// <summary>Where the bytes come from: the source page (after a COW copy the first object's page says the same).</summary>
    static PageContent SourceContent(ref FaultState fs)
    {
        if (fs.src != fs.obj)
            return fs.m.Content;   // read of a backing page: fs.m describes it
        if (fs.obj.Kind == VmObjectKind.Vnode) return PageContent.Cache;
        lock (fs.obj.Lock)
            return fs.obj.pages.TryGetValue(fs.pindex, out var st) ? st.Content : PageContent.None;
    }

    /// <summary>
    /// Record the first object's page content after the install. A writable install of a
    /// fault the design counts as dirtying (<see cref="FaultState.need_dirty"/>) drops the
    /// page's swap copy (vm_pager_page_unswapped: 000: 234–239; 002: 1022–1026).
    /// </summary>
    static void SetFirstContent(ref FaultState fs, PageContent content)
    {
        var first = fs.first_object;
        if (fs.obj != first || first.Kind != VmObjectKind.Anonymous) return;
        bool freed = false;
        lock (first.Lock)
        {
            if (first.pages.TryGetValue(fs.first_pindex, out var st))
            {
                bool swapped = st.Swapped;
                if (swapped && fs.need_dirty && content == PageContent.InSpaces)
                {
                    swapped = false;
                    freed = true;
                    fs.space.Vm.FreeSwapSlot(first.TakeSwapSlot(fs.first_pindex));
                }
                first.pages[fs.first_pindex] = new PageState(content, st.Busy, swapped);
            }
        }
        if (freed) Interlocked.Increment(ref fs.counters.swap_slots_freed_on_dirty);
    }

    // ---- failures and cleanup ----

    /// <summary>Poison the page: the access raises SIGBUS.</summary>
    public static Step Fail(ref FaultState fs)
    {
        Install.Poison(fs.space, fs.counters, fs.va);
        fs.result = FaultResult.SigBus;
        return Step.Done;
    }

    static FaultResult PagerError(ref FaultState fs)
    {
        Interlocked.Increment(ref fs.counters.pager_errors);
        Fail(ref fs);
        return FaultResult.SigBus;
    }

    /// <summary>The model needed bytes it does not have: never answer with silent zeros.</summary>
    static Step InternalError(ref FaultState fs)
    {
        Interlocked.Increment(ref fs.counters.internal_errors);
        return Fail(ref fs);
    }

    /// <summary>Drop the map lock (for I/O or a sleep); the caller takes it back before going on.</summary>
    static void UnlockMap(ref FaultState fs)
    {
        fs.lookup_still_valid = false;
        Monitor.Exit(fs.space.MapLock);
    }

    static void ReferenceFirst(ref FaultState fs)
    {
        if (fs.referenced) return;
        fs.space.Vm.Reference(fs.first_object);
        fs.referenced = true;
    }

    static void DropFirstBusy(ref FaultState fs)
    {
        if (!fs.first_m) return;
        fs.first_m = false;
        var first = fs.first_object;
        lock (first.Lock) first.Unbusy(fs.first_pindex);
    }

    /// <summary>End of a pass: unbusy the first object's slot and drop the fault's reference.</summary>
    public static void Release(ref FaultState fs)
    {
        DropFirstBusy(ref fs);
        if (fs.referenced)
        {
            fs.referenced = false;
            fs.space.Vm.Deallocate(fs.first_object, fs.counters);
        }
    }
}
