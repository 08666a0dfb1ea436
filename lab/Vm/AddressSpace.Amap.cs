using Lab.Vm.Uvm;

namespace Lab.Vm;

// The UVM parts that belong to the space: amap_copy (a map change) and the anon free list.
// The rest of the UVM map layer is Uvm/AmapMap.cs.
public sealed partial class AddressSpace
{
    // Freed anons kept for reuse, so promotions allocate nothing in steady state.
    // A stack in an array rather than a link in each anon: the link would cost every
    // live anon 8 bytes. It grows to the most anons this space ever freed at once and
    // is kept, so refaulting a range after MADV_DONTNEED allocates nothing.
    Anon[] anonFree = [];
    int anonFreeCount;

    /// <summary>
    /// amap_copy as uvmfault_amapcopy asks for it (the page at <paramref name="va"/>):
    /// without an amap, a new empty one, for just a chunk of the entry around the fault
    /// when the entry is large and <paramref name="canchunk"/>; with an amap this entry
    /// alone uses, just clear needs_copy; otherwise a private copy of the slots, each
    /// anon gaining a reference. Returns whether an amap was made.
    /// </summary>
    internal bool AmapCopy(VmMapEntry e, ulong va, bool canchunk)
    {
        AssertMapLocked();
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
            lock (amap.am_lock) amap.Ref(0, (int)e.Pages);   // not shared yet; the lock keeps the contract
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
