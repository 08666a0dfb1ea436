using Lab.Vm;

namespace Lab.Props;

public sealed partial class Runner
{
    // ---- the MMU ----

    void Access(Proc p, ulong va, bool write, int off, int len, byte value)
    {
        ulong vpn = Oracle.Vpn(va);
        var expect = oracle.Expect(p.O, vpn, write);
        string what = write ? $"write(0x{va:x} +{off}, {len} bytes of 0x{value:x2})" : $"read(0x{va:x})";
        bool roundTrip = p.SwappedOut.Remove(vpn);
        long pageins0 = p.Space.Counters.pageins, io0 = vnodes.Sum(v => (long)v.IoCalls), hard0 = p.Space.Counters.v_io_faults;
        injectedThisAccess = false;
        bool policy = (checks & Checks.SlotPolicy) != 0 && write && p.St.TryGetValue(vpn, out var st0) && st0 == PageState.Swapped;
        long inUse0 = vm.SwapSlotsInUse, freed0 = p.Space.Counters.swap_slots_freed_on_dirty;
        var got = Mmu(p, va, write, expect);
        if (policy && got == Outcome.Ok)
        {
            SlotPolicyChecks++;
            long dUse = vm.SwapSlotsInUse - inUse0, dFreed = p.Space.Counters.swap_slots_freed_on_dirty - freed0;
            // FreeBSD's vm_fault_dirty (000: 234–239); DragonFly's user write passes
            // VM_FAULT_DIRTY (002: 1022–1026). UVM keeps the stale slot.
            bool frees = !IsUvm(Design);
            if (frees ? dUse != -1 || dFreed != 1 : dUse != 0 || dFreed != 0)
                Fail($"pid{p.Id} first write(0x{va:x}) after a page-out of a page this process alone held: SwapSlotsInUse {dUse:+0;-0;0}, " +
                     $"swap_slots_freed_on_dirty +{dFreed} (want {(frees ? "-1 and +1: the Mach designs free the swap copy on the write fault" : "0 and +0: the stale slot stays until the next page-out")})");
        }
        if (write && got == Outcome.Ok) p.St[vpn] = PageState.Dirty;
        if (roundTrip && got == Outcome.Ok)
        {
            SwapRoundTrips++;
            long pageins = p.Space.Counters.pageins - pageins0, io = vnodes.Sum(v => (long)v.IoCalls) - io0;
            long hard = p.Space.Counters.v_io_faults - hard0;
            if ((checks & Checks.SwapRoundTrip) != 0)
            {
                if (IsUvm(Design) ? pageins != 1 || io != 0 : io != 0)
                    Fail($"pid{p.Id} {what} of a page it paged out: {pageins} pageins (want {(IsUvm(Design) ? "1" : "any")}), {io} file reads (want 0)");
                // Mach: the swap pager brings the page in with its read window (000: 553–659;
                // 002: 632–741), one hard fault; or an earlier window brought it in and the
                // access is soft, with no pagein.
                if (!IsUvm(Design) && (pageins > 0) != (hard == 1))
                    Fail($"pid{p.Id} {what} of a page it paged out: {pageins} pageins with {hard} hard faults (want pageins > 0 exactly with one hard fault)");
            }
        }
        trace.Add($"{opIndex,2}: pid{p.Id}.{what} -> {got}");
        if (got != expect)
            Fail($"pid{p.Id} {what}: got {got}, the oracle says {expect}");
        bool exact = got != Outcome.Ok || oracle.Exact(p.O, vpn);
        ulong hash = 0;
        if (got == Outcome.Ok)
        {
            var pte = p.Pmap.Ptes[vpn];
            if (write)
            {
                pte.Bytes.AsSpan(off, len).Fill(value);
                oracle.Write(p.O, vpn, off, len, value);
            }
            else
            {
                if (oracle.CheckRead(p.O, vpn, pte.Bytes) is { } wrong)
                    Fail($"pid{p.Id} read(0x{va:x}): {wrong}");
                oracle.Touch(p.O, vpn);
                hash = Fnv(pte.Bytes);
            }
        }
        Accesses.Add(new AccessRecord(opIndex, va, write, got, exact, hash));
    }

    Outcome Mmu(Proc p, ulong va, bool write, Outcome expect)
    {
        ulong vpn = Oracle.Vpn(va);
        // The kernel checks the VMA itself: no mapping or a forbidden access never reaches userfaultfd.
        if (expect == Outcome.SigSegv)
        {
            if ((checks & Checks.ProtectionProbe) != 0) Probe(p, va, write);
            return Outcome.SigSegv;
        }
        for (int tries = 0; tries < 4; tries++)
        {
            if (tries > MaxFaultsPerAccess) MaxFaultsPerAccess = tries;
            if ((checks & Checks.Liveness) != 0 && tries > FaultBound + (injectedThisAccess ? 1 : 0))
                Fail($"pid{p.Id} access at 0x{va:x} (write {write}) took {tries} faults and still faults (bound: {FaultBound} per access)");
            if (p.Pmap.Poisoned.Contains(vpn)) return Outcome.SigBus;
            p.Pmap.Ptes.TryGetValue(vpn, out var pte);
            if (pte != null && (!write || pte.Writable)) return Outcome.Ok;
            var access = pte == null ? (write ? FaultAccess.Write : FaultAccess.Read) : FaultAccess.WriteProtect;
            var r = Fault(p, va, access);
            if (r == FaultResult.SigSegv)
                Fail($"pid{p.Id} {access} fault at 0x{va:x}: the VM answered SIGSEGV, the mapping allows the access");
            if (r == FaultResult.SigBus && !p.Pmap.Poisoned.Contains(vpn))
                Fail($"pid{p.Id} {access} fault at 0x{va:x}: SigBus without a poisoned page");
        }
        Fail($"pid{p.Id} access at 0x{va:x} (write {write}) still faults after 4 resolutions");
        return Outcome.Ok;
    }

    FaultResult Fault(Proc p, ulong va, FaultAccess access)
    {
        ulong vpn = Oracle.Vpn(va);
        bool zfCheck = (checks & Checks.ZeroFill) != 0 && access != FaultAccess.WriteProtect
            && p.O.Pages.TryGetValue(vpn, out var pg) && pg.Kind == PageKind.Anon && pg.Own == null
            && pg.AnonId >= 0 && !oracle.TouchedAnon.Contains(pg.AnonId);
        long zf0 = zfCheck ? ZeroFills(p.Space.Counters) : 0;
        p.Faults++;
        faulting = p;
        faultVa = va & ~(ulong)(PropPmap.Page - 1);
        FaultResult r;
        try { r = p.Space.Fault(va, access); }
        finally { faulting = null; faultVa = ulong.MaxValue; }
        if (r == FaultResult.SigSegv) p.SegvResults++;
        if (r == FaultResult.SigBus) p.BusResults++;
        trace.Add($"      fault {access} 0x{va:x} -> {r}");
        if (zfCheck)
        {
            long d = ZeroFills(p.Space.Counters) - zf0;
            if (d != 1)
                Fail($"pid{p.Id} first {access} fault on a never-touched anonymous page 0x{va:x} counted {d} zero fills " +
                     $"({ZeroFillName(p.Space.Counters)}), want exactly 1");
        }
        return r;
    }

    /// <summary>The access is forbidden: the VM must refuse it too and change nothing.</summary>
    void Probe(Proc p, ulong va, bool write)
    {
        ulong vpn = Oracle.Vpn(va);
        p.Pmap.Ptes.TryGetValue(vpn, out var pte);
        (bool Writable, byte[] Bytes)? before = pte == null ? null : (pte.Writable, (byte[])pte.Bytes.Clone());
        int calls = p.Pmap.Calls;
        var access = pte != null && write ? FaultAccess.WriteProtect : write ? FaultAccess.Write : FaultAccess.Read;
        var r = Fault(p, va, access);
        if (r != FaultResult.SigSegv)
            Fail($"pid{p.Id} probe: a {access} fault at 0x{va:x}, which the mapping forbids, gave {r} (want SigSegv)");
        if (p.Pmap.Calls != calls)
            Fail($"pid{p.Id} probe: the refused {access} fault at 0x{va:x} made {p.Pmap.Calls - calls} pmap calls");
        p.Pmap.Ptes.TryGetValue(vpn, out var after);
        if ((before == null) != (after == null) || before is { } b && (b.Writable != after!.Writable || !b.Bytes.AsSpan().SequenceEqual(after.Bytes)))
            Fail($"pid{p.Id} probe: the refused {access} fault at 0x{va:x} changed the page table");
    }

    /// <summary>
    /// Runs at the start of every pager call. When the fault has dropped the map lock for
    /// the I/O (the only time another thread could change the map), sometimes munmap or
    /// mremap a few pages next to the faulting one in the same space, as a concurrent
    /// thread of the program would. The faulting page stays mapped, so the access's
    /// expected outcome holds; what the fault installs afterwards is checked as usual
    /// (inside the mappings of the space, nothing at an address that moved away).
    /// </summary>
    void Interfere()
    {
        var p = faulting;
        var rng = interference!;
        if (p == null || interfering || faultVa == ulong.MaxValue || Monitor.IsEntered(p.Space.MapLock)) return;
        if (rng.Next(3) == 0) return;
        ulong fvpn = Oracle.Vpn(faultVa);
        int k = rng.Next(1, 5);
        bool after = rng.Next(2) == 0;
        if (!after && fvpn < (ulong)k) return;
        ulong s = after ? fvpn + 1 : fvpn - (ulong)k;
        ulong start = s * PropPmap.Page, len = (ulong)k * PropPmap.Page;
        interfering = true;
        try
        {
            if (rng.Next(2) == 0)
            {
                trace.Add($"      [during I/O] pid{p.Id}.munmap(0x{start:x}, {k}p)");
                p.SwappedOut.RemoveWhere(q => q >= s && q < s + (ulong)k);
                p.Pmap.Zap(start, len);
                p.Space.Unmap(start, len);
                Oracle.Unmap(p.O, s, k);
            }
            else
            {
                ulong to = Layout.Va(rng.Next(Layout.Slots), rng.Next(8));
                ulong t = Oracle.Vpn(to);
                if (!Oracle.AllMapped(p.O, s, k) || (s < t + (ulong)k && t < s + (ulong)k) || (fvpn >= t && fvpn < t + (ulong)k))
                    return;
                trace.Add($"      [during I/O] pid{p.Id}.mremap(0x{start:x}, {k}p -> 0x{to:x})");
                p.SwappedOut.RemoveWhere(q => (q >= s && q < s + (ulong)k) || (q >= t && q < t + (ulong)k));
                p.Pmap.Move(start, to, len);
                p.Space.Remap(start, to, len);
                Oracle.Remap(p.O, s, t, k);
            }
            Interferences++;
        }
        finally { interfering = false; }
    }

    // ---- pmap call checks (prefault safety) ----

    public void CheckInstall(Proc owner, ulong va, bool shared, bool writable, IVnode? vnode, long pindex)
    {
        string what = $"install at 0x{va:x} in pid{owner.Id} ({(shared ? "shared" : "private")}, {(writable ? "writable" : "read-only")})";
        if (faulting != owner)
            Fail($"{what} while {(faulting == null ? "no fault is in progress" : $"pid{faulting.Id} is faulting")}");
        ulong vpn = Oracle.Vpn(va);
        if (!owner.O.Pages.TryGetValue(vpn, out var pg))
            Fail($"{what}: outside every mapping of the space");
        else
        {
            if (pg.Prot == Prot.None) Fail($"{what}: the mapping is PROT_NONE");
            if (writable && (pg.Prot & Prot.Write) == 0) Fail($"{what}: the mapping is {pg.Prot}");
            if (shared != (pg.Kind == PageKind.SharedFile))
                Fail($"{what}: the oracle says the page is {pg.Kind}");
            if (pg.Kind != PageKind.Anon && pg.Own == null)
            {
                if (pg.Pindex >= oracle.Files[pg.File].Pages)
                    Fail($"{what}: f{pg.File} page {pg.Pindex} is past EOF ({oracle.Files[pg.File].Pages} pages)");
                if (w.Error != null && w.Error.File == pg.File && w.Error.Pindex == pg.Pindex)
                    Fail($"{what}: f{pg.File} page {pg.Pindex} cannot be read (injected EIO), yet bytes were installed");
            }
            if (shared && (vnode == null || !fileOfIno.TryGetValue(vnode.Ino, out int f) || f != pg.File || pindex != pg.Pindex))
                Fail($"{what}: maps {(vnode == null ? "nothing" : $"ino {vnode.Ino}")} page {pindex}, the oracle says f{pg.File} page {pg.Pindex}");
        }
    }

    public void CheckProtect(Proc owner, ulong va, ulong length, bool writeProtect)
    {
        string what = $"{(writeProtect ? "write-protect" : "unprotect")} 0x{va:x}+{length / PropPmap.Page}p in pid{owner.Id}";
        if (faulting != owner && !(writeProtect && (forkProtecting == owner || evicting == owner)))
            Fail($"{what} outside a fault of that space");
        if (!writeProtect)
            for (ulong q = Oracle.Vpn(va); q < Oracle.Vpn(va + length); q++)
                if (!owner.O.Pages.TryGetValue(q, out var pg) || (pg.Prot & Prot.Write) == 0)
                    Fail($"{what}: page 0x{q * PropPmap.Page:x} is not mapped writable");
    }

    public void CheckRemove(Proc owner, ulong va)
    {
        if (evicting != owner) Fail($"remove 0x{va:x} in pid{owner.Id} outside an eviction of that space");
    }

    public void CheckPoison(Proc owner, ulong va)
    {
        if (faulting != owner) Fail($"poison 0x{va:x} in pid{owner.Id} outside a fault of that space");
    }
}
