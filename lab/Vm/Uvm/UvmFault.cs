namespace Lab.Vm.Uvm;

/// <summary>How a UVM step ended (the seeds' 0 / ERESTART / error).</summary>
internal enum UvmStep
{
    /// <summary>Go on (0).</summary>
    Ok,
    /// <summary>Start over from the lookup (ERESTART / goto ReFault).</summary>
    Restart,
    /// <summary>The fault is over; <see cref="UvmCtx.result"/> says how.</summary>
    Done,
}

/// <summary>
/// Per-fault state (struct uvm_faultinfo + struct uvm_faultctx): a struct on the
/// faulting thread's stack. The neighbourhood is at most UVM_MAXRANGE pages, so the
/// "don't care" marks (pages[lcv] == PGO_DONTCARE) fit in a bit mask.
/// </summary>
internal struct UvmCtx
{
    public AddressSpace space;
    public VmCounters counters;
    public ulong va;                   // orig_rvaddr
    public FaultAccess access;
    public bool write;                 // access_type has VM_PROT_WRITE

#pragma warning disable IDE1006 // BSD names on purpose
    public VmMapEntry entry;
    public Amap? amap;
    public VmObject? uobj;
    public Prot enter_prot;
    public bool narrow;                // no neighbourhood (after the first pass)
    public bool cow_now;
    public bool promote;
    public ulong startva;
    public int npages, centeridx;
    public uint dontcare;              // bit lcv: mapped already, or an anon is there
    public bool shadowed;              // the centre has an anon: case 1
    public ulong mapv;                 // map version at the lookup (uvmfault_relock compares it)
    public bool amap_locked;
    public Anon? anon_spare;           // 2019: kept across restarts
    public bool wired;                 // the entry is wired (wire_mapping / wire_paging)
    public bool staged;                // anonget read the centre anon's page from swap into the staging buffer
    public bool obj_writefault;        // 2019: UVM_OBJ_NEEDS_WRITEFAULT is consulted (a clean vnode's pages map read-only)
#pragma warning restore IDE1006

    public FaultResult result;

    public readonly ulong VaOf(int lcv) => startva + (ulong)lcv * Vm.PageSize;
    public readonly bool DontCare(int lcv) => (dontcare & (1u << lcv)) != 0;
}

/// <summary>
/// The UVM steps that are the same in NetBSD 2000 (seed 001) and 2019 (seed 003):
/// the check (lookup, protection, needs_copy, window, amap lookups, sequential flush),
/// the neighbour mappings, the blocking object get, and the lab's installs (what the
/// seeds' pmap_enter is here). Each resolver composes them in its seed's structure.
/// Lock order: map lock, then the amap lock, then the uobj's lock.
/// </summary>
internal static class UvmFault
{
    /// <summary>UVM_MAXRANGE: the widest neighbourhood.</summary>
    internal const int MaxRange = 16;
    const int PageSize = Vm.PageSize;

    /// <summary>uvmadvice[]: pages back and forward per advice.</summary>
    internal static (int Back, int Forw) AdviceWindow(Advice a) => a switch
    {
        Advice.Random => (0, 0),
        Advice.Sequential => (8, 7),
        _ => (3, 4),
    };

    public static UvmCtx Begin(AddressSpace space, ulong va, FaultAccess access, bool objWriteFault = false)
    {
        ArgumentNullException.ThrowIfNull(space);
        var ctx = new UvmCtx
        {
            space = space,
            counters = space.Counters,
            va = va & ~(ulong)(PageSize - 1),
            access = access,
            write = access != FaultAccess.Read,
            obj_writefault = objWriteFault,
        };
        Interlocked.Increment(ref ctx.counters.faults);
        return ctx;
    }

    // ---- check: lookup, protection, needs_copy, window, amap lookups, sequential flush ----

    /// <summary>
    /// uvm_fault_check. Returns Restart after clearing needs_copy (the amap copy is a map
    /// change, and the next pass is narrow), Done on a failed lookup, else Ok with the
    /// amap locked and the window set.
    /// </summary>
    public static UvmStep Check(ref UvmCtx ctx)
    {
        var space = ctx.space;
        ctx.staged = false;
        if (space.EvictingPage(ctx.va))
        {
            // Its removal is under way: the caller parks the thread and faults again after.
            Interlocked.Increment(ref ctx.counters.evict_retries);
            ctx.result = FaultResult.Retry;
            return UvmStep.Done;
        }
        var e = space.Destroyed ? null : space.FindEntry(ctx.va);
        if (e == null || !Mach.ChainFault.Permits(e.Protection, ctx.write))
        {
            Interlocked.Increment(ref ctx.counters.sigsegv);
            ctx.result = FaultResult.SigSegv;
            return UvmStep.Done;
        }
        ctx.entry = e;
        ctx.enter_prot = e.Protection;
        if (e.Wired)
        {
            // A wired entry: access = enter_prot (cow_now when writing is permitted), and
            // no neighbourhood.
            ctx.wired = true;
            ctx.narrow = true;
            if ((e.Protection & Prot.Write) != 0) ctx.write = true;
        }
        ctx.cow_now = ctx.write;
        ctx.promote = false;
        if (e.needs_copy)
        {
            if (ctx.cow_now || e.Object == null)
            {
                // uvmfault_amapcopy: only the faulting page is asked for, so a large
                // entry is copied a chunk at a time.
                space.AmapCopy(e, ctx.va, canchunk: true);
                Interlocked.Increment(ref ctx.counters.fltamcopy);
                return UvmStep.Restart;
            }
            ctx.enter_prot &= ~Prot.Write;   // still needs_copy: read-only
        }
        ctx.amap = e.aref_amap;
        ctx.uobj = e.Object;
        if (ctx.amap == null && ctx.uobj == null)
        {
            // Case 0: nothing behind the entry. The lab never builds one.
            Interlocked.Increment(ref ctx.counters.internal_errors);
            Interlocked.Increment(ref ctx.counters.sigsegv);
            ctx.result = FaultResult.SigSegv;
            return UvmStep.Done;
        }

        int nback = 0;
        if (!ctx.narrow)
        {
            var (back, forw) = AdviceWindow(e.Advice);
            nback = (int)Math.Min(back, (long)((ctx.va - e.Start) >> Vm.PageShift));
            int nforw = (int)Math.Min(forw, (long)((e.End - ctx.va) >> Vm.PageShift) - 1);
            ctx.startva = ctx.va - (ulong)nback * PageSize;
            ctx.npages = nback + nforw + 1;
            ctx.centeridx = nback;
            ctx.narrow = true;   // a restarted pass looks at the faulting page only
        }
        else
        {
            ctx.startva = ctx.va;
            ctx.npages = 1;
            ctx.centeridx = 0;
        }
        ctx.mapv = space.Version;
        if (ctx.amap != null) LockAmap(ref ctx);

        if (e.Advice == Advice.Sequential && nback != 0)
        {
            FlushBehind(ref ctx, nback);
            ctx.startva += (ulong)nback * PageSize;
            ctx.npages -= nback;
            ctx.centeridx = 0;
        }
        return UvmStep.Ok;
    }

    /// <summary>
    /// MADV_SEQUENTIAL: the anons and object pages behind the fault would be
    /// deactivated (uvmfault_anonflush, pgo_put/pgo_flush with PGO_DEACTIVATE). No page
    /// queues in the lab yet: counted in behind_deactivated.
    /// </summary>
    static void FlushBehind(ref UvmCtx ctx, int nback)
    {
        int n = 0;
        var e = ctx.entry;
        for (int lcv = 0; lcv < nback; lcv++)
        {
            ulong va = ctx.VaOf(lcv);
            if (ctx.amap is { } amap && amap.am_anon[e.SlotOf(va)] is { Content: not PageContent.None }) n++;
            else if (ctx.uobj is { } uobj)
            {
                lock (uobj.Lock)
                    if (uobj.Lookup(e.PindexOf(va), out _) == PageLookup.Found) n++;
            }
        }
        if (n > 0) Interlocked.Add(ref ctx.counters.behind_deactivated, n);
    }

    // ---- upper neighbours (uvm_fault_upper_lookup / _neighbor) ----

    /// <summary>
    /// Scan the window: addresses already mapped are "don't care", the centre with an
    /// anon is case 1 (shadowed), other anons are mapped now (read-only when shared).
    /// Caller holds the amap lock.
    /// </summary>
    public static void UpperLookup(ref UvmCtx ctx)
    {
        AssertAmapLocked(ref ctx);
        ctx.dontcare = 0;
        ctx.shadowed = false;
        var e = ctx.entry;
        for (int lcv = 0; lcv < ctx.npages; lcv++)
        {
            ulong va = ctx.VaOf(lcv);
            if (lcv != ctx.centeridx && ctx.space.Installed(va))
            {
                ctx.dontcare |= 1u << lcv;
                continue;
            }
            var anon = ctx.amap?.am_anon[e.SlotOf(va)];
            if (anon == null) continue;
            ctx.dontcare |= 1u << lcv;
            if (lcv == ctx.centeridx)
            {
                ctx.shadowed = true;
                continue;
            }
            UpperNeighbor(ref ctx, va, anon);
        }
    }

    /// <summary>
    /// Map one resident neighbour anon. The lab can supply an anon's bytes only when
    /// they are known (zero); an anon whose bytes are in other spaces is left alone.
    /// </summary>
    static void UpperNeighbor(ref UvmCtx ctx, ulong va, Anon anon)
    {
        if (anon.Content != PageContent.Zero) return;
        bool writable = anon.an_ref == 1 && (ctx.enter_prot & Prot.Write) != 0;
        Interlocked.Increment(ref ctx.counters.fltnamap);
        if (writable) anon.Content = PageContent.InSpaces;
        Install.Map(ctx.space, ctx.counters, va, InstallFrom.Zero, writable, neighbour: true);
    }

    // ---- lower neighbours (uvm_fault_lower_lookup / _neighbor) ----

    /// <summary>
    /// pgo_get(PGO_LOCKED): the resident, non-busy object pages of the window. The
    /// centre's is returned (true when resident); the others are mapped, read-only for
    /// a copy-on-write entry. Skips don't-care slots.
    /// </summary>
    public static bool LowerLookup(ref UvmCtx ctx)
    {
        var uobj = ctx.uobj!;
        var e = ctx.entry;
        Interlocked.Increment(ref ctx.counters.fltlget);
        NoteWriteGet(ref ctx);
        bool centre = false;
        for (int lcv = 0; lcv < ctx.npages; lcv++)
        {
            if (ctx.DontCare(lcv)) continue;
            ulong va = ctx.VaOf(lcv);
            long pindex = e.PindexOf(va);
            PageLookup look;
            lock (uobj.Lock) look = uobj.Lookup(pindex, out _);
            if (look != PageLookup.Found) continue;
            if (lcv == ctx.centeridx)
            {
                centre = true;
                continue;
            }
            LowerNeighbor(ref ctx, va, pindex);
        }
        return centre;
    }

    static void LowerNeighbor(ref UvmCtx ctx, ulong va, long pindex)
    {
        var e = ctx.entry;
        var vnode = ctx.uobj!.Vnode!;
        var pmap = ctx.space.Pmap;
        ctx.uobj.NoteInstalled(pindex, ctx.counters);
        // enter_prot & MASK(entry); 2019 also read-only while the object needs write faults (003: 1823-1825).
        bool writable = !CopyOnWrite(e) && (ctx.enter_prot & Prot.Write) != 0 && !NeedsWriteFault(ref ctx);
        // A shared page is resident already (the lookup found it): no pager call.
        if (!e.Shared && Install.Fetch(pmap, vnode, pindex, shared: false) != 0) return;
        Interlocked.Increment(ref ctx.counters.fltnomap);
        if (e.Shared) Install.Map(ctx.space, ctx.counters, va, InstallFrom.Shared, writable, vnode, pindex, neighbour: true);
        else Install.Map(ctx.space, ctx.counters, va, InstallFrom.Staging, false, neighbour: true);
    }

    /// <summary>UVM_ET_ISCOPYONWRITE: every private mapping.</summary>
    public static bool CopyOnWrite(VmMapEntry e) => !e.Shared;

    /// <summary>
    /// UVM_OBJ_NEEDS_WRITEFAULT (2019 only; 003: 1825, 2054): a vnode object not written
    /// through a mapping since it was created has its pages entered read-only, so that the
    /// first write faults and dirties it. The predicate's body is outside the seed: the lab
    /// reads it as "the object is clean" (<see cref="VmObject.WriteMapDirty"/>).
    /// </summary>
    public static bool NeedsWriteFault(ref UvmCtx ctx) =>
        ctx.obj_writefault && ctx.uobj is { Vnode: not null } o && !Volatile.Read(ref o.WriteMapDirty);

    /// <summary>
    /// A get with write access (access_type &amp; MASK(entry): shared entries only) makes the
    /// pager dirty the vnode, so the write that follows maps the page writable.
    /// </summary>
    static void NoteWriteGet(ref UvmCtx ctx)
    {
        if (ctx.write && !CopyOnWrite(ctx.entry) && ctx.uobj is { Vnode: not null } o)
            Volatile.Write(ref o.WriteMapDirty, true);
    }

    // ---- blocking object get (uvm_fault_lower_io) ----

    /// <summary>
    /// Read the centre page from the uobj with everything unlocked (pgo_get PGO_SYNCIO,
    /// one page: the seeds leave clustering to the pager). Afterwards relock: a changed
    /// map, or an anon that appeared in the slot meanwhile, means restart.
    /// </summary>
    public static UvmStep LowerIo(ref UvmCtx ctx)
    {
        var space = ctx.space;
        var uobj = ctx.uobj!;
        var e = ctx.entry;
        long pindex = e.PindexOf(ctx.va);
        // Every blocking get is a major fault and a fltget (001: 1371, 1377; 003: 1912, 1925),
        // whether this fault reads the page, the pager waits for another fault's read, or
        // the get fails past the end of the file.
        Interlocked.Increment(ref ctx.counters.ru_majflt);
        Interlocked.Increment(ref ctx.counters.fltget);
        if (pindex >= uobj.Size)
        {
            Interlocked.Increment(ref ctx.counters.eof_faults);
            return Fail(ref ctx);
        }
        NoteWriteGet(ref ctx);
        UnlockAmap(ref ctx);
        space.Vm.Reference(uobj);   // keeps the object while the map is unlocked
        Monitor.Exit(space.MapLock);
        int error = 0;
        bool read = false, released = false;
        try
        {
            while (true)
            {
                lock (uobj.Lock)
                {
                    var look = uobj.Lookup(pindex, out _);
                    if (look == PageLookup.Found) break;   // read by the fault we waited for
                    if (look == PageLookup.Busy)
                    {
                        // Another fault is reading it: the pager waits, then looks again.
                        uobj.SleepWhileBusy(pindex);
                        continue;
                    }
                    uobj.pages[pindex] = new PageState(PageContent.None, busy: true);
                }
                read = true;
                try { error = uobj.Vnode!.LoadPages(pindex, 1); }
                finally
                {
                    lock (uobj.Lock)
                    {
                        uobj.Unbusy(pindex);
                        // PG_RELEASED: the page left the object while it was being read.
                        released = error == 0 && uobj.Lookup(pindex, out _) != PageLookup.Found;
                    }
                }
                break;
            }
        }
        finally
        {
            Monitor.Enter(space.MapLock);
            space.Vm.Deallocate(uobj);
        }
        if (released)
        {
            // 001: 1453-1464; 003: 2004-2012: free it and start over.
            Interlocked.Increment(ref ctx.counters.fltpgrele);
            return UvmStep.Restart;
        }
        if (space.Version != ctx.mapv)
        {
            // uvmfault_relock failed. An error is retried too, so the signal is never
            // sent for an address the map no longer has.
            Interlocked.Increment(ref ctx.counters.revalidate_retries);
            return UvmStep.Restart;
        }
        if (error != 0)
        {
            Interlocked.Increment(ref ctx.counters.pager_errors);
            return Fail(ref ctx);
        }
        if (read)
        {
            Interlocked.Increment(ref ctx.counters.v_io_faults);
            Interlocked.Increment(ref ctx.counters.pager_pages);
        }
        if (ctx.amap is { } amap)
        {
            LockAmap(ref ctx);
            if (amap.am_anon[e.SlotOf(ctx.va)] != null) return UvmStep.Restart;   // filled meanwhile
        }
        return UvmStep.Ok;
    }

    // ---- installs (the lab's pmap_enter) ----

    /// <summary>
    /// Whether the bytes for an anon's page can be supplied to this space: known zero,
    /// or already here. Else the model has lost them: internal error, SIGBUS.
    /// </summary>
    public static bool AnonBytesAvailable(ref UvmCtx ctx, Anon anon) =>
        anon.Content is PageContent.Zero or PageContent.Swap
        || ctx.access == FaultAccess.WriteProtect || ctx.space.Installed(ctx.va);

    /// <summary>
    /// uvmfault_anonget's swap-in: an anon whose bytes are only in its swap slot is read
    /// into the staging buffer (<see cref="UvmCtx.staged"/>) for the install, counted in
    /// pageins. A failed read poisons the page (the store has marked the slot bad).
    /// Caller holds the amap lock.
    /// </summary>
    public static UvmStep AnonGet(ref UvmCtx ctx, Anon anon)
    {
        AssertAmapLocked(ref ctx);
        ctx.staged = false;
        if (anon.Content != PageContent.Swap || ctx.access == FaultAccess.WriteProtect || ctx.space.Installed(ctx.va))
        {
            Interlocked.Increment(ref ctx.counters.ru_minflt);   // an_page: resident (001: 310-311; 003: 288-289)
            return UvmStep.Ok;
        }
        Interlocked.Increment(ref ctx.counters.ru_majflt);       // no an_page (001: 312-313; 003: 290-291)
        var dest = ctx.space.Pmap.Staging(1);
        var r = anon.an_swslot > 0 && ctx.space.Vm.Swap is { } dev ? dev.Read(anon.an_swslot, dest) : SwapReadResult.Missing;
        if (r != SwapReadResult.Ok)
        {
            Interlocked.Increment(ref ctx.counters.swap_bad_slots);
            return Fail(ref ctx);
        }
        Interlocked.Increment(ref ctx.counters.pageins);
        // The read done, anonget's loop goes round and finds the page (001: 539; 003: 529).
        Interlocked.Increment(ref ctx.counters.fltanretry);
        ctx.staged = true;
        return UvmStep.Ok;
    }

    /// <summary>What a promoted anon copied from <paramref name="oanon"/> holds: never Swap, since it has no slot of its own.</summary>
    public static PageContent CopiedContent(Anon oanon) =>
        oanon.Content == PageContent.Swap ? PageContent.InSpaces : oanon.Content;

    /// <summary>
    /// Install an anon's page (cases 1A, 1B and 2B). <paramref name="from"/> says where the
    /// new page's bytes come from: the old anon (1B), the uobj page (2B copy), or none
    /// (zero fill or 1A). Counters first: the real pmap wakes the faulting thread.
    /// </summary>
    public static FaultResult EnterAnon(ref UvmCtx ctx, Anon anon, PageContent from, long uobjPindex)
    {
        var space = ctx.space;
        var pmap = space.Pmap;
        ulong va = ctx.va;
        bool writable = (ctx.enter_prot & Prot.Write) != 0;
        if (ctx.wired && anon.an_swslot != 0)
        {
            // uvm_fault_upper_done: a wired page is dirty for good, its swap copy is useless.
            // Its bytes, if only there, are in the staging buffer already (anonget).
            space.Vm.FreeSwapSlot(anon.an_swslot);
            anon.an_swslot = 0;
            if (anon.Content == PageContent.Swap) anon.Content = PageContent.InSpaces;
            Interlocked.Increment(ref ctx.counters.swap_slots_freed_on_wire);
        }
        if (ctx.access == FaultAccess.WriteProtect)
        {
            // The bytes are in the space (installed read-only): the model's part is done.
            if (!writable) return Superseded(ref ctx);
            anon.Content = PageContent.InSpaces;   // written: a slot it holds is stale now (kept, as UVM does)
            return Install.Unprotect(space, ctx.counters, va);
        }
        if (space.Installed(va)) return Superseded(ref ctx);   // a duplicate message
        bool ok;
        if (ctx.staged)
        {
            // Swapped in. Writable only for a write (or when no slot is left): a clean page
            // stays write-protected so the write that makes the slot stale is seen.
            ctx.staged = false;
            bool w = writable && (ctx.write || anon.an_swslot == 0);
            anon.Content = anon.an_swslot != 0 && !w ? PageContent.Swap : PageContent.InSpaces;
            ok = Install.Map(space, ctx.counters, va, InstallFrom.Staging, w);
            return ok ? FaultResult.Resolved : Superseded(ref ctx);
        }
        if (from == PageContent.InSpaces)
        {
            InternalError(ref ctx);   // callers check AnonBytesAvailable first; never zeros instead
            return FaultResult.SigBus;
        }
        if (from == PageContent.Cache)
        {
            if (Install.Fetch(pmap, ctx.uobj!.Vnode!, uobjPindex, shared: false) != 0)
            {
                // The promoted anon has no bytes: take it out again.
                int slot = ctx.entry.SlotOf(va);
                if (ctx.amap!.am_anon[slot] == anon)
                {
                    ctx.amap.am_anon[slot] = null;
                    ctx.amap.am_nused--;
                    space.AnonUnref(anon);
                }
                Interlocked.Increment(ref ctx.counters.pager_errors);
                Fail(ref ctx);
                return FaultResult.SigBus;
            }
            anon.Content = PageContent.InSpaces;   // a copy is made for a write, so it is installed writable
            ok = Install.Map(space, ctx.counters, va, InstallFrom.Staging, writable);
        }
        else
        {
            // Zero fill, or an anon whose page is known zero.
            anon.Content = writable ? PageContent.InSpaces : PageContent.Zero;
            ok = Install.Map(space, ctx.counters, va, InstallFrom.Zero, writable);
        }
        return ok ? FaultResult.Resolved : Superseded(ref ctx);
    }

    /// <summary>Install the uobj's own page (case 2A).</summary>
    public static FaultResult EnterObject(ref UvmCtx ctx)
    {
        var space = ctx.space;
        var pmap = space.Pmap;
        ulong va = ctx.va;
        var e = ctx.entry;
        var vnode = ctx.uobj!.Vnode!;
        long pindex = e.PindexOf(va);
        bool writable = (ctx.enter_prot & Prot.Write) != 0;
        ctx.uobj.NoteInstalled(pindex, ctx.counters);
        if (ctx.access == FaultAccess.WriteProtect)
        {
            if (!writable) return Superseded(ref ctx);
            return Install.Unprotect(space, ctx.counters, va);
        }
        if (Install.Fetch(pmap, vnode, pindex, e.Shared) != 0) return PagerError(ref ctx);
        bool ok = Install.Map(space, ctx.counters, va, e.Shared ? InstallFrom.Shared : InstallFrom.Staging, writable, vnode, pindex);
        return ok ? FaultResult.Resolved : Superseded(ref ctx);
    }

    static FaultResult PagerError(ref UvmCtx ctx)
    {
        Interlocked.Increment(ref ctx.counters.pager_errors);
        Fail(ref ctx);
        return FaultResult.SigBus;
    }

    static FaultResult Superseded(ref UvmCtx ctx) => Install.Superseded(ctx.space, ctx.counters, ctx.va);

    // ---- allocation, failure, locks ----

    /// <summary>
    /// The page for a new anon. The lab never runs out, except when a test asks it to
    /// (<see cref="Vm.FailPageAllocs"/>): then the caller unlocks, counts fltnoram and restarts.
    /// </summary>
    public static bool PageAlloc(ref UvmCtx ctx)
    {
        var vm = ctx.space.Vm;
        while (true)
        {
            int n = Volatile.Read(ref vm.FailPageAllocs);
            if (n <= 0) return true;
            if (Interlocked.CompareExchange(ref vm.FailPageAllocs, n - 1, n) == n) return false;
        }
    }

    /// <summary>
    /// After a failed page allocation: whether waiting can help. 2000 gives up when swap is
    /// all used (001: 1220, swpgonly == swpages, true with no swap at all), 2019 when
    /// !uvm_reclaimable() (003: 628). The lab: reclaimable iff there is a swap device.
    /// Not reclaimable: fltnoanon and the fault fails (ENOMEM; the lab poisons the page).
    /// </summary>
    public static bool NoAnon(ref UvmCtx ctx)
    {
        if (ctx.space.Vm.Swap != null) return false;
        Interlocked.Increment(ref ctx.counters.fltnoanon);
        Fail(ref ctx);
        return true;
    }

    /// <summary>Poison the page: the access raises SIGBUS.</summary>
    public static UvmStep Fail(ref UvmCtx ctx)
    {
        Install.Poison(ctx.space, ctx.counters, ctx.va);
        ctx.result = FaultResult.SigBus;
        return UvmStep.Done;
    }

    /// <summary>The model needed bytes it does not have: never answer with silent zeros.</summary>
    public static UvmStep InternalError(ref UvmCtx ctx)
    {
        Interlocked.Increment(ref ctx.counters.internal_errors);
        return Fail(ref ctx);
    }

    /// <summary>Debug builds: the contract "caller holds the amap lock" (when there is an amap) is checked.</summary>
    [System.Diagnostics.Conditional("DEBUG")]
    static void AssertAmapLocked(ref UvmCtx ctx) =>
        System.Diagnostics.Debug.Assert(ctx.amap == null || Monitor.IsEntered(ctx.amap.am_lock), "caller holds the amap lock");

    static void LockAmap(ref UvmCtx ctx)
    {
        if (ctx.amap_locked) return;
        Monitor.Enter(ctx.amap!.am_lock);
        ctx.amap_locked = true;
    }

    /// <summary>uvmfault_unlockall's amap part (the map lock stays with the driver).</summary>
    public static void UnlockAmap(ref UvmCtx ctx)
    {
        if (!ctx.amap_locked) return;
        ctx.amap_locked = false;
        Monitor.Exit(ctx.amap!.am_lock);
    }
}
