using Lab.Vm.Uvm;

namespace Lab.Vm;

// The UVM map layer (uvm2000, uvm2019): an amap over an optional uobj.
public sealed partial class AddressSpace
{
    /// <summary>UVM: the anon in this entry's amap slot, or the uobj's page (clean) when there is none.</summary>
    EvictResult EvictAnon(VmMapEntry e, ulong va)
    {
        if (e.aref_amap is not { } amap) return EvictResult.Clean;
        lock (amap.am_lock)
        {
            var anon = amap.am_anon[e.SlotOf(va)];
            if (anon == null) return EvictResult.Clean;
            switch (anon.Content)
            {
                case PageContent.Swap when !mustSave.Contains(va >> Vm.PageShift):
                case PageContent.Zero:
                    return EvictResult.Clean;
                case PageContent.Swap:
                case PageContent.InSpaces:
                    break;
                default:
                    return EvictResult.Busy;
            }
            if (anon.an_id == 0) anon.an_id = Vm.NextAnonId();
            long slot = PageOut(va, SwapOwnerKind.Anon, anon.an_id, 0);
            if (slot <= 0) return slot < 0 ? EvictResult.Busy : EvictResult.NoSwap;
            mustSave.Remove(va >> Vm.PageShift);
            if (slot > int.MaxValue)
            {
                Vm.FreeSwapSlot(slot);
                return EvictResult.NoSwap;
            }
            Vm.FreeSwapSlot(anon.an_swslot);
            anon.an_swslot = (int)slot;
            anon.Content = PageContent.Swap;
            return EvictResult.Evicted;
        }
    }

    // ---- UVM map layer (caller holds MapLock) ----

    /// <summary>
    /// amap_copy as uvmfault_amapcopy asks for it (the page at <paramref name="va"/>):
    /// without an amap, a new empty one, for just a chunk of the entry around the fault
    /// when the entry is large and <paramref name="canchunk"/>; with an amap this entry
    /// alone uses, just clear needs_copy; otherwise a private copy of the slots, each
    /// anon gaining a reference. Returns whether an amap was made.
    /// </summary>
    internal bool AmapCopy(VmMapEntry e, ulong va, bool canchunk)
    {
        Bump();
        var src = e.aref_amap;
        if (src == null)
        {
            if (canchunk && e.Pages >= Amap.Large)
            {
                const ulong chunk = (ulong)Amap.Chunk * PageSize;
                ulong s = va / chunk * chunk, t = s + chunk, end = e.End;
                if (s > e.Start) Clip(s);   // e keeps the head; the chunk starts a new entry
                if (t < end) Clip(t);
                e = FindEntry(va)!;
            }
            var amap = new Amap((int)e.Pages, null);
            amap.Ref(0, (int)e.Pages);
            e.aref_amap = amap;
            e.aref_pageoff = 0;
            e.needs_copy = false;
            return true;
        }
        lock (src.am_lock)
        {
            if (src.am_ref == 1)
            {
                e.needs_copy = false;
                return false;
            }
            int n = (int)e.Pages, off = e.aref_pageoff;
            var amap = new Amap(n, src.am_lock);
            for (int i = 0; i < n; i++)
            {
                var anon = src.am_anon[off + i];
                if (anon == null) continue;
                anon.an_ref++;
                amap.Add(i, anon, replace: false);
            }
            amap.Ref(0, n);
            src.Unref(off, n, this);
            e.aref_amap = amap;
            e.aref_pageoff = 0;
            e.needs_copy = false;
            return true;
        }
    }

    /// <summary>
    /// Remove's UVM side: this space's anons in [s, t) leave its amap (copying a shared
    /// amap first), so the uobj (the file) or zero fill shows through again.
    /// </summary>
    void ForgetAnons(VmMapEntry e, ulong s, ulong t)
    {
        if (e.aref_amap is not { } amap) return;
        int slot = e.SlotOf(s), n = (int)((t - s) >> Vm.PageShift);
        lock (amap.am_lock)
            if (!amap.Any(slot, n)) return;
        if (e.needs_copy) AmapCopy(e, s, canchunk: false);
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
                AnonUnref(anon);
            }
        }
    }

    /// <summary>uvm_analloc: a fresh anon with one reference, from this space's free list when it can.</summary>
    internal Anon AnonAlloc(PageContent content)
    {
        Anon a;
        if (anonFreeCount > 0)
        {
            a = anonFree[--anonFreeCount];
            anonFree[anonFreeCount] = null!;
        }
        else a = new Anon();
        a.an_ref = 1;
        a.an_swslot = 0;
        a.an_id = 0;
        a.Content = content;
        Vm.AnonAllocated();
        return a;
    }

    /// <summary>Drop one reference; the last one frees the anon (uvm_anfree). Caller holds the anon's amap lock.</summary>
    internal void AnonUnref(Anon anon)
    {
        if (--anon.an_ref > 0) return;
        if (anon.an_ref < 0) throw new InvalidOperationException("anon reference count below zero");
        Vm.AnonFreed();
        anon.Content = PageContent.None;
        Vm.FreeSwapSlot(anon.an_swslot);
        anon.an_swslot = 0;
        anon.an_id = 0;
        if (anonFreeCount == anonFree.Length)
            Array.Resize(ref anonFree, Math.Max(64, anonFree.Length * 2));
        anonFree[anonFreeCount++] = anon;
    }
}
