using Lab.Vm;

namespace Lab.Props;

public sealed partial class Runner
{
    // ---- invariants after each operation ----

    void AfterOp()
    {
        if ((checks & Checks.Cache) != 0) CheckCache();
        if ((checks & Checks.NoWritableSharing) != 0) CheckNoWritableSharing();
        if ((checks & Checks.Structure) != 0 && !IsUvm(Design)) CheckStructure();
        if ((checks & Checks.Counters) != 0) foreach (var p in live) CheckCounters(p, final: false);
        if ((checks & Checks.Agreement) != 0) CheckAgreement();
        if ((checks & Checks.Wiring) != 0) CheckWiring();
        if ((checks & (Checks.DirtyClean | Checks.SlotPolicy)) != 0)
            // A private page installed writable may be written without a fault: no longer known clean.
            foreach (var p in live)
                foreach (var (vpn, st) in p.St.ToList())
                    if (st != PageState.Dirty && p.Pmap.Ptes.TryGetValue(vpn, out var pte) && pte.Writable && !pte.Shared)
                        p.St.Remove(vpn);
        if ((checks & Checks.SlotPolicy) != 0)
            foreach (var p in live)
            {
                var c = p.Space.Counters;
                if (IsUvm(Design) && c.swap_slots_freed_on_dirty != 0)
                    Fail($"pid{p.Id}: swap_slots_freed_on_dirty = {c.swap_slots_freed_on_dirty} ({Design} never frees a slot on a write)");
                if (!IsUvm(Design) && c.swap_slots_freed_on_wire != 0)
                    Fail($"pid{p.Id}: swap_slots_freed_on_wire = {c.swap_slots_freed_on_wire} ({Design} does not free slots on wiring)");
            }
    }

    void CheckAgreement()
    {
        foreach (var p in live)
        {
            foreach (var vpn in p.O.Pages.Keys)
            {
                ulong va = vpn * PropPmap.Page;
                bool model = p.Space.IsInstalled(va), real = p.Pmap.Ptes.ContainsKey(vpn);
                if (model != real)
                    Fail($"pid{p.Id} 0x{va:x}: the model believes the page is {(model ? "" : "not ")}installed, the page table {(real ? "has" : "lacks")} it");
            }
            foreach (var vpn in p.Pmap.Ptes.Keys)
                if (!p.O.Pages.ContainsKey(vpn)) Fail($"pid{p.Id} 0x{vpn * PropPmap.Page:x}: a page is present outside every mapping");
        }
    }

    void CheckCache()
    {
        var cachePages = new HashSet<byte[]>(ReferenceEqualityComparer.Instance);
        for (int f = 0; f < vnodes.Length; f++)
        {
            var v = vnodes[f];
            var file = oracle.Files[f];
            for (int q = 0; q < file.Pages; q++)
            {
                if (!v.IsResident(q)) continue;
                var page = v.CachePage(q);
                cachePages.Add(page);
                int i = page.AsSpan().CommonPrefixLength(file.Current(q));
                if (i != PropPmap.Page)
                    Fail($"page cache of f{f} page {q} differs from the file's bytes at byte {i}: 0x{page[i]:x2}, " +
                         $"want 0x{file.Current(q)[i]:x2} (a private write went through, or a shared write was lost)");
            }
            int d = v.Data.AsSpan().CommonPrefixLength(file.Flushed);
            if (d != file.Size)
                Fail($"backing file f{f} differs at byte {d}: 0x{v.Data[d]:x2}, want 0x{file.Flushed[d]:x2}");
        }
        foreach (var p in live)
            foreach (var (vpn, pte) in p.Pmap.Ptes)
            {
                p.O.Pages.TryGetValue(vpn, out var pg);
                if (pte.Shared)
                {
                    if (pg == null || pg.Kind != PageKind.SharedFile)
                        Fail($"pid{p.Id} 0x{vpn * PropPmap.Page:x}: a page-cache page is mapped where the oracle has {pg?.Kind.ToString() ?? "nothing"}");
                    else if (!vnodes[pg.File].IsResident(pg.Pindex) || !ReferenceEquals(pte.Bytes, vnodes[pg.File].CachePage(pg.Pindex)))
                        Fail($"pid{p.Id} 0x{vpn * PropPmap.Page:x}: the shared pte is not f{pg.File} page {pg.Pindex}'s cache page");
                }
                else if (cachePages.Contains(pte.Bytes))
                    Fail($"pid{p.Id} 0x{vpn * PropPmap.Page:x}: a private pte maps a page-cache page (writes would go through)");
            }
    }

    void CheckNoWritableSharing()
    {
        foreach (var p in live)
            foreach (var (vpn, pte) in p.Pmap.Ptes)
                if (pte.Writable && (!p.O.Pages.TryGetValue(vpn, out var pg) || (pg.Prot & Prot.Write) == 0))
                    Fail($"pid{p.Id} 0x{vpn * PropPmap.Page:x}: installed writable, the mapping is not writable");
        if (IsUvm(Design))
        {
            // A private page installed writable must be an anon that only this amap slot holds.
            foreach (var p in live)
                foreach (var (vpn, pte) in p.Pmap.Ptes)
                    if (pte.Writable && !pte.Shared && p.Space.AnonRefAt(vpn * PropPmap.Page) is var refs && refs != 1)
                        Fail($"pid{p.Id} 0x{vpn * PropPmap.Page:x}: a private page installed writable whose anon has an_ref {refs} (want 1)");
            return;
        }
        // Which spaces have each model page (first object, pindex) installed, and how.
        var holders = new Dictionary<(VmObject, long), List<(Proc, ulong, bool)>>();
        foreach (var p in live)
            foreach (var (vpn, pte) in p.Pmap.Ptes)
            {
                if (pte.Shared) continue;
                ulong va = vpn * PropPmap.Page;
                if (p.Space.ObjectAt(va) is not { } at) continue;
                if (pte.Writable && at.Object.Kind != VmObjectKind.Anonymous)
                    Fail($"pid{p.Id} 0x{va:x}: a private page installed writable while the map's first object is {at.Object} (copy-on-write not done)");
                if (!holders.TryGetValue(at, out var list)) holders[at] = list = new();
                list.Add((p, va, pte.Writable));
            }
        foreach (var (key, list) in holders)
            if (list.Count > 1 && list.Any(h => h.Item3))
                Fail($"{key.Item1} page {key.Item2} is installed writable in one space and present in another: " +
                     string.Join(", ", list.Select(h => $"pid{h.Item1.Id} 0x{h.Item2:x} {(h.Item3 ? "writable" : "read-only")}")));
    }

    void CheckStructure()
    {
        var entries = new Dictionary<VmObject, int>(ReferenceEqualityComparer.Instance);
        foreach (var p in live)
            foreach (var line in p.Space.DescribeMaps().Split('\n', StringSplitOptions.RemoveEmptyEntries))
            {
                ulong start = Convert.ToUInt64(line[..line.IndexOf('-')], 16);
                var o = p.Space.ObjectAt(start)!.Value.Object;
                entries[o] = entries.GetValueOrDefault(o) + 1;
            }
        var reachable = new HashSet<VmObject>(ReferenceEqualityComparer.Instance);
        var shadows = new Dictionary<VmObject, int>(ReferenceEqualityComparer.Instance);
        foreach (var o0 in entries.Keys)
            for (var o = o0; o != null && reachable.Add(o); o = o.BackingObject)
                if (o.BackingObject is { } b) shadows[b] = shadows.GetValueOrDefault(b) + 1;
        foreach (var o in reachable)
        {
            if (o.IsDead) Fail($"{o} is dead but still reachable from a live map");
            int e = entries.GetValueOrDefault(o), s = shadows.GetValueOrDefault(o);
            if (o.RefCount != e + s)
                Fail($"{o}: ref_count {o.RefCount}, but {e} entries and {s} shadows point at it");
            if (o.ShadowCount != s) Fail($"{o}: shadow_count {o.ShadowCount}, but {s} objects shadow it");
        }
        if (vm.ObjectsAlive != reachable.Count)
            Fail($"Vm.ObjectsAlive = {vm.ObjectsAlive}, but {reachable.Count} objects are reachable from live maps");
    }

    /// <summary>The zero-fill counter: FreeBSD lineage v_zfod, UVM flt_przero (when the counters have it).</summary>
    string ZeroFillName(VmCounters c) =>
        IsUvm(Design) && c.Snapshot().Any(kv => kv.Key == "flt_przero") ? "flt_przero" : "v_zfod";

    long ZeroFills(VmCounters c) => c[ZeroFillName(c)];

    void CheckCounters(Proc p, bool final)
    {
        var c = p.Space.Counters.Snapshot().ToDictionary(kv => kv.Key, kv => kv.Value);
        long Get(string n) => c.GetValueOrDefault(n);
        string who = $"pid{p.Id} counters{(final ? " at exit" : "")}";
        void Le(string a, string b)
        {
            if (c.ContainsKey(a) && c.ContainsKey(b) && Get(a) > Get(b)) Fail($"{who}: {a} = {Get(a)} > {b} = {Get(b)}");
        }
        if (Get("v_vm_faults") != p.Faults) Fail($"{who}: v_vm_faults = {Get("v_vm_faults")}, the MMU raised {p.Faults} faults");
        if (c.ContainsKey("sigsegv") && Get("sigsegv") != p.SegvResults)
            Fail($"{who}: sigsegv = {Get("sigsegv")}, but {p.SegvResults} faults ended in SigSegv");
        if (c.ContainsKey("sigbus") && Get("sigbus") != p.BusResults)
            Fail($"{who}: sigbus = {Get("sigbus")}, but {p.BusResults} faults ended in SigBus");
        if (Get("internal_errors") != 0) Fail($"{who}: internal_errors = {Get("internal_errors")}");
        Le("v_cow_optim", "v_cow_faults");
        Le("v_ozfod", "v_zfod");
        Le("pages_prefaulted", "pages_installed");
        Le("fastpath_hits", "v_vm_faults");
        Le("v_io_faults", "v_vm_faults");
        // UVM swaps an anon in alone; the Mach designs' swap pager brings its read window,
        // and its pages are pager pages (000: 553–659; 002: 632–741).
        Le("pageins", IsUvm(Design) ? "v_vm_faults" : "pager_pages");
        Le("pager_errors", "sigbus");
        Le("eof_faults", "sigbus");
        // Every I/O fault (file or, in the Mach designs, swap) made a pager call of its page
        // plus the read-behind/ahead counted.
        if (c.ContainsKey("read_ahead_pages") && Get("read_ahead_pages") + Get("read_behind_pages") + Get("v_io_faults") > Get("pager_pages"))
            Fail($"{who}: read_ahead_pages + read_behind_pages + v_io_faults > pager_pages");
        string[] uvm = ["flt_anon", "flt_acow", "flt_obj", "flt_prcopy", "flt_przero"];
        if (uvm.Any(c.ContainsKey))
        {
            long sum = uvm.Sum(Get);
            long faults = c.ContainsKey("faults") ? Get("faults") : Get("v_vm_faults");
            if (sum > faults) Fail($"{who}: flt_anon+flt_acow+flt_obj+flt_prcopy+flt_przero = {sum} > faults = {faults}");
        }
        foreach (var (k, v) in c)
            if (v < 0) Fail($"{who}: {k} = {v} is negative");
    }
}
