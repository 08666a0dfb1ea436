using Lab.Vm;

namespace Lab.Props;

public sealed partial class Runner
{
    /// <summary>
    /// A page-out. It changes no byte (the oracle is not told); the page must leave the
    /// page table exactly when the VM says Evicted or Clean, and the result must fit what
    /// the page is.
    /// </summary>
    void Evict(Proc p, ulong vpn, string who, bool reread = false)
    {
        ulong va = vpn * PropPmap.Page;
        bool present = p.Pmap.Ptes.ContainsKey(vpn);
        var pg = p.O.Pages[vpn];
        byte[]? before = present ? (byte[])p.Pmap.Ptes[vpn].Bytes.Clone() : null;
        bool wasWritable = present && p.Pmap.Ptes[vpn].Writable;
        int writes0 = swap?.Writes ?? 0;
        long clean0 = p.Space.Counters.evict_clean;
        evicting = p;
        EvictResult r;
        try { r = p.Space.Evict(va); }
        finally { evicting = null; }
        trace.Add($"{who}evict(0x{va:x}) -> {r}");
        EvictResults.Add(r);
        bool gone = !p.Pmap.Ptes.ContainsKey(vpn);
        switch (r)
        {
            case EvictResult.Evicted:
            case EvictResult.Clean:
                if (!present) Fail($"pid{p.Id} evict(0x{va:x}) -> {r}, but the page was not present");
                if (!gone) Fail($"pid{p.Id} evict(0x{va:x}) -> {r}, but the page is still present");
                if (pg.Wired) Fail($"pid{p.Id} evict(0x{va:x}) -> {r} on a wired page");
                if (r == EvictResult.Evicted)
                {
                    if (swap == null) Fail($"pid{p.Id} evict(0x{va:x}) -> Evicted without a swap device");
                    if (pg.Kind == PageKind.SharedFile) Fail($"pid{p.Id} evict(0x{va:x}) wrote a shared file page to swap");
                    p.SwappedOut.Add(vpn);
                }
                Evictions++;
                break;
            case EvictResult.NotResident:
                if (present) Fail($"pid{p.Id} evict(0x{va:x}) -> NotResident, but the page is present");
                break;
            case EvictResult.Wired:
                if (!pg.Wired) Fail($"pid{p.Id} evict(0x{va:x}) -> Wired, the page is not wired");
                break;
            case EvictResult.NoSwap:
                if (swap != null) Fail($"pid{p.Id} evict(0x{va:x}) -> NoSwap with a swap device");
                if (gone) Fail($"pid{p.Id} evict(0x{va:x}) -> NoSwap, but the page left the page table");
                break;
            default:
                Fail($"pid{p.Id} evict(0x{va:x}) -> {r} with nothing else running");
                break;
        }
        if ((checks & (Checks.DirtyClean | Checks.SlotPolicy)) != 0 && r is EvictResult.Evicted or EvictResult.Clean)
            CheckEviction(p, vpn, pg, r, before!, wasWritable, writes0, clean0, reread && (checks & Checks.DirtyClean) != 0);
    }

    /// <summary>
    /// §4.20/21: a page known clean (never written since it was last evicted, or a file page
    /// never written privately) is dropped without a swap write (evict_clean); a page known
    /// dirty (written by this process alone since) is written to swap, and every swap write
    /// holds the page's current bytes. Then, sometimes, read it straight back: the same bytes.
    /// </summary>
    void CheckEviction(Proc p, ulong vpn, Oracle.OPage pg, EvictResult r, byte[] before, bool wasWritable, int writes0, long clean0, bool reread)
    {
        ulong va = vpn * PropPmap.Page;
        int writes = (swap?.Writes ?? 0) - writes0;
        long cleans = p.Space.Counters.evict_clean - clean0;
        var st = p.St.TryGetValue(vpn, out var s0) ? s0 : (PageState?)null;
        bool kindClean = pg.Kind == PageKind.SharedFile;
        string why = kindClean ? "a shared file page" : $"state {st}";
        if (r == EvictResult.Clean && (writes != 0 || cleans != 1))
            Fail($"pid{p.Id} evict(0x{va:x}) -> Clean, but {writes} swap writes and evict_clean +{cleans} (want 0 and +1)");
        if (r == EvictResult.Evicted)
        {
            if (writes != 1) Fail($"pid{p.Id} evict(0x{va:x}) -> Evicted with {writes} swap writes (want 1)");
            var slot = new byte[PropPmap.Page];
            if (swap!.Read(swap.LastSlot, slot) != SwapReadResult.Ok) Fail($"pid{p.Id} evict(0x{va:x}): the slot just written cannot be read");
            int j = slot.AsSpan().CommonPrefixLength(before);
            if (j != PropPmap.Page)
                Fail($"pid{p.Id} evict(0x{va:x}) wrote stale bytes to swap: byte {j} is 0x{slot[j]:x2}, the page holds 0x{before[j]:x2}");
            DirtyEvictions++;
        }
        else CleanEvictions++;
        // userfaultfd has no dirty bit: a private page installed writable may have been written
        // without a fault, so the VM must count it dirty. Clean is required only of a page
        // installed write-protected (or a shared one, which never goes to swap).
        bool knownClean = kindClean || (!wasWritable && st is PageState.Clean or PageState.Swapped);
        if (knownClean && r != EvictResult.Clean)
            Fail($"pid{p.Id} evict(0x{va:x}) of a clean page ({why}) -> {r}, {writes} swap writes (want Clean, no I/O)");
        if (st == PageState.Dirty && !kindClean && r != EvictResult.Evicted)
            Fail($"pid{p.Id} evict(0x{va:x}) of a page this process alone wrote since it was last clean -> {r} (want Evicted: its bytes written to swap)");
        p.St[vpn] = r == EvictResult.Evicted && st == PageState.Dirty ? PageState.Swapped : PageState.Clean;
        if (!reread || oracle.Expect(p.O, vpn, false) != Outcome.Ok || !oracle.Exact(p.O, vpn)) return;
        Access(p, va, false, 0, 1, 0);
        var got = p.Pmap.Ptes[vpn].Bytes;
        int k = got.AsSpan().CommonPrefixLength(before);
        if (k != PropPmap.Page)
            Fail($"pid{p.Id} re-read of 0x{va:x} after evict -> {r}: byte {k} is 0x{got[k]:x2}, it held 0x{before[k]:x2}");
    }

    void Fork(Proc parent)
    {
        var child = new Proc { Id = nextPid++, O = Oracle.Fork(parent.O, nextPid - 1) };
        trace.Add($"{opIndex,2}: pid{parent.Id}.fork() -> pid{child.Id}");
        child.Pmap = new PropPmap(this, child);
        forkProtecting = parent;
        try { parent.Space.ForkProtect(); }
        finally { forkProtecting = null; }
        parent.Pmap.CopyInto(child.Pmap);
        child.Space = parent.Space.Fork(child.Pmap);
        // The pages are shared now: a Dirty page is no longer this process's alone, a Swapped slot neither.
        foreach (var (vpn, st) in parent.St.ToList())
        {
            if (st == PageState.Dirty) { parent.St.Remove(vpn); continue; }
            parent.St[vpn] = child.St[vpn] = PageState.Clean;
        }
        live.Add(child);
        Forks++;
    }

    /// <summary>
    /// mlock as the VM does it: every mapped page in the range is faulted in, in address
    /// order, private writable ones for writing (copy-on-write broken up front); the first
    /// page that fails ends it and unwires the whole range.
    /// </summary>
    void Wire(Proc p, ulong start, int n, string who)
    {
        ulong vpn0 = Oracle.Vpn(start);
        bool expect = true;
        int upTo = n;
        for (int i = 0; i < n && expect; i++)
        {
            if (!p.O.Pages.TryGetValue(vpn0 + (ulong)i, out var pg) || pg.Prot == Prot.None) continue;
            bool write = (pg.Prot & Prot.Write) != 0 && pg.Kind != PageKind.SharedFile;
            if (oracle.Expect(p.O, vpn0 + (ulong)i, write) != Outcome.Ok) { expect = false; upTo = i; break; }
        }
        // Pages of entries wired before this call: Wire faults none of them (the BSDs only bump the
        // wire count), and below the kernel's populate reaches them instead.
        var wiredBefore = new List<ulong>();
        for (int i = 0; i < n; i++)
            if (p.O.Pages.TryGetValue(vpn0 + (ulong)i, out var wb) && wb.Wired && wb.Prot != Prot.None) wiredBefore.Add(vpn0 + (ulong)i);
        var c = p.Space.Counters;
        long f0 = c.v_vm_faults, segv0 = c.sigsegv, bus0 = c.sigbus;
        long dirty0 = c.swap_slots_freed_on_dirty, onWire0 = c.swap_slots_freed_on_wire;
        int swapped = 0;
        for (int i = 0; i < n; i++)
            if (p.St.TryGetValue(vpn0 + (ulong)i, out var s0) && s0 == PageState.Swapped
                && p.O.Pages.TryGetValue(vpn0 + (ulong)i, out var ps) && (ps.Prot & Prot.Write) != 0 && !ps.Wired)
                swapped++;
        faulting = p;
        bool got;
        try { got = p.Space.Wire(start, (ulong)n * PropPmap.Page); }
        finally { faulting = null; }
        DropStates(p, vpn0, n);
        if ((checks & Checks.Liveness) != 0 && c.v_vm_faults - f0 > n)
            Fail($"pid{p.Id} mlock(0x{start:x}, {n}p) took {c.v_vm_faults - f0} faults (bound: one per page)");
        if ((checks & Checks.SlotPolicy) != 0 && expect && swapped > 0)
        {
            SlotPolicyChecks++;
            long dd = c.swap_slots_freed_on_dirty - dirty0, dw = c.swap_slots_freed_on_wire - onWire0;
            // A wiring fault does not dirty: FreeBSD leaves VM_FAULT_WIRE out of need_dirty
            // (000: 191–193), DragonFly's wiring passes no VM_FAULT_DIRTY (002: 1099, 1022).
            if (!IsUvm(Design) && dd != 0)
                Fail($"pid{p.Id} mlock(0x{start:x}, {n}p) over {swapped} pages swapped out from this process alone: swap_slots_freed_on_dirty +{dd} (want 0: a wiring fault does not dirty, 000: 191–193; 002: 1099)");
            if (IsUvm(Design) && dw < swapped)
                Fail($"pid{p.Id} mlock(0x{start:x}, {n}p) over {swapped} pages swapped out from this process alone: swap_slots_freed_on_wire +{dw} (UVM: wiring drops each anon's slot)");
        }
        p.Faults += c.v_vm_faults - f0;
        p.SegvResults += c.sigsegv - segv0;
        p.BusResults += c.sigbus - bus0;
        trace.Add($"{who}mlock(0x{start:x}, {n}p) -> {got}");
        if (got != expect) Fail($"pid{p.Id} mlock(0x{start:x}, {n}p) returned {got}, the oracle says {expect}");
        if (got) Wires++;
        for (int i = 0; i < upTo; i++)
        {
            ulong q = vpn0 + (ulong)i;
            if (!p.O.Pages.TryGetValue(q, out var pg) || pg.Prot == Prot.None) continue;
            oracle.Touch(p.O, q);
            if ((pg.Prot & Prot.Write) != 0 && pg.Kind != PageKind.SharedFile)
                oracle.Write(p.O, q, 0, 0, 0);   // a private copy now, with the same bytes
        }
        for (int i = 0; i < n; i++)
            if (p.O.Pages.TryGetValue(vpn0 + (ulong)i, out var pg)) pg.Wired = got;
        // Then Linux's mlock populates the range, writing for a private writable mapping. A page of an
        // entry wired before may still be shared copy-on-write since a fork (the lab forks a wired entry
        // lazily, as Linux does; the BSDs copy it eagerly): the populate breaks that through the design's
        // write-protect fault, as the kernel's populate does under `lab run`.
        if (got)
            foreach (var q in wiredBefore)
                if (p.O.Pages.TryGetValue(q, out var wp) && (wp.Prot & Prot.Write) != 0 && wp.Kind != PageKind.SharedFile)
                    Mmu(p, q * PropPmap.Page, write: true, Outcome.Ok);
        if (!got || (checks & Checks.Wiring) == 0) return;
        for (int i = 0; i < n; i++)
        {
            ulong q = vpn0 + (ulong)i;
            if (!p.O.Pages.TryGetValue(q, out var pg) || pg.Prot == Prot.None) continue;
            if (!p.Pmap.Ptes.TryGetValue(q, out var pte))
                Fail($"pid{p.Id} 0x{q * PropPmap.Page:x}: not present after mlock");
            else if ((pg.Prot & Prot.Write) != 0 && pg.Kind != PageKind.SharedFile && !pte.Writable)
                Fail($"pid{p.Id} 0x{q * PropPmap.Page:x}: a wired private writable page is still write-protected (copy-on-write not broken)");
        }
    }

    void CheckWiring()
    {
        foreach (var p in live)
        {
            long wired = 0;
            foreach (var (vpn, pg) in p.O.Pages)
            {
                if (pg.Wired) wired++;
                if (p.Space.IsWired(vpn * PropPmap.Page) != pg.Wired)
                    Fail($"pid{p.Id} 0x{vpn * PropPmap.Page:x}: IsWired {!pg.Wired}, the oracle says {pg.Wired}");
                if (p.Space.IsEvictable(vpn * PropPmap.Page) == pg.Wired)
                    Fail($"pid{p.Id} 0x{vpn * PropPmap.Page:x}: IsEvictable {!pg.Wired} on a page {(pg.Wired ? "" : "not ")}wired");
            }
            if (p.Space.Counters.wired_pages != wired)
                Fail($"pid{p.Id}: wired_pages = {p.Space.Counters.wired_pages}, {wired} mapped pages are wired");
        }
    }

    void Msync(Proc p, ulong start, ulong len, string who)
    {
        trace.Add($"{who}msync(0x{start:x}, {len / PropPmap.Page}p)");
        var ranges = p.Space.SharedRanges(start, len);
        var got = new HashSet<(int, long)>();
        foreach (var (vn, first, count) in ranges)
        {
            if (!fileOfIno.TryGetValue(vn.Ino, out int f)) Fail($"SharedRanges returned an unknown vnode {vn.Ino}");
            for (long q = first; q < first + count; q++) got.Add((f, q));
            vn.MarkDirty(first, count);
            vn.Flush();
        }
        // The oracle's backing file: what the VM flushed is the page cache now.
        foreach (var (f, q) in got)
        {
            var file = oracle.Files[f];
            if (q < 0 || q >= file.Pages) Fail($"SharedRanges returned f{f} page {q}, past EOF ({file.Pages} pages)");
            int n = Math.Min(PropPmap.Page, file.Size - (int)q * PropPmap.Page);
            Array.Copy(file.Current((int)q), 0, file.Flushed, q * PropPmap.Page, n);
        }
        if ((checks & Checks.Msync) == 0) return;
        ulong vpn = Oracle.Vpn(start);
        for (ulong i = 0; i < len / PropPmap.Page; i++)
            if (p.O.Pages.TryGetValue(vpn + i, out var pg) && pg.Kind == PageKind.SharedFile && pg.EverWritable
                && pg.Pindex < oracle.Files[pg.File].Pages && !got.Contains((pg.File, pg.Pindex)))
                Fail($"msync of 0x{start:x}+{len / PropPmap.Page}p did not write back f{pg.File} page {pg.Pindex} " +
                     $"(mapped shared and writable at 0x{(vpn + i) * PropPmap.Page:x})");
    }
}
