using System.Text;

namespace Lab.Vm.Uvm;

/// <summary>
/// The UVM map layer (uvm2000, uvm2019): each entry has an optional amap of anons over an
/// optional uobj (the vnode object of a file mapping). Every member is called with the
/// space's map lock held; then the amap lock, then the uobj's lock.
/// </summary>
internal sealed class AmapMap : IMapLayer
{
    public static readonly AmapMap Instance = new();

    AmapMap() { }

    /// <summary>No uobj, and needs_copy so the first fault makes the amap (as mmap does).</summary>
    public void MapAnonymous(AddressSpace space, VmMapEntry e) => e.needs_copy = true;

    /// <summary>Nothing: a forked entry shares its amap until amap_copy.</summary>
    public void BeforeFork(AddressSpace space, VmMapEntry e) { }

    public int Depth(VmMapEntry e) => (e.aref_amap != null ? 1 : 0) + (e.Object != null ? 1 : 0);

    public void Describe(VmMapEntry e, StringBuilder sb)
    {
        if (e.aref_amap is { } a)
            lock (a.am_lock) sb.Append($" amap {a.am_nused}/{a.Slots} ref {a.am_ref}");
        else sb.Append(" amap none");
    }

    /// <summary>The anon in the entry's slot holds its bytes only in swap.</summary>
    public bool IsPagedOut(AddressSpace space, VmMapEntry e, ulong va)
    {
        if (e.aref_amap is not { } a) return false;
        lock (a.am_lock) return a.am_anon[e.SlotOf(va)] is { Content: PageContent.Swap };
    }

    /// <summary>UVM: the anon in this entry's amap slot, or the uobj's page (clean) when there is none.</summary>
    public EvictResult Evict(AddressSpace space, VmMapEntry e, ulong va)
    {
        space.AssertMapLocked();
        if (e.aref_amap is not { } amap) return EvictResult.Clean;
        lock (amap.am_lock)
        {
            var anon = amap.am_anon[e.SlotOf(va)];
            if (anon == null) return EvictResult.Clean;
            var need = AddressSpace.EvictNeeds(anon.Content, space.MustSave(va));
            if (need != EvictResult.Evicted) return need;
            if (anon.an_id == 0) anon.an_id = space.Vm.NextAnonId();
            long slot = space.PageOut(va, SwapOwnerKind.Anon, anon.an_id, 0);
            if (slot <= 0) return slot < 0 ? EvictResult.Busy : EvictResult.NoSwap;
            if (slot > int.MaxValue)
            {
                space.Vm.FreeSwapSlot(slot);
                return EvictResult.NoSwap;
            }
            space.Vm.FreeSwapSlot(anon.an_swslot);
            anon.an_swslot = (int)slot;
            anon.Content = PageContent.Swap;
            return EvictResult.Evicted;
        }
    }

    /// <summary>
    /// Remove's UVM side: this space's anons in [s, t) leave its amap (copying a shared
    /// amap first), so the uobj (the file) or zero fill shows through again.
    /// </summary>
    public void Forget(AddressSpace space, VmMapEntry e, ulong s, ulong t)
    {
        space.AssertMapLocked();
        if (e.aref_amap is not { } amap) return;
        int slot = e.SlotOf(s), n = (int)((t - s) >> Vm.PageShift);
        lock (amap.am_lock)
            if (!amap.Any(slot, n)) return;
        if (e.needs_copy) space.AmapCopy(e, s, canchunk: false);
        amap = e.aref_amap!;
        slot = e.SlotOf(s);
        lock (amap.am_lock)
        {
            for (int i = slot; i < slot + n; i++)
            {
                var anon = amap.am_anon[i];
                if (anon == null) continue;
                amap.am_anon[i] = null;
                amap.am_nused--;
                space.AnonUnref(anon);
            }
        }
    }
}
