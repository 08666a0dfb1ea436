namespace Lab.Vm;

// Wiring (mlock, munlock): entries the pageout must not touch.
public sealed partial class AddressSpace
{
    /// <summary>
    /// mlock / vm_map_wire / uvm_map_pageable: the entries in the range that were not wired
    /// become wired, and every page of them takes a wiring fault now (VM_FAULT_WIRE), mapped
    /// or not, as the seeds' wiring loops fault each page of the range (002: 1096–1103;
    /// 001: 1842–1843; FreeBSD's vm_map_wire, outside 000, calls vm_fault per page the same
    /// way). Each is counted as the design counts any fault (v_vm_faults and the rusage pair:
    /// 000: 299, 987–1006; 002: 221, 389–396; faults: 001: 589) and is entered with the
    /// entry's full protection (000: 348–349; 002: 324–325; 001: 662–665), so a private
    /// writable page becomes this space's own and writable; no neighbour is mapped. A page
    /// already present is entered again (superseded, or a write-protect fault that breaks
    /// its copy-on-write). Entries wired already take no fault (the BSDs bump their wire
    /// count only). UVM copies the amap of a needs-copy entry up front, not counted as a
    /// fault's fltamcopy (uvm_map_pageable's job, 001: 1817–1821). If a page fails (SIGBUS,
    /// or the map changed under the loop), the whole range is unwired again (wire_failures)
    /// and the result is false. Holes and PROT_NONE entries are skipped.
    /// </summary>
    public bool Wire(ulong start, ulong length)
    {
        if (!PageRange(start, length, out ulong end)) return true;
        var runs = new List<(ulong Start, ulong End)>();
        lock (MapLock)
        {
            if (!Live(OnDestroyed.Throw)) return false;
            var (i, j) = ClipRange(start, end);
            for (int k = i; k < j; k++)
            {
                var e = entries[k];
                if (e.Wired || e.Protection == Prot.None) continue;
                if (runs.Count > 0 && runs[^1].End == e.Start) runs[^1] = (runs[^1].Start, e.End);
                else runs.Add((e.Start, e.End));
            }
            MarkWiredLocked(start, end);
            if (Resolver is not Mach.IWiringResolver)
                foreach (var (s, t) in runs) AmapCopyForWire(s, t);
        }
        foreach (var (s, t) in runs)
            for (ulong va = s; va < t; va += PageSize)
            {
                FaultAccess access;
                lock (MapLock)
                {
                    var e = Live(OnDestroyed.Ignore) ? FindEntry(va) : null;
                    if (e == null || e.Protection == Prot.None) continue;
                    if (!e.Wired) return WireFailed(start, end);   // unwired or remapped meanwhile
                    bool write = (e.Protection & Prot.Write) != 0;
                    // A present private page is write-protect faulted (its copy-on-write broken
                    // if the model still shares it); a present shared page needs no new bytes.
                    access = !write ? FaultAccess.Read
                        : !Installed(va) ? FaultAccess.Write
                        : e.Shared ? FaultAccess.Read : FaultAccess.WriteProtect;
                }
                var r = WiringFault(va, access);
                if (r is FaultResult.SigBus or FaultResult.SigSegv) return WireFailed(start, end);
            }
        return true;
    }

    /// <summary>
    /// UVM: uvm_map_pageable gives a needs-copy entry that is writable (or has no object) its
    /// own amap before the wiring faults (so none of them restarts for it); [s, t) is whole
    /// entries, clipped to the wired range.
    /// </summary>
    void AmapCopyForWire(ulong s, ulong t)
    {
        AssertMapLocked();
        for (ulong va = s; va < t;)
        {
            var e = FindEntry(va);
            if (e == null) return;
            if (e.needs_copy && ((e.Protection & Prot.Write) != 0 || e.Object == null))
                AmapCopy(e, e.Start, canchunk: false);
            va = e.End;
        }
    }

    /// <summary>
    /// A fault made by <see cref="Wire"/> (VM_FAULT_WIRE): counted as any fault; a design
    /// that treats wiring faults apart from the program's (FreeBSD, DragonFly) is told. A
    /// page being paged out when the range was wired is waited for (its removal finishes on
    /// its own; a wired page is never picked again) and faulted after.
    /// </summary>
    FaultResult WiringFault(ulong va, FaultAccess access)
    {
        for (int tries = 0; tries < 1000; tries++)
        {
            lock (MapLock)
                if (!EvictingPage(va)) break;
            Thread.Sleep(1);
        }
        return Fault(va, access, Resolver as Mach.IWiringResolver);
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
