namespace Lab.Vm;

// Wiring (mlock, munlock): entries the pageout must not touch.
public sealed partial class AddressSpace
{
    /// <summary>
    /// mlock / vm_map_wire: the entries in the range become wired and every page is
    /// faulted in now with the entry's full protection, so a private writable page is
    /// made this space's own (copy-on-write broken: the first object's page, or an anon
    /// only this amap holds) and installed writable. Pages already present in a
    /// read-only or shared entry need nothing. If a page fails (SIGBUS, or the map
    /// changed under the loop), the whole range is unwired again (wire_failures) and
    /// the result is false. Unmapped holes and PROT_NONE entries are skipped.
    /// </summary>
    public bool Wire(ulong start, ulong length)
    {
        if (!PageRange(start, length, out ulong end)) return true;
        lock (MapLock)
        {
            if (!Live(OnDestroyed.Throw)) return false;
            MarkWiredLocked(start, end);
        }
        for (ulong va = start; va < end; va += PageSize)
        {
            FaultAccess access;
            lock (MapLock)
            {
                var e = Live(OnDestroyed.Ignore) ? FindEntry(va) : null;
                if (e == null || e.Protection == Prot.None) continue;
                if (!e.Wired) return WireFailed(start, end);   // unwired or remapped meanwhile
                bool write = (e.Protection & Prot.Write) != 0;
                if (Installed(va))
                {
                    if (!write || e.Shared) continue;
                    access = FaultAccess.WriteProtect;   // present, maybe copy-on-write: break it
                }
                else access = write ? FaultAccess.Write : FaultAccess.Read;
            }
            var r = WiringFault(va, access);
            if (r is FaultResult.SigBus or FaultResult.SigSegv) return WireFailed(start, end);
        }
        return true;
    }

    /// <summary>
    /// A fault made by <see cref="Wire"/> (VM_FAULT_WIRE): counted as any fault; a design
    /// that treats wiring faults apart from the program's (FreeBSD, DragonFly) is told.
    /// </summary>
    FaultResult WiringFault(ulong va, FaultAccess access)
    {
        if (Resolver is not Mach.IWiringResolver w) return Fault(va, access);
        Interlocked.Increment(ref Counters.v_vm_faults);
        return w.WiringFault(this, va & ~PageMask, access);
    }

    /// <summary>
    /// The entries in the range become wired without faulting anything in: the kernel has
    /// locked (or is locking) the pages itself (mlock through the lab's shim, whose populate
    /// faults come through the pmap as usual), so the pageout must never pick them.
    /// </summary>
    public void MarkWired(ulong start, ulong length)
    {
        if (!PageRange(start, length, out ulong end)) return;
        lock (MapLock)
        {
            if (!Live(OnDestroyed.Ignore)) return;
            MarkWiredLocked(start, end);
        }
    }

    void MarkWiredLocked(ulong start, ulong end)
    {
        AssertMapLocked();
        var (i, j) = ClipRange(start, end);
        for (int k = i; k < j; k++)
        {
            var e = entries[k];
            if (e.Wired) continue;
            e.Wired = true;
            Interlocked.Add(ref Counters.wired_pages, e.Pages);
        }
        Bump();
    }

    bool WireFailed(ulong start, ulong end)
    {
        Interlocked.Increment(ref Counters.wire_failures);
        Unwire(start, end - start);
        return false;
    }

    /// <summary>munlock / vm_map_unwire: the entries in the range are no longer wired, so their pages may be evicted again.</summary>
    public void Unwire(ulong start, ulong length)
    {
        if (!PageRange(start, length, out ulong end)) return;
        lock (MapLock)
        {
            if (!Live(OnDestroyed.Ignore)) return;
            var (i, j) = ClipRange(start, end);
            for (int k = i; k < j; k++)
            {
                var e = entries[k];
                if (!e.Wired) continue;
                e.Wired = false;
                Interlocked.Add(ref Counters.wired_pages, -e.Pages);
            }
            Bump();
        }
    }

    /// <summary>Whether the page at <paramref name="va"/> may be paged out: it is mapped and its entry is not wired.</summary>
    public bool IsEvictable(ulong va)
    {
        lock (MapLock)
        {
            var e = Live(OnDestroyed.Ignore) ? FindEntry(va & ~PageMask) : null;
            return e != null && !e.Wired;
        }
    }

    /// <summary>Whether the entry at <paramref name="va"/> is wired.</summary>
    public bool IsWired(ulong va)
    {
        lock (MapLock) return FindEntry(va & ~PageMask)?.Wired == true;
    }
}
