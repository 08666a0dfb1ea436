namespace Lab.Vm;

/// <summary>
/// Where the bytes of a resident page are. The lab keeps metadata, not a second
/// copy: each page's content has exactly one authoritative home.
/// </summary>
internal enum PageContent : byte
{
    /// <summary>A busy placeholder (first_m) with no content yet.</summary>
    None = 0,
    /// <summary>In the memory of the address spaces that have the page installed.</summary>
    InSpaces,
    /// <summary>Known to be zero; not yet writable anywhere (a read-only zero fill, or a hole left by Remove).</summary>
    Zero,
    /// <summary>Equal to the page of the vnode at the bottom of this object's chain (left by Remove on a private file mapping).</summary>
    File,
    /// <summary>A vnode object's page: valid in the file's page cache.</summary>
    Cache,
    /// <summary>
    /// The page's swap slot holds its current bytes (it was evicted, or swapped in and not
    /// written since). Spaces may also have it installed, read-only, so a write is seen.
    /// Mach designs: paged out, not resident: a fault on it is a swap pager read.
    /// </summary>
    Swap,
    /// <summary>
    /// Mach designs: resident and clean, brought in by the swap pager (the faulting page or
    /// its read window) and not written since. Its slot holds the same bytes, so an install
    /// reads the slot (the lab keeps no page frames) and a page-out needs no I/O.
    /// </summary>
    SwapClean,
}

/// <summary>Per-page metadata: three bytes in a per-object table, no object per page.</summary>
internal struct PageState
{
    public PageContent Content;
    public bool Busy;
    /// <summary>
    /// The page holds a swap slot (in <see cref="VmObject.swapSlots"/>). Current when the
    /// content is <see cref="PageContent.Swap"/>; stale when the page was written since
    /// (DragonFly keeps it until the next page-out). FreeBSD frees it when the page is dirtied.
    /// </summary>
    public bool Swapped;

    public PageState(PageContent content, bool busy = false, bool swapped = false)
    {
        Content = content;
        Busy = busy;
        Swapped = swapped;
    }
}

internal enum PageLookup { Absent, Busy, Found }

/// <summary>
/// A VM object (struct vm_object): a set of pages by pindex, optionally shadowing a
/// backing object. Anonymous objects hold page metadata in <see cref="pages"/>;
/// vnode objects defer residency to the file's page cache (<see cref="IVnode.IsResident"/>)
/// and use <see cref="pages"/> only for busy entries while a pager call is in flight.
/// All mutable state is guarded by <see cref="Lock"/>; lock order is from a
/// first object down its chain, never upwards (use TryEnter to go up).
/// </summary>
public sealed class VmObject
{
    internal readonly object Lock = new();
    internal readonly Dictionary<long, PageState> pages = new();
#pragma warning disable IDE1006 // BSD names on purpose
    internal long size;                        // pages (anonymous objects)
    internal VmObject? backing_object;
    internal long backing_object_offset;       // pages: pindex here + offset = pindex in backing_object
    internal int ref_count;                    // entries and shadows that point here
    internal int shadow_count;                 // objects whose backing_object is this one
    // The shadows of this object (shadow_head), as an intrusive list so that linking
    // allocates nothing: shadow_first here, the siblings' links in each shadow.
    // Guarded by this object's lock (the shadows' links by their backing object's).
    internal VmObject? shadow_first;
    internal VmObject? shadow_next, shadow_prev;
#pragma warning restore IDE1006
    internal bool dead;                        // OBJ_DEAD: terminated, must not be used
    // Swap slots by pindex, only for objects that ever paged out (the swap pager's swblk
    // table): most objects never do, so they pay one null field and no per-page bytes.
    internal Dictionary<long, long>? swapSlots;
    // Vnode objects: pages the pager read ahead that no space has installed yet
    // (read_ahead_used / read_ahead_wasted). Made at the first read-ahead; adding and
    // removing reuse its storage, so steady-state faults allocate nothing.
    internal HashSet<long>? readAhead;
    int waiters;                               // threads sleeping for a busy page
    /// <summary>Threads sleeping for a busy page now (tests).</summary>
    internal int Waiters { get { lock (Lock) return waiters; } }
    /// <summary>
    /// A vnode object written through a shared mapping (NetBSD's write-mapped-dirty vnode):
    /// until then uvm2019 enters its pages read-only (UVM_OBJ_NEEDS_WRITEFAULT). The lab
    /// never cleans it again (its write-back does not write-protect the mappings).
    /// </summary>
    internal bool WriteMapDirty;
    /// <summary>
    /// FreeBSD's OBJ_MIGHTBEDIRTY for a vnode object: a page of it was entered writable (a
    /// read fault on a writable shared mapping too; 000: 184–196, 940). Until then FreeBSD's
    /// soft fast path is closed to writable mappings of it (000: 357–366). Never cleared: the
    /// lab's write-back does not clean objects (vm_object_page_clean, outside the seed).
    /// </summary>
    internal bool MightBeDirty;

    internal VmObject(long id, VmObjectKind kind, long size, IVnode? vnode)
    {
        Id = id;
        Kind = kind;
        this.size = size;
        Vnode = vnode;
    }

    /// <summary>Unique within the <see cref="Vm"/>; shown by DescribeMaps.</summary>
    public long Id { get; }

    public VmObjectKind Kind { get; }

    /// <summary>The file under a vnode object; null for anonymous objects.</summary>
    public IVnode? Vnode { get; }

    /// <summary>Size in pages; a vnode object follows the file size.</summary>
    public long Size => Vnode is { } v ? (v.Size + Vm.PageSize - 1) / Vm.PageSize : size;

    public VmObject? BackingObject { get { lock (Lock) return backing_object; } }
    public long BackingObjectOffset { get { lock (Lock) return backing_object_offset; } }
    public int RefCount { get { lock (Lock) return ref_count; } }
    public int ShadowCount { get { lock (Lock) return shadow_count; } }
    public bool IsDead { get { lock (Lock) return dead; } }

    /// <summary>Resident pages held by this object in the model (anonymous objects; 0 for vnode objects, whose pages are the file's).</summary>
    public int ResidentCount
    {
        get
        {
            lock (Lock)
            {
                if (Kind == VmObjectKind.Vnode) return 0;
                int n = 0;
                foreach (var kv in pages) if (kv.Value.Content != PageContent.None) n++;
                return n;
            }
        }
    }

    /// <summary>Whether the object holds a (non-placeholder) page at <paramref name="pindex"/>.</summary>
    public bool HasPage(long pindex)
    {
        lock (Lock) return Lookup(pindex, out _) == PageLookup.Found;
    }

    /// <summary>Objects from this one down to the end of its chain.</summary>
    public int ChainDepth
    {
        get
        {
            int n = 0;
            for (var o = this; o != null; o = o.BackingObject) n++;
            return n;
        }
    }

    /// <summary>
    /// The object at the bottom of this one's chain (the vnode object under a private file
    /// mapping, or the anonymous object at the end) and the pindex there of this object's
    /// page <paramref name="pindex"/>. The one walk to the bottom: each object's lock is held
    /// while its link and offset are read, never two at once, so any caller may use it.
    /// </summary>
    internal (VmObject Object, long Pindex) Bottom(long pindex)
    {
        var o = this;
        while (true)
        {
            VmObject? b;
            long off;
            lock (o.Lock) { b = o.backing_object; off = o.backing_object_offset; }
            if (b == null) return (o, pindex);
            pindex += off;
            o = b;
        }
    }

    /// <summary>Debug builds: the contract "caller holds <see cref="Lock"/>" is checked.</summary>
    [System.Diagnostics.Conditional("DEBUG")]
    void AssertLocked() => System.Diagnostics.Debug.Assert(Monitor.IsEntered(Lock), "caller holds the object's lock");

    /// <summary>vm_page_lookup. Caller holds <see cref="Lock"/>.</summary>
    internal PageLookup Lookup(long pindex, out PageState st)
    {
        AssertLocked();
        if (pages.TryGetValue(pindex, out st))
            return st.Busy ? PageLookup.Busy : PageLookup.Found;
        if (Vnode is { } v && pindex < Size && v.IsResident(pindex))
        {
            st = new PageState(PageContent.Cache);
            return PageLookup.Found;
        }
        return PageLookup.Absent;
    }

    /// <summary>Sleep until the page at <paramref name="pindex"/> is not busy. Caller holds <see cref="Lock"/> (released while waiting).</summary>
    internal void SleepWhileBusy(long pindex)
    {
        AssertLocked();
        waiters++;
        try
        {
            while (pages.TryGetValue(pindex, out var st) && st.Busy)
                Monitor.Wait(Lock);
        }
        finally { waiters--; }
    }

    /// <summary>Wake sleepers after a page stopped being busy. Caller holds <see cref="Lock"/>.</summary>
    internal void WakeupBusy()
    {
        AssertLocked();
        if (waiters > 0) Monitor.PulseAll(Lock);
    }

    /// <summary>Clear the busy bit (or drop a bare placeholder). Caller holds <see cref="Lock"/>.</summary>
    internal void Unbusy(long pindex)
    {
        AssertLocked();
        if (pages.TryGetValue(pindex, out var st) && st.Busy)
        {
            if (st.Content == PageContent.None) pages.Remove(pindex);
            else pages[pindex] = new PageState(st.Content, swapped: st.Swapped);
            WakeupBusy();
        }
    }

    /// <summary>Link <paramref name="shadow"/> into this object's shadow list. Caller holds <see cref="Lock"/>.</summary>
    internal void LinkShadow(VmObject shadow)
    {
        AssertLocked();
        shadow.shadow_prev = null;
        shadow.shadow_next = shadow_first;
        if (shadow_first != null) shadow_first.shadow_prev = shadow;
        shadow_first = shadow;
        shadow_count++;
    }

    /// <summary>Unlink <paramref name="shadow"/> from this object's shadow list. Caller holds <see cref="Lock"/>.</summary>
    internal void UnlinkShadow(VmObject shadow)
    {
        AssertLocked();
        if (shadow.shadow_prev != null) shadow.shadow_prev.shadow_next = shadow.shadow_next;
        else shadow_first = shadow.shadow_next;
        if (shadow.shadow_next != null) shadow.shadow_next.shadow_prev = shadow.shadow_prev;
        shadow.shadow_next = shadow.shadow_prev = null;
        shadow_count--;
    }

    /// <summary>The slot of the page at <paramref name="pindex"/> (0: none). Caller holds <see cref="Lock"/>.</summary>
    internal long SwapSlot(long pindex)
    {
        AssertLocked();
        return swapSlots != null && swapSlots.TryGetValue(pindex, out var s) ? s : 0;
    }

    /// <summary>Record the slot of the page at <paramref name="pindex"/>. Caller holds <see cref="Lock"/>.</summary>
    internal void SetSwapSlot(long pindex, long slot)
    {
        AssertLocked();
        (swapSlots ??= new())[pindex] = slot;
    }

    /// <summary>Forget and return the slot of the page at <paramref name="pindex"/> (0: none). Caller holds <see cref="Lock"/>.</summary>
    internal long TakeSwapSlot(long pindex)
    {
        AssertLocked();
        return swapSlots != null && swapSlots.Remove(pindex, out var s) ? s : 0;
    }

    /// <summary>Free every slot (the object dies or is emptied). Caller holds <see cref="Lock"/>.</summary>
    internal void FreeAllSwap(Vm vm)
    {
        AssertLocked();
        if (swapSlots == null || swapSlots.Count == 0) return;
        foreach (var s in swapSlots.Values) vm.FreeSwapSlot(s);
        swapSlots.Clear();
    }

    /// <summary>Remember pages [first, first+n) as read ahead and not yet used. Caller holds <see cref="Lock"/>.</summary>
    internal void NoteReadAhead(long first, int n)
    {
        AssertLocked();
        if (n <= 0) return;
        readAhead ??= new();
        for (long p = first; p < first + n; p++) readAhead.Add(p);
    }

    /// <summary>A page was installed in a space: if it was read ahead, that read paid off (read_ahead_used).</summary>
    internal void NoteInstalled(long pindex, VmCounters counters)
    {
        if (Volatile.Read(ref readAhead) == null) return;
        bool used;
        lock (Lock) used = readAhead!.Remove(pindex);
        if (used) Interlocked.Increment(ref counters.read_ahead_used);
    }

    /// <summary>An entry mapping [first, first+n) of this vnode object goes: its read-ahead pages nobody installed were wasted.</summary>
    internal void DropReadAhead(long first, long n, VmCounters? counters)
    {
        int wasted = 0;
        lock (Lock)
        {
            if (readAhead == null || readAhead.Count == 0) return;
            if (n >= readAhead.Count)
                wasted = readAhead.RemoveWhere(p => p >= first && p < first + n);
            else
                for (long p = first; p < first + n; p++) if (readAhead.Remove(p)) wasted++;
        }
        if (wasted > 0 && counters != null) Interlocked.Add(ref counters.read_ahead_wasted, wasted);
    }

    /// <summary>Tests and the swap store to come: mark the page at <paramref name="pindex"/> as having a swap copy.</summary>
    internal bool SetSwapped(long pindex)
    {
        lock (Lock)
        {
            if (!pages.TryGetValue(pindex, out var st) || st.Content == PageContent.None) return false;
            st.Swapped = true;
            pages[pindex] = st;
            return true;
        }
    }

    /// <summary>Whether the page at <paramref name="pindex"/> has a swap copy (tests).</summary>
    internal bool IsSwapped(long pindex)
    {
        lock (Lock) return pages.TryGetValue(pindex, out var st) && st.Swapped;
    }

    public override string ToString() =>
        $"obj({Id}, {(Kind == VmObjectKind.Vnode ? "vnode" : "anon")}, {Size})";
}
