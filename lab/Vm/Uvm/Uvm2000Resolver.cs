namespace Lab.Vm.Uvm;

/// <summary>
/// NetBSD uvm_fault.c 1.48.4.1 (2000, seed 001): one handler with a ReFault label,
/// cases 1A/1B/2A/2B written out in place, each promotion inline, no spare anon (a
/// failed page allocation frees the new anon before waiting). The check, neighbour
/// and install primitives it shares with 2019 are in <see cref="UvmFault"/>.
/// </summary>
public sealed class Uvm2000Resolver : IResolver, IAmapDesign
{
    public string Name => "uvm2000";

    public FaultResult Fault(AddressSpace space, ulong va, FaultAccess access)
    {
        var ctx = UvmFault.Begin(space, va, access);
        Monitor.Enter(space.MapLock);
        try
        {
            goto Start;
        ReFault:
            UvmFault.UnlockAmap(ref ctx);
            Interlocked.Increment(ref ctx.counters.fault_retries);
        Start:
            // Lookup, protection, needs_copy (amap copy and ReFault), window, anons.
            var step = UvmFault.Check(ref ctx);
            if (step == UvmStep.Restart) goto ReFault;
            if (step == UvmStep.Done) return ctx.result;

            // Map the neighbour anons; note whether the centre has one.
            UvmFault.UpperLookup(ref ctx);

            // Not shadowed: ask the uobj for its resident pages (PGO_LOCKED) and map the neighbours.
            bool uobjpage = false;
            if (!ctx.shadowed && ctx.uobj != null) uobjpage = UvmFault.LowerLookup(ref ctx);
            if (!ctx.shadowed) goto Case2;

            // ---- Case 1: the anon at the faulting address ----
            var amap = ctx.amap!;
            int slot = ctx.entry.SlotOf(ctx.va);
            var anon = amap.am_anon[slot]!;
            Interlocked.Increment(ref ctx.counters.fltanget);   // uvmfault_anonget: resident, or swapped in here
            if (!UvmFault.AnonBytesAvailable(ref ctx, anon))
            {
                UvmFault.InternalError(ref ctx);
                return ctx.result;
            }
            if (UvmFault.AnonGet(ref ctx, anon) != UvmStep.Ok) return ctx.result;
            PageContent from = anon.Content;
            if (ctx.cow_now && anon.an_ref > 1)
            {
                // Case 1B: copy the shared anon into a new one that replaces it in our slot.
                Interlocked.Increment(ref ctx.counters.flt_acow);
                var nanon = space.AnonAlloc(PageContent.None);
                if (!UvmFault.PageAlloc(ref ctx))
                {
                    space.AnonUnref(nanon);
                    if (UvmFault.NoAnon(ref ctx)) return ctx.result;   // 001: 1220-1224
                    Interlocked.Increment(ref ctx.counters.fltnoram);
                    goto ReFault;
                }
                nanon.Content = UvmFault.CopiedContent(anon);
                amap.Add(slot, nanon, replace: true);
                anon.an_ref--;
                from = anon.Content == PageContent.Zero ? PageContent.Zero : PageContent.InSpaces;
                anon = nanon;
            }
            else
            {
                // Case 1A: the anon itself, read-only while shared.
                Interlocked.Increment(ref ctx.counters.flt_anon);
                if (anon.an_ref > 1) ctx.enter_prot &= ~Prot.Write;
            }
            ctx.result = UvmFault.EnterAnon(ref ctx, anon, from, 0);
            return ctx.result;

        Case2:
            // ---- Case 2: no anon; the uobj's page, or zero ----
            bool promote = ctx.uobj == null || (ctx.cow_now && UvmFault.CopyOnWrite(ctx.entry));
            if (ctx.uobj != null && !uobjpage)
            {
                // Not resident: a blocking get with everything unlocked, then re-verify.
                step = UvmFault.LowerIo(ref ctx);
                if (step == UvmStep.Restart) goto ReFault;
                if (step == UvmStep.Done) return ctx.result;
            }
            else Interlocked.Increment(ref ctx.counters.ru_minflt);   // resident or zero fill (001: 1366-1368)
            if (!promote)
            {
                // Case 2A: the object's page, read-only in a copy-on-write entry.
                Interlocked.Increment(ref ctx.counters.flt_obj);
                if (UvmFault.CopyOnWrite(ctx.entry)) ctx.enter_prot &= ~Prot.Write;
                ctx.result = UvmFault.EnterObject(ref ctx);
                return ctx.result;
            }

            // Case 2B: promote into a new anon, copied from the object's page or zeroed.
            var panon = space.AnonAlloc(PageContent.None);
            if (!UvmFault.PageAlloc(ref ctx))
            {
                space.AnonUnref(panon);
                if (UvmFault.NoAnon(ref ctx)) return ctx.result;   // 001: 1657-1661
                Interlocked.Increment(ref ctx.counters.fltnoram);
                goto ReFault;
            }
            panon.Content = PageContent.Zero;
            ctx.amap!.Add(ctx.entry.SlotOf(ctx.va), panon, replace: false);
            if (ctx.uobj != null)
            {
                Interlocked.Increment(ref ctx.counters.flt_prcopy);
                from = PageContent.Cache;
            }
            else
            {
                Interlocked.Increment(ref ctx.counters.flt_przero);
                from = PageContent.Zero;
                if (ctx.access == FaultAccess.WriteProtect) Interlocked.Increment(ref ctx.counters.internal_errors);
            }
            ctx.result = UvmFault.EnterAnon(ref ctx, panon, from, ctx.entry.PindexOf(ctx.va));
            return ctx.result;
        }
        finally
        {
            UvmFault.UnlockAmap(ref ctx);
            Monitor.Exit(space.MapLock);
        }
    }
}
