namespace Lab.Vm;

/// <summary>
/// The machine-independent VM of one daemon: the vnode object table, object ids and
/// the address spaces it created. There is no global lock on the fault path: the
/// vnode table lock is taken only when a vnode object is created or loses its last
/// reference.
/// </summary>
public sealed class Vm
{
    /// <summary>The only page size the lab supports (x86-64 base pages).</summary>
    public const int PageSize = 4096;
    internal const int PageShift = 12;

    // Keyed by the vnode itself, never by its inode number: a deleted file's number is handed to
    // the next file made, and its object must not serve that file's pages.
    readonly Dictionary<IVnode, VmObject> vnodeObjects = new(ReferenceEqualityComparer.Instance);
    long nextId;
    int objectsAlive;
    long anonsAlive;

    long swapSlotsInUse;

    /// <summary>
    /// The swap device anonymous pages are paged out to; null: no swap (evicting a dirty
    /// anonymous page then gives <see cref="EvictResult.NoSwap"/>). Set it before the first
    /// eviction and leave it: slots already handed out are freed through it.
    /// </summary>
    public ISwapDevice? Swap { get; set; }

    /// <summary>Swap slots held by pages and anons now; back to 0 when everything that paged out is gone.</summary>
    public long SwapSlotsInUse => Interlocked.Read(ref swapSlotsInUse);

    /// <summary>Write one page to the device; 0 when there is none or it is full.</summary>
    internal long SwapWrite(SwapOwnerKind kind, long ownerId, long ownerIndex, ReadOnlySpan<byte> page)
    {
        if (Swap is not { } dev) return 0;
        long slot = dev.Write(kind, ownerId, ownerIndex, page);
        if (slot > 0) Interlocked.Increment(ref swapSlotsInUse);
        return slot;
    }

    /// <summary>Give a slot back (0: nothing). Slots set by tests without a device are only forgotten.</summary>
    internal void FreeSwapSlot(long slot)
    {
        if (slot <= 0 || Swap is not { } dev) return;
        dev.Free(slot);
        Interlocked.Decrement(ref swapSlotsInUse);
    }

    int nextAnonId;

    /// <summary>A name for an anon's swap rows (a label only, so wrapping is harmless).</summary>
    internal int NextAnonId()
    {
        int id = Interlocked.Increment(ref nextAnonId);
        return id != 0 ? id : Interlocked.Increment(ref nextAnonId);
    }

    /// <summary>Tests: the next this-many page allocations for anons fail (a RAM shortage; UVM designs wait and restart).</summary>
    internal int FailPageAllocs;

    /// <summary>The vnode object of <paramref name="vnode"/>, created on first use (with no reference).</summary>
    public VmObject VnodeObject(IVnode vnode)
    {
        ArgumentNullException.ThrowIfNull(vnode);
        lock (vnodeObjects) return VnodeObjectLocked(vnode);
    }

    VmObject VnodeObjectLocked(IVnode vnode)
    {
        if (!vnodeObjects.TryGetValue(vnode, out var o))
        {
            o = new VmObject(Interlocked.Increment(ref nextId), VmObjectKind.Vnode, 0, vnode);
            vnodeObjects.Add(vnode, o);
            vnode.ObjectCreated();
        }
        return o;
    }

    public AddressSpace CreateSpace(IPmap pmap, IResolver resolver)
    {
        ArgumentNullException.ThrowIfNull(pmap);
        ArgumentNullException.ThrowIfNull(resolver);
        if (pmap.PageSize != PageSize)
            throw new ArgumentException($"pmap page size {pmap.PageSize}, the VM supports {PageSize}", nameof(pmap));
        return new AddressSpace(this, pmap, resolver);
    }

    /// <summary>Objects with at least one reference (entries, shadows, faults in progress).</summary>
    public int ObjectsAlive => Volatile.Read(ref objectsAlive);

    /// <summary>UVM anons with at least one reference (amap slots, faults in progress).</summary>
    public long AnonsAlive => Interlocked.Read(ref anonsAlive);

    internal void AnonAllocated() => Interlocked.Increment(ref anonsAlive);
    internal void AnonFreed() => Interlocked.Decrement(ref anonsAlive);

    /// <summary>A new anonymous (OBJT_DEFAULT) object with one reference.</summary>
    internal VmObject AllocateAnonymous(long sizePages)
    {
        var o = new VmObject(Interlocked.Increment(ref nextId), VmObjectKind.Anonymous, sizePages, null);
        o.ref_count = 1;
        Interlocked.Increment(ref objectsAlive);
        return o;
    }

    /// <summary>The vnode object of <paramref name="vnode"/> with one more reference.</summary>
    internal VmObject ReferenceVnode(IVnode vnode)
    {
        lock (vnodeObjects)
        {
            var o = VnodeObjectLocked(vnode);
            Reference(o);
            return o;
        }
    }

    /// <summary>vm_object_reference. The caller holds a reference already, or the vnode table lock.</summary>
    internal void Reference(VmObject o)
    {
        lock (o.Lock)
        {
            if (o.dead) throw new InvalidOperationException($"reference to dead {o}");
            if (o.ref_count++ == 0) Interlocked.Increment(ref objectsAlive);
        }
    }

    /// <summary>
    /// Whether deallocation, fork and copy-on-write collapse shadow chains (on by
    /// default). Tests turn it off to reach the copy-on-write move, which collapse
    /// otherwise leaves nothing to do; the benchmark turns it off to measure deep chains.
    /// </summary>
    public bool CollapseEnabled { get; set; } = true;

    /// <summary>
    /// vm_object_deallocate: drop one reference; an object that loses its last one is
    /// terminated and releases its backing object in turn. An anonymous object left
    /// with one reference, held by its only shadow, is collapsed into that shadow.
    /// <paramref name="counters"/> (the space whose action this is) counts the collapses.
    /// </summary>
    internal void Deallocate(VmObject? o, VmCounters? counters = null)
    {
        while (o != null)
        {
            VmObject? next, shadow = null;
            lock (o.Lock)
            {
                if (o.ref_count <= 0) throw new InvalidOperationException($"deallocate of unreferenced {o}");
                if (--o.ref_count > 0)
                {
                    // The only reference left is the only shadow's: nobody else can see
                    // this object's pages any more, so they can join the shadow's.
                    if (o.ref_count == 1 && o.shadow_count == 1 && o.Kind == VmObjectKind.Anonymous && CollapseEnabled)
                        shadow = o.shadow_first;
                    next = null;
                }
                else
                {
                    Interlocked.Decrement(ref objectsAlive);
                    if (o.Kind == VmObjectKind.Vnode)
                    {
                        // The object dies: read-ahead pages no space installed were wasted.
                        if (o.readAhead is { Count: > 0 } ra)
                        {
                            if (counters != null) Interlocked.Add(ref counters.read_ahead_wasted, ra.Count);
                            ra.Clear();
                        }
                        break;
                    }
                    o.dead = true;
                    next = o.backing_object;
                    o.backing_object = null;
                    o.pages.Clear();
                    o.FreeAllSwap(this);
                    o.WakeupBusy();   // nobody should sleep here (a busy page's owner holds a reference), but never strand one
                }
            }
            if (shadow != null)
            {
                Collapse(shadow, counters);
                return;
            }
            if (next == null) return;
            lock (next.Lock) next.UnlinkShadow(o);
            o = next;
        }
        if (o is { Kind: VmObjectKind.Vnode, Vnode: { } vn })
        {
            bool gone = false;
            // Re-check under the table lock: MapFile may have revived it meanwhile.
            lock (vnodeObjects)
                lock (o.Lock)
                    if (o.ref_count == 0 && vnodeObjects.TryGetValue(vn, out var cur) && cur == o)
                    {
                        vnodeObjects.Remove(vn);
                        o.dead = true;
                        gone = true;
                    }
            if (gone) vn.ObjectTerminated(); // outside the locks: the file layer may write back and close
        }
    }

    /// <summary>
    /// vm_object_collapse: shorten <paramref name="obj"/>'s chain while its backing object
    /// is anonymous and either referenced by <paramref name="obj"/> alone (collapse: its
    /// pages that obj lacks move up, it leaves the chain and is freed) or entirely hidden
    /// by obj's pages (bypass: obj skips it, which drops one of its references).
    /// Takes only object locks, top down; never a map lock, so it never waits for
    /// another space. Content never changes: the page a walk from obj finds stays the
    /// same at every pindex (invariant 7).
    /// </summary>
    internal void Collapse(VmObject obj, VmCounters? counters)
    {
        if (!CollapseEnabled) return;
        while (true)
        {
            VmObject? bypassed = null;
            lock (obj.Lock)
            {
                if (obj.dead || obj.Kind != VmObjectKind.Anonymous) return;
                var backing = obj.backing_object;
                if (backing == null || backing.Kind != VmObjectKind.Anonymous) return;
                lock (backing.Lock)
                {
                    if (backing.dead) return;
                    if (backing.ref_count == 1)
                    {
                        if (!CollapseLocked(obj, backing)) return;
                        if (counters != null) Interlocked.Increment(ref counters.collapses);
                    }
                    else
                    {
                        if (!AllShadowed(obj, backing)) return;
                        BypassLocked(obj, backing);
                        bypassed = backing;
                    }
                }
            }
            if (bypassed != null)
            {
                if (counters != null) Interlocked.Increment(ref counters.bypasses);
                Deallocate(bypassed, counters);   // obj's reference; may collapse it into its last shadow
            }
        }
    }

    /// <summary>
    /// Move <paramref name="backing"/>'s pages that <paramref name="obj"/> does not have
    /// into obj, splice backing out of the chain and free it. Both locks are held.
    /// Returns false (nothing changed) when backing has a busy page.
    /// </summary>
    bool CollapseLocked(VmObject obj, VmObject backing)
    {
        // A busy page in backing belongs to a fault using it as its first object; such a
        // fault holds a reference, so with ref_count 1 there is none. Never move one anyway.
        foreach (var kv in backing.pages)
            if (kv.Value.Busy) return false;
        long off = obj.backing_object_offset;
        foreach (var (s, st) in backing.pages)
        {
            long q = s - off;
            if (q < 0 || q >= obj.size) continue;   // obj cannot see it (its slot is freed below)
            if (obj.pages.TryGetValue(q, out var have))
            {
                // obj's own page hides backing's, except a placeholder: the fault that
                // owns it is walking down and will find this page here when it retries.
                if (have.Content == PageContent.None)
                {
                    obj.pages[q] = new PageState(st.Content, busy: true, swapped: st.Swapped);
                    if (st.Swapped) obj.SetSwapSlot(q, backing.TakeSwapSlot(s));
                }
                continue;
            }
            obj.pages[q] = st;
            if (st.Swapped) obj.SetSwapSlot(q, backing.TakeSwapSlot(s));   // the slot moves with the page
        }
        backing.FreeAllSwap(this);   // the pages nobody can see any more
        var below = backing.backing_object;
        if (below != null)
        {
            lock (below.Lock)
            {
                below.UnlinkShadow(backing);
                below.LinkShadow(obj);   // backing's reference on below becomes obj's
            }
        }
        else obj.shadow_next = obj.shadow_prev = null;
        obj.backing_object = below;
        obj.backing_object_offset = off + backing.backing_object_offset;
        // backing is gone. It keeps its backing_object (without a reference) so that a
        // walk that read a page here just before the collapse can still find its file.
        backing.pages.Clear();
        backing.ref_count = 0;
        backing.shadow_first = null;
        backing.shadow_count = 0;
        backing.dead = true;
        backing.WakeupBusy();
        Interlocked.Decrement(ref objectsAlive);
        return true;
    }

    /// <summary>Whether every page of <paramref name="backing"/> that <paramref name="obj"/> can see is hidden by a page of obj. Both locks held.</summary>
    static bool AllShadowed(VmObject obj, VmObject backing)
    {
        long off = obj.backing_object_offset;
        foreach (var (s, st) in backing.pages)
        {
            // A placeholder becomes a page equal to what lies below it, which obj sees
            // the same way after the bypass.
            if (st.Content == PageContent.None) continue;
            long q = s - off;
            if (q < 0 || q >= obj.size) continue;
            if (!obj.pages.TryGetValue(q, out var have) || have.Content == PageContent.None) return false;
        }
        return true;
    }

    /// <summary>Point <paramref name="obj"/> past <paramref name="backing"/>. Both locks held; the caller drops obj's reference on backing afterwards.</summary>
    static void BypassLocked(VmObject obj, VmObject backing)
    {
        var below = backing.backing_object;
        backing.UnlinkShadow(obj);
        if (below != null)
        {
            lock (below.Lock)
            {
                below.ref_count++;   // backing holds one, so it is alive
                below.LinkShadow(obj);
            }
        }
        obj.backing_object = below;
        obj.backing_object_offset += backing.backing_object_offset;
    }

    /// <summary>
    /// After a copy-on-write from <paramref name="first"/>'s direct backing object: the
    /// collapse that deallocation could not do, or a bypass once first hides all of its
    /// backing object. The scan for a bypass runs only when first holds at least as many
    /// pages as its backing object, so a fault pays for it rarely.
    /// </summary>
    internal void CollapseAfterCow(VmObject first, VmCounters counters)
    {
        if (!CollapseEnabled) return;
        VmObject? backing;
        int firstCount;
        lock (first.Lock)
        {
            backing = first.backing_object;
            firstCount = first.pages.Count;
        }
        if (backing == null || backing.Kind != VmObjectKind.Anonymous) return;
        bool worth;
        lock (backing.Lock)
            worth = !backing.dead && (backing.ref_count == 1 || firstCount >= backing.pages.Count);
        if (worth) Collapse(first, counters);
    }

    /// <summary>
    /// vm_object_shadow as called by vm_map_lookup for a needs_copy entry: put a new
    /// anonymous object in front of the entry's object. Not done when the object is
    /// anonymous and this entry holds its only reference (nobody else can see it).
    /// Caller holds the entry's map lock. Returns whether a shadow was made.
    /// </summary>
    internal bool Shadow(VmMapEntry entry)
    {
        var source = entry.Object!;
        lock (source.Lock)
        {
            if (source.Kind == VmObjectKind.Anonymous && source.ref_count == 1)
            {
                entry.needs_copy = false;
                return false;
            }
        }
        var shadow = AllocateAnonymous(entry.Pages);
        shadow.backing_object = source;            // inherits the entry's reference on source
        shadow.backing_object_offset = entry.Offset;
        lock (source.Lock) source.LinkShadow(shadow);
        entry.Object = shadow;
        entry.Offset = 0;
        entry.needs_copy = false;
        return true;
    }
}
