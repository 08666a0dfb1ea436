using System.Text;

namespace Lab.Vm.Mach;

/// <summary>
/// The Mach map layer (FreeBSD, DragonFly): each entry points at the first object of a
/// chain of shadows over a vnode or anonymous object. Every member is called with the
/// space's map lock held; object locks are taken top down.
/// </summary>
internal sealed class ChainMap : IMapLayer
{
    public static readonly ChainMap Instance = new();

    ChainMap() { }

    /// <summary>A new anonymous object of the entry's size.</summary>
    public void MapAnonymous(AddressSpace space, VmMapEntry e) =>
        e.Object = space.Vm.AllocateAnonymous((long)((e.End - e.Start) >> Vm.PageShift));

    /// <summary>vm_map_copy_entry collapses the object it is about to share, so the chains the two spaces inherit are as short as they can be.</summary>
    public void BeforeFork(AddressSpace space, VmMapEntry e)
    {
        if (!e.Shared && e.Object != null) space.Vm.Collapse(e.Object, space.Counters);
    }

    public int Depth(VmMapEntry e) => e.Object!.ChainDepth;

    public void Describe(VmMapEntry e, StringBuilder sb) => sb.Append($" depth {e.Object!.ChainDepth}");

    /// <summary>The first page the chain holds at <paramref name="va"/> says whether its bytes are only in swap (paged out, or resident clean: the lab keeps its bytes in the slot).</summary>
    public bool IsPagedOut(AddressSpace space, VmMapEntry e, ulong va)
    {
        long pindex = e.PindexOf(va);
        for (var o = e.Object; o != null;)
        {
            VmObject? next;
            lock (o.Lock)
            {
                if (o.Lookup(pindex, out var st) != PageLookup.Absent) return st.Content is PageContent.Swap or PageContent.SwapClean;
                next = o.backing_object;
                pindex += o.backing_object_offset;
            }
            o = next;
        }
        return false;
    }

    /// <summary>Mach: the shallowest page of the chain at <paramref name="va"/> is the one installed here.</summary>
    public EvictResult Evict(AddressSpace space, VmMapEntry e, ulong va)
    {
        space.AssertMapLocked();
        while (true)
        {
            var o = e.Object!;
            long p = e.PindexOf(va);
            bool restart = false;
            while (!restart)
            {
                VmObject? next;
                long off;
                lock (o.Lock)
                {
                    if (o.dead) { restart = true; continue; }   // collapsed under us: its pages went up
                    if (o.pages.TryGetValue(p, out var st))
                    {
                        if (st.Busy) return EvictResult.Busy;
                        if (o.Kind == VmObjectKind.Anonymous) return EvictObjectPage(space, o, p, st, va);
                    }
                    // A vnode page: the installed copy equals the file.
                    if (o.Kind == VmObjectKind.Vnode) return EvictResult.Clean;
                    next = o.backing_object;
                    off = o.backing_object_offset;
                }
                // No object holds it: a fault would give the same bytes again (zero or file).
                if (next == null) return EvictResult.Clean;
                p += off;
                o = next;
            }
        }
    }

    /// <summary>One anonymous object's page. Caller holds the map lock and <paramref name="o"/>'s lock.</summary>
    static EvictResult EvictObjectPage(AddressSpace space, VmObject o, long p, PageState st, ulong va)
    {
        System.Diagnostics.Debug.Assert(Monitor.IsEntered(space.MapLock) && Monitor.IsEntered(o.Lock), "caller holds the map lock and the object's lock");
        bool clean = st.Content == PageContent.SwapClean;
        var need = AddressSpace.EvictNeeds(clean ? PageContent.Swap : st.Content, space.MustSave(va));
        if (need == EvictResult.Clean && clean)
            o.pages[p] = new PageState(PageContent.Swap, swapped: st.Swapped);   // its slot is current: paged out, no I/O
        if (need != EvictResult.Evicted) return need;
        long slot = space.PageOut(va, SwapOwnerKind.Object, o.Id, p);
        if (slot <= 0) return slot < 0 ? EvictResult.Busy : EvictResult.NoSwap;
        space.Vm.FreeSwapSlot(o.TakeSwapSlot(p));   // a stale copy (written since) goes
        o.SetSwapSlot(p, slot);
        o.pages[p] = new PageState(PageContent.Swap, swapped: true);
        return EvictResult.Evicted;
    }

    /// <summary>
    /// Remove's model side for a private entry: the space's own pages in [s, t) are
    /// discarded, and where an object deeper in the chain would now show through with
    /// older anonymous content, a marker says what Linux gives instead (zeros for
    /// anonymous memory, the file for a private file mapping).
    /// </summary>
    public void Forget(AddressSpace space, VmMapEntry e, ulong s, ulong t)
    {
        space.AssertMapLocked();
        long rel0 = (long)((s - e.Start) >> Vm.PageShift);
        long n = (long)((t - s) >> Vm.PageShift);
        if (e.needs_copy)
        {
            // The first object is shared with another space: hiding needs a private shadow.
            if (!AnonymousBelow(e.Object!, e.Offset + rel0, n)) return;
            if (space.Vm.Shadow(e)) Interlocked.Increment(ref space.Counters.shadows_created);
        }
        var first = e.Object!;
        if (first.Kind == VmObjectKind.Vnode) return;
        long p0 = e.Offset + rel0;
        lock (first.Lock)
        {
            if (n > first.pages.Count)
            {
                foreach (var kv in first.pages)
                    if (kv.Key >= p0 && kv.Key < p0 + n && !kv.Value.Busy) DropPage(space, first, kv.Key, kv.Value);
            }
            else
            {
                for (long p = p0; p < p0 + n; p++)
                    if (first.pages.TryGetValue(p, out var st) && !st.Busy) DropPage(space, first, p, st);
            }
        }
        var below = first.BackingObject;
        if (below == null) return;
        var marker = new PageState(below.Bottom(0).Object.Kind == VmObjectKind.Vnode ? PageContent.File : PageContent.Zero);
        for (long p = p0; p < p0 + n; p++)
        {
            if (!AnonymousBelow(first, p, 1, skipFirst: true)) continue;
            lock (first.Lock)
                if (!first.pages.ContainsKey(p)) first.pages[p] = marker;
        }
    }

    /// <summary>A page leaves its object, and its swap slot with it. Caller holds the object's lock.</summary>
    static void DropPage(AddressSpace space, VmObject o, long p, PageState st)
    {
        System.Diagnostics.Debug.Assert(Monitor.IsEntered(o.Lock), "caller holds the object's lock");
        o.pages.Remove(p);
        if (st.Swapped) space.Vm.FreeSwapSlot(o.TakeSwapSlot(p));
    }

    /// <summary>
    /// Whether an anonymous object in the chain from <paramref name="o"/> (after it, with
    /// <paramref name="skipFirst"/>) holds a page in [p, p+n). <paramref name="o"/> is an
    /// entry's object, which cannot be collapsed while the map is locked; an object
    /// below it that a collapse kills meanwhile sends the walk back to the start.
    /// </summary>
    static bool AnonymousBelow(VmObject o, long p, long n, bool skipFirst = false)
    {
    restart:
        long q = p;
        for (VmObject? x = o; x != null; )
        {
            VmObject? next;
            lock (x.Lock)
            {
                if (x.dead) goto restart;
                if (x.Kind == VmObjectKind.Anonymous && !(skipFirst && x == o))
                {
                    if (n > x.pages.Count)
                    {
                        foreach (var k in x.pages.Keys) if (k >= q && k < q + n) return true;
                    }
                    else
                    {
                        for (long r = q; r < q + n; r++) if (x.pages.ContainsKey(r)) return true;
                    }
                }
                next = x.backing_object;
                q += x.backing_object_offset;
            }
            x = next;
        }
        return false;
    }
}
