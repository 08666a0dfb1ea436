namespace Lab.Vm.Uvm;

/// <summary>
/// NetBSD uvm_fault.c 1.208 (2019, seed 003): the ERESTART loop over small steps —
/// check, upper lookup, then upper (anonget, promote or direct, enter) or lower
/// (lookup, io, direct or promote, enter) — with one promote helper for cases 1B and
/// 2B and a spare anon kept across restarts. The shared steps are in <see cref="UvmFault"/>.
/// </summary>
public sealed class Uvm2019Resolver : IResolver, IAmapDesign
{
    public string Name => "uvm2019";

    public FaultResult Fault(AddressSpace space, ulong va, FaultAccess access)
    {
        var ctx = UvmFault.Begin(space, va, access, objWriteFault: true);
        Monitor.Enter(space.MapLock);
        try
        {
            var error = UvmStep.Restart;
            while (error == UvmStep.Restart)
            {
                error = Pass(ref ctx);
                UvmFault.UnlockAmap(ref ctx);
                if (error == UvmStep.Restart) Interlocked.Increment(ref ctx.counters.fault_retries);
            }
            if (ctx.anon_spare is { } spare)
            {
                ctx.anon_spare = null;
                space.AnonUnref(spare);
            }
            return ctx.result;
        }
        finally
        {
            UvmFault.UnlockAmap(ref ctx);
            Monitor.Exit(space.MapLock);
        }
    }

    static UvmStep Pass(ref UvmCtx ctx)
    {
        var error = UvmFault.Check(ref ctx);
        if (error != UvmStep.Ok) return error;
        UvmFault.UpperLookup(ref ctx);
        // No object in the lab has a pgo_fault routine.
        return ctx.shadowed ? Upper(ref ctx) : Lower(ref ctx);
    }

    // ---- case 1: an anon at the faulting address ----

    static UvmStep Upper(ref UvmCtx ctx)
    {
        var anon = ctx.amap!.am_anon[ctx.entry.SlotOf(ctx.va)]!;
        // uvmfault_anonget: resident, or read back from its swap slot below.
        Interlocked.Increment(ref ctx.counters.fltanget);
        if (!UvmFault.AnonBytesAvailable(ref ctx, anon)) return UvmFault.InternalError(ref ctx);
        if (UvmFault.AnonGet(ref ctx, anon) != UvmStep.Ok) return UvmStep.Done;
        if (ctx.cow_now && anon.an_ref > 1)
        {
            ctx.promote = true;
            return UpperPromote(ref ctx, anon);
        }
        return UpperDirect(ref ctx, anon);
    }

    /// <summary>Case 1B: a write to a shared anon copies it into a new one.</summary>
    static UvmStep UpperPromote(ref UvmCtx ctx, Anon oanon)
    {
        Interlocked.Increment(ref ctx.counters.flt_acow);
        var error = Promote(ref ctx, oanon, out var anon);
        if (error != UvmStep.Ok) return error;
        oanon.an_ref--;   // more than one before, so never the last
        return UpperEnter(ref ctx, anon, oanon.Content == PageContent.Zero ? PageContent.Zero : PageContent.InSpaces);
    }

    /// <summary>Case 1A: map the anon itself, read-only while it is shared.</summary>
    static UvmStep UpperDirect(ref UvmCtx ctx, Anon anon)
    {
        Interlocked.Increment(ref ctx.counters.flt_anon);
        if (anon.an_ref > 1) ctx.enter_prot &= ~Prot.Write;
        return UpperEnter(ref ctx, anon, anon.Content);
    }

    static UvmStep UpperEnter(ref UvmCtx ctx, Anon anon, PageContent from)
    {
        ctx.result = UvmFault.EnterAnon(ref ctx, anon, from, 0);
        return UvmStep.Done;
    }

    // ---- case 2: no anon; the uobj's page, or zero ----

    static UvmStep Lower(ref UvmCtx ctx)
    {
        bool resident = false;
        if (ctx.uobj == null) ctx.promote = true;   // zero fill always needs an anon
        else
        {
            resident = UvmFault.LowerLookup(ref ctx);
            ctx.promote = ctx.cow_now && UvmFault.CopyOnWrite(ctx.entry);
        }
        if (ctx.uobj != null && !resident)
        {
            var error = UvmFault.LowerIo(ref ctx);
            if (error != UvmStep.Ok) return error;
        }
        else Interlocked.Increment(ref ctx.counters.ru_minflt);   // resident or zero fill (003: 1726-1728)
        return ctx.promote ? LowerPromote(ref ctx) : LowerDirect(ref ctx);
    }

    /// <summary>Case 2A: map the object's page, read-only for a copy-on-write entry.</summary>
    static UvmStep LowerDirect(ref UvmCtx ctx)
    {
        Interlocked.Increment(ref ctx.counters.flt_obj);
        // Read-only for a copy-on-write entry, or while the object needs write faults (003: 2053-2055).
        if (UvmFault.CopyOnWrite(ctx.entry) || UvmFault.NeedsWriteFault(ref ctx)) ctx.enter_prot &= ~Prot.Write;
        ctx.result = UvmFault.EnterObject(ref ctx);
        return UvmStep.Done;
    }

    /// <summary>Case 2B: a new anon, a copy of the object's page or zero.</summary>
    static UvmStep LowerPromote(ref UvmCtx ctx)
    {
        var error = Promote(ref ctx, null, out var anon);
        if (error != UvmStep.Ok) return error;
        PageContent from;
        if (ctx.uobj != null)
        {
            Interlocked.Increment(ref ctx.counters.flt_prcopy);
            from = PageContent.Cache;
        }
        else
        {
            Interlocked.Increment(ref ctx.counters.flt_przero);
            from = PageContent.Zero;
            // The kernel has a page the model lacks: keep the process's bytes, say so.
            if (ctx.access == FaultAccess.WriteProtect) Interlocked.Increment(ref ctx.counters.internal_errors);
        }
        ctx.result = UvmFault.EnterAnon(ref ctx, anon, from, ctx.entry.PindexOf(ctx.va));
        return UvmStep.Done;
    }

    /// <summary>
    /// uvmfault_promote: an anon (the spare if a restarted pass left one) with a page,
    /// put in the amap slot (replacing <paramref name="oanon"/> for anon COW). Without a
    /// page, the anon is kept as the spare, and the fault waits and restarts.
    /// </summary>
    static UvmStep Promote(ref UvmCtx ctx, Anon? oanon, out Anon anon)
    {
        var space = ctx.space;
        if (ctx.anon_spare is { } spare)
        {
            ctx.anon_spare = null;
            anon = spare;
            Interlocked.Increment(ref ctx.counters.spare_anon_reuse);
        }
        else anon = space.AnonAlloc(PageContent.None);
        if (!UvmFault.PageAlloc(ref ctx))
        {
            ctx.anon_spare = anon;
            UvmFault.UnlockAmap(ref ctx);
            if (UvmFault.NoAnon(ref ctx)) return UvmStep.Done;   // 003: 628-632
            Interlocked.Increment(ref ctx.counters.fltnoram);
            return UvmStep.Restart;
        }
        anon.Content = oanon != null ? UvmFault.CopiedContent(oanon) : PageContent.Zero;
        ctx.amap!.Add(ctx.entry.SlotOf(ctx.va), anon, replace: oanon != null);
        return UvmStep.Ok;
    }
}
