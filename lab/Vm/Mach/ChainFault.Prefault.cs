namespace Lab.Vm.Mach;

// The chain designs' neighbour mapping: the prefault after a fault, and MADV_WILLNEED's.
internal static partial class ChainFault
{
    // ---- prefault resident neighbours ----

    /// <summary>
    /// Map already-resident neighbours read-only (as pmap_enter_quick), in the outward
    /// spiral -1, +1, -2, +2 ..., within the entry, skipping pages already installed and
    /// stopping at the first neighbour no object in the chain holds.
    /// </summary>
    public static void Prefault(ref FaultState fs, int backward, int forward)
    {
        if (fs.wired) return;   // both seeds: a wired fault maps its own page only
        var e = fs.entry;
        var space = fs.space;
        ulong va = fs.va;
        ulong starta = va >= (ulong)backward * PageSize ? va - (ulong)backward * PageSize : 0;
        if (starta < e.Start) starta = e.Start;
        int n = 2 * Math.Max(backward, forward);
        for (int i = 0; i < n; i++)
        {
            ulong k = (ulong)((i >> 1) + 1);
            ulong addr;
            if ((i & 1) == 0)
            {
                if (va < k * PageSize) continue;
                addr = va - k * PageSize;
            }
            else
            {
                if (k > (ulong)forward) continue;
                addr = va + k * PageSize;
            }
            if (addr < starta || addr >= e.End) continue;
            if (space.Installed(addr)) continue;

            long pindex = e.PindexOf(addr);
            var lobject = e.Object!;
            PageLookup look;
            PageState m;
            while (true)
            {
                VmObject? b;
                long off;
                lock (lobject.Lock)
                {
                    if (lobject.dead) return;   // collapsed under us: what lies below may be hidden
                    look = lobject.Lookup(pindex, out m);
                    b = lobject.backing_object;
                    off = lobject.backing_object_offset;
                }
                if (look != PageLookup.Absent || lobject.Kind != VmObjectKind.Anonymous || b == null) break;
                pindex += off;
                lobject = b;
            }
            // A hole ends the prefault, and so does a paged-out page: not resident (000: 1151–1153).
            if (look == PageLookup.Absent || m.Content == PageContent.Swap) break;
            if (look == PageLookup.Busy) continue;  // not valid yet
            PrefaultOne(ref fs, addr, lobject, pindex, m.Content);
        }
    }

    static void PrefaultOne(ref FaultState fs, ulong addr, VmObject lobject, long pindex, PageContent content) =>
        _ = MapResident(fs.space, fs.counters, fs.entry, addr, lobject, pindex, content, neighbour: true);

    /// <summary>
    /// madvise(MADV_WILLNEED), from the kernels around the seeds (no seed has it): the
    /// resident, valid, not busy pages of each entry's own object (no chain walk) in the range
    /// are mapped read-only where nothing is mapped yet, as pmap_enter_quick does. FreeBSD's
    /// vm_map_madvise calls vm_map_pmap_enter for every object of an entry that is not wired;
    /// DragonFly's calls pmap_object_init_pt, which maps vnode objects' pages only.
    /// </summary>
    public static int WillNeed(AddressSpace space, ulong start, ulong end, bool vnodeOnly, bool skipWired)
    {
        space.AssertMapLocked();
        int mapped = 0;
        var counters = space.Counters;
        for (var e = space.FindEntryFrom(start); e != null && e.Start < end; e = space.FindEntryFrom(e.End))
        {
            var obj = e.Object;
            if (obj == null || (e.Protection & (Prot.Read | Prot.Exec)) == 0 || (skipWired && e.Wired)) continue;
            if (vnodeOnly && obj.Kind != VmObjectKind.Vnode) continue;
            ulong s = Math.Max(start, e.Start), t = Math.Min(end, e.End);
            for (ulong va = s; va < t; va += PageSize)
            {
                if (space.Installed(va)) continue;
                long pindex = e.PindexOf(va);
                PageLookup look;
                PageState m;
                lock (obj.Lock)
                {
                    if (obj.dead) break;
                    if (obj.Kind == VmObjectKind.Vnode && pindex >= obj.Size) break;
                    look = obj.Lookup(pindex, out m);
                }
                if (look != PageLookup.Found || m.Content == PageContent.Swap) continue;   // not resident, or busy
                if (MapResident(space, counters, e, va, obj, pindex, m.Content, neighbour: false)) mapped++;
            }
        }
        if (mapped > 0) Interlocked.Add(ref counters.willneed_mapped, mapped);
        return mapped;
    }

    static bool MapResident(AddressSpace space, VmCounters counters, VmMapEntry entry, ulong addr, VmObject lobject, long pindex,
        PageContent content, bool neighbour)
    {
        var pmap = space.Pmap;
        switch (content)
        {
            case PageContent.Cache:
            {
                lobject.NoteInstalled(pindex, counters);
                bool shared = entry.Shared;
                // A shared page is resident already (the walk found it): no pager call.
                if (!shared && Install.Fetch(pmap, lobject.Vnode!, pindex, shared: false) != 0) return false;
                return Install.Map(space, counters, addr, shared ? InstallFrom.Shared : InstallFrom.Staging, false,
                    lobject.Vnode, pindex, neighbour: neighbour);
            }
            case PageContent.Zero:
                return Install.Map(space, counters, addr, InstallFrom.Zero, false, neighbour: neighbour);
            case PageContent.File:
            {
                var (vobj, vpindex) = lobject.Bottom(pindex);
                if (vpindex >= vobj.Size) return false;
                if (Install.Fetch(pmap, vobj.Vnode!, vpindex, shared: false) != 0) return false;
                return Install.Map(space, counters, addr, InstallFrom.Staging, false, neighbour: neighbour);
            }
            case PageContent.SwapClean:
            {
                long slot;
                lock (lobject.Lock) slot = lobject.SwapSlot(pindex);
                if (slot <= 0 || space.Vm.Swap is not { } dev || dev.Read(slot, pmap.Staging(1)) != SwapReadResult.Ok) return false;
                return Install.Map(space, counters, addr, InstallFrom.Staging, false, neighbour: neighbour);
            }
            default:
                return false;   // anonymous bytes we do not have here: nothing to map
        }
    }
}
