using System.Text;

namespace Lab.Vm;

/// <summary>
/// One address space (struct vmspace): the map (a sorted list of entries), the pmap,
/// the counters and the set of pages installed in the pmap. One lock per space
/// (<see cref="MapLock"/>) guards the map and the installed set; every pmap call is
/// made with it held, so a pmap never sees two calls of one space at once.
/// </summary>
public sealed class AddressSpace
{
    const int PageSize = Vm.PageSize;
    const ulong PageMask = PageSize - 1;

    internal readonly object MapLock = new();
    readonly List<VmMapEntry> entries = new();
    // Virtual page numbers present in the pmap: what Linux has, as far as we know.
    readonly HashSet<ulong> installed = new();
    ulong version;
    bool destroyed;

    internal AddressSpace(Vm vm, IPmap pmap, IResolver resolver)
    {
        Vm = vm;
        Pmap = pmap;
        Resolver = resolver;
    }

    public Vm Vm { get; }
    public VmCounters Counters { get; } = new();
    public IPmap Pmap { get; }
    public IResolver Resolver { get; }

    /// <summary>Bumped by every map change; a fault that dropped the map lock compares it.</summary>
    public ulong Version => Interlocked.Read(ref version);

    // ---- mapping operations (mmap, munmap, madvise, mremap, mprotect, fork, exit) ----

    public void MapAnon(ulong start, ulong length, Prot prot)
    {
        ulong end = CheckRange(start, length);
        if (end == start) return;
        lock (MapLock)
        {
            ThrowIfDestroyed();
            UnmapLocked(start, end);
            var e = new VmMapEntry
            {
                Start = start, End = end, Protection = prot,
                Object = Vm.AllocateAnonymous((long)((end - start) >> Vm.PageShift)),
                read_ahead = VmMapEntry.ReadAheadInit,
            };
            Insert(e);
            Bump();
        }
    }

    /// <summary>
    /// Map <paramref name="vnode"/> from byte <paramref name="offset"/>. Private: the vnode
    /// object copy-on-write (needs_copy); shared: the vnode object itself.
    /// </summary>
    public void MapFile(ulong start, ulong length, Prot prot, IVnode vnode, long offset, bool shared)
    {
        ArgumentNullException.ThrowIfNull(vnode);
        ulong end = CheckRange(start, length);
        if (offset < 0 || (offset & (long)PageMask) != 0)
            throw new ArgumentException($"file offset {offset} is not page aligned", nameof(offset));
        if (end == start) return;
        lock (MapLock)
        {
            ThrowIfDestroyed();
            UnmapLocked(start, end);
            long pindex = offset >> Vm.PageShift;
            var e = new VmMapEntry
            {
                Start = start, End = end, Protection = prot,
                Object = Vm.ReferenceVnode(vnode), Offset = pindex,
                Shared = shared, IsFile = true, needs_copy = !shared, EverWritable = (prot & Prot.Write) != 0,
                next_read = pindex, read_ahead = VmMapEntry.ReadAheadInit,
            };
            Insert(e);
            Bump();
        }
    }

    /// <summary>munmap / UFFD_EVENT_UNMAP. Idempotent; partial ranges split entries.</summary>
    public void Unmap(ulong start, ulong length)
    {
        ulong end = CheckRange(start, length);
        if (end == start) return;
        lock (MapLock)
        {
            if (destroyed) return;
            UnmapLocked(start, end);
            Bump();
        }
    }

    /// <summary>
    /// MADV_DONTNEED / UFFD_EVENT_REMOVE with Linux semantics: the pages leave the
    /// space; private anonymous pages then read zero, private file pages the file
    /// again; shared file pages stay in the file's cache.
    /// </summary>
    public void Remove(ulong start, ulong length)
    {
        ulong end = CheckRange(start, length);
        if (end == start) return;
        lock (MapLock)
        {
            if (destroyed) return;
            foreach (var e in entries)
            {
                if (e.End <= start || e.Start >= end) continue;
                if (e.Shared) continue;
                ulong s = Math.Max(start, e.Start), t = Math.Min(end, e.End);
                Forget(e, s, t);
            }
            DropInstalled(start, end);
            Bump();
        }
    }

    /// <summary>mremap move (UFFD_EVENT_REMAP): the mappings and the installed pages move.</summary>
    public void Remap(ulong from, ulong to, ulong length)
    {
        ulong fromEnd = CheckRange(from, length);
        ulong toEnd = CheckRange(to, length);
        if (fromEnd == from || from == to) return;
        if (from < toEnd && to < fromEnd)
            throw new ArgumentException("mremap source and destination overlap");
        lock (MapLock)
        {
            ThrowIfDestroyed();
            UnmapLocked(to, toEnd);
            var (i, j) = ClipRange(from, fromEnd);
            var moving = entries.GetRange(i, j - i);
            entries.RemoveRange(i, j - i);
            foreach (var e in moving)
            {
                e.Start = e.Start - from + to;
                e.End = e.End - from + to;
                Insert(e);
            }
            var pages = new List<ulong>();
            CollectInstalled(from, fromEnd, pages);
            foreach (var vpn in pages) installed.Remove(vpn);
            ulong delta = (to >> Vm.PageShift) - (from >> Vm.PageShift);
            foreach (var vpn in pages) installed.Add(vpn + delta);
            Bump();
        }
    }

    /// <summary>
    /// mremap growing a mapping (in place, or at its new address after the move): the
    /// entry that ends at start+oldLength is followed by more of the same mapping — the
    /// same file further on (private: copy-on-write again; shared: the same object), or
    /// fresh anonymous memory.
    /// </summary>
    public void Grow(ulong start, ulong oldLength, ulong newLength)
    {
        ulong oldEnd = CheckRange(start, oldLength), newEnd = CheckRange(start, newLength);
        if (newEnd <= oldEnd || oldEnd == start) return;
        lock (MapLock)
        {
            ThrowIfDestroyed();
            var e = FindEntry(oldEnd - PageSize);
            if (e == null || e.End != oldEnd) return;
            UnmapLocked(oldEnd, newEnd);
            var g = new VmMapEntry
            {
                Start = oldEnd, End = newEnd, Protection = e.Protection, Shared = e.Shared, IsFile = e.IsFile,
                EverWritable = e.EverWritable, read_ahead = VmMapEntry.ReadAheadInit,
            };
            if (e.Shared)
            {
                g.Object = e.Object; g.Offset = e.PindexOf(oldEnd);
                Vm.Reference(e.Object);
            }
            else if (e.IsFile)
            {
                // The file under the (possibly shadowed) object, at the page after the old end.
                var o = e.Object;
                long p = e.PindexOf(oldEnd);
                while (o.Vnode == null && o.BackingObject is { } b) { p += o.BackingObjectOffset; o = b; }
                g.Object = Vm.ReferenceVnode(o.Vnode!); g.Offset = p; g.needs_copy = true; g.next_read = p;
            }
            else
                g.Object = Vm.AllocateAnonymous((long)((newEnd - oldEnd) >> Vm.PageShift));
            Insert(g);
            Bump();
        }
    }

    /// <summary>mprotect: the kernel enforces it; the model records it for lookups.</summary>
    public void Protect(ulong start, ulong length, Prot prot)
    {
        ulong end = CheckRange(start, length);
        if (end == start) return;
        lock (MapLock)
        {
            ThrowIfDestroyed();
            var (i, j) = ClipRange(start, end);
            for (int k = i; k < j; k++)
            {
                entries[k].Protection = prot;
                if ((prot & Prot.Write) != 0) entries[k].EverWritable = true;
            }
            Bump();
        }
    }

    /// <summary>
    /// Before a real fork: write-protect every installed page of private writable
    /// entries (vmspace_fork's pmap_protect), so that each side's first write after
    /// the fork arrives as a write-protect fault.
    /// </summary>
    public void ForkProtect()
    {
        lock (MapLock)
        {
            ThrowIfDestroyed();
            var pages = new List<ulong>();
            foreach (var e in entries)
            {
                if (e.Shared || (e.Protection & Prot.Write) == 0) continue;
                pages.Clear();
                CollectInstalled(e.Start, e.End, pages);
                pages.Sort();
                for (int a = 0; a < pages.Count;)
                {
                    int b = a + 1;
                    while (b < pages.Count && pages[b] == pages[b - 1] + 1) b++;
                    Pmap.Protect(pages[a] << Vm.PageShift, (ulong)(b - a) << Vm.PageShift, true);
                    a = b;
                }
            }
        }
    }

    /// <summary>
    /// vmspace_fork: private entries become copy-on-write in both spaces (needs_copy;
    /// the shadows are made at the first write fault), shared entries share the object.
    /// The child starts with the parent's installed private pages, as Linux copies them.
    /// </summary>
    public AddressSpace Fork(IPmap childPmap)
    {
        var child = Vm.CreateSpace(childPmap, Resolver);
        lock (MapLock)
        {
            ThrowIfDestroyed();
            var pages = new List<ulong>();
            foreach (var e in entries)
            {
                var c = e.Clone();
                Vm.Reference(e.Object);
                if (!e.Shared)
                {
                    e.needs_copy = true;
                    c.needs_copy = true;
                    pages.Clear();
                    CollectInstalled(e.Start, e.End, pages);
                    foreach (var vpn in pages) child.installed.Add(vpn);
                }
                child.entries.Add(c);
            }
            Bump();
        }
        return child;
    }

    /// <summary>Resolve a fault at <paramref name="va"/>: counts v_vm_faults once, then the resolver.</summary>
    public FaultResult Fault(ulong va, FaultAccess access)
    {
        Interlocked.Increment(ref Counters.v_vm_faults);
        return Resolver.Fault(this, va & ~PageMask, access);
    }

    /// <summary>Shared file pages in the range (msync / munmap write-back): the daemon marks them dirty and flushes.</summary>
    public IReadOnlyList<(IVnode Vnode, long FirstPindex, long Count)> SharedRanges(ulong start, ulong length)
    {
        ulong end = CheckRange(start & ~PageMask, length + (start & PageMask));
        start &= ~PageMask;
        var list = new List<(IVnode, long, long)>();
        lock (MapLock)
        {
            foreach (var e in entries)
            {
                if (!e.Shared || !e.EverWritable || e.End <= start || e.Start >= end) continue;
                ulong s = Math.Max(start, e.Start), t = Math.Min(end, e.End);
                long p = e.PindexOf(s);
                long n = (long)((t - s) >> Vm.PageShift);
                long eof = e.Object.Size;
                if (p + n > eof) n = eof - p;
                if (n > 0) list.Add((e.Object.Vnode!, p, n));
            }
        }
        return list;
    }

    /// <summary>Process exit: drop every entry and its object reference.</summary>
    public void Destroy()
    {
        lock (MapLock)
        {
            if (destroyed) return;
            foreach (var e in entries) Vm.Deallocate(e.Object);
            entries.Clear();
            installed.Clear();
            destroyed = true;
            Bump();
        }
    }

    /// <summary>One line per entry: start-end prot kind object offset needs_copy chain-depth.</summary>
    public string DescribeMaps()
    {
        var sb = new StringBuilder();
        lock (MapLock)
        {
            foreach (var e in entries)
            {
                char r = (e.Protection & Prot.Read) != 0 ? 'r' : '-';
                char w = (e.Protection & Prot.Write) != 0 ? 'w' : '-';
                char x = (e.Protection & Prot.Exec) != 0 ? 'x' : '-';
                sb.Append($"{e.Start:x12}-{e.End:x12} {r}{w}{x} {e.KindName} {e.Object} ")
                  .Append($"offset {e.Offset} needs_copy {(e.needs_copy ? 1 : 0)} depth {e.Object.ChainDepth}\n");
            }
        }
        return sb.ToString();
    }

    /// <summary>The first object and pindex the map gives for <paramref name="va"/> (inspection and tests).</summary>
    public (VmObject Object, long Pindex)? ObjectAt(ulong va)
    {
        lock (MapLock)
        {
            var e = FindEntry(va);
            return e == null ? null : (e.Object, e.PindexOf(va & ~PageMask));
        }
    }

    /// <summary>Whether the model believes the page at <paramref name="va"/> is present in the pmap.</summary>
    public bool IsInstalled(ulong va)
    {
        lock (MapLock) return installed.Contains(va >> Vm.PageShift);
    }

    // ---- internals used by the resolvers (caller holds MapLock) ----

    internal bool Destroyed => destroyed;

    internal VmMapEntry? FindEntry(ulong va)
    {
        int lo = 0, hi = entries.Count - 1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >> 1;
            var e = entries[mid];
            if (va < e.Start) hi = mid - 1;
            else if (va >= e.End) lo = mid + 1;
            else return e;
        }
        return null;
    }

    internal bool Installed(ulong va) => installed.Contains(va >> Vm.PageShift);

    internal void MarkInstalled(ulong va) => installed.Add(va >> Vm.PageShift);

    /// <summary>Tests: make the model lose track of a page, as if the kernel dropped it unannounced.</summary>
    internal void ForgetInstalled(ulong va)
    {
        lock (MapLock) installed.Remove(va >> Vm.PageShift);
    }

    /// <summary>A map change the faults must notice (FreeBSD's map timestamp).</summary>
    internal void Bump() => Interlocked.Increment(ref version);

    // ---- map bookkeeping (caller holds MapLock) ----

    static ulong CheckRange(ulong start, ulong length)
    {
        if ((start & PageMask) != 0)
            throw new ArgumentException($"address 0x{start:x} is not page aligned", nameof(start));
        ulong len = (length + PageMask) & ~PageMask;
        if (len < length || start + len < start)
            throw new ArgumentException("range wraps around the address space", nameof(length));
        return start + len;
    }

    void ThrowIfDestroyed()
    {
        if (destroyed) throw new InvalidOperationException("address space destroyed");
    }

    void Insert(VmMapEntry e)
    {
        int lo = 0, hi = entries.Count;
        while (lo < hi)
        {
            int mid = (lo + hi) >> 1;
            if (entries[mid].Start < e.Start) lo = mid + 1; else hi = mid;
        }
        entries.Insert(lo, e);
    }

    /// <summary>vm_map_clip_start: split the entry containing <paramref name="at"/> so an entry starts there.</summary>
    void Clip(ulong at)
    {
        var e = FindEntry(at);
        if (e == null || e.Start == at) return;
        var tail = e.Clone();
        tail.Start = at;
        tail.Offset = e.PindexOf(at);
        e.End = at;
        Vm.Reference(e.Object);
        Insert(tail);
    }

    /// <summary>Clip at both ends; returns the index range of the entries inside [start, end).</summary>
    (int, int) ClipRange(ulong start, ulong end)
    {
        Clip(start);
        Clip(end);
        int i = 0;
        while (i < entries.Count && entries[i].End <= start) i++;
        int j = i;
        while (j < entries.Count && entries[j].Start < end) j++;
        return (i, j);
    }

    void UnmapLocked(ulong start, ulong end)
    {
        var (i, j) = ClipRange(start, end);
        for (int k = i; k < j; k++) Vm.Deallocate(entries[k].Object);
        entries.RemoveRange(i, j - i);
        DropInstalled(start, end);
    }

    void DropInstalled(ulong start, ulong end)
    {
        ulong first = start >> Vm.PageShift, last = end >> Vm.PageShift;
        if (last - first <= (ulong)installed.Count)
            for (ulong p = first; p < last; p++) installed.Remove(p);
        else
            installed.RemoveWhere(p => p >= first && p < last);
    }

    void CollectInstalled(ulong start, ulong end, List<ulong> into)
    {
        ulong first = start >> Vm.PageShift, last = end >> Vm.PageShift;
        if (last - first <= (ulong)installed.Count)
        {
            for (ulong p = first; p < last; p++)
                if (installed.Contains(p)) into.Add(p);
        }
        else
        {
            foreach (var p in installed)
                if (p >= first && p < last) into.Add(p);
        }
    }

    /// <summary>
    /// Remove's model side for a private entry: the space's own pages in [s, t) are
    /// discarded, and where an object deeper in the chain would now show through with
    /// older anonymous content, a marker says what Linux gives instead (zeros for
    /// anonymous memory, the file for a private file mapping).
    /// </summary>
    void Forget(VmMapEntry e, ulong s, ulong t)
    {
        long rel0 = (long)((s - e.Start) >> Vm.PageShift);
        long n = (long)((t - s) >> Vm.PageShift);
        if (e.needs_copy)
        {
            // The first object is shared with another space: hiding needs a private shadow.
            if (!AnonymousBelow(e.Object, e.Offset + rel0, n)) return;
            if (Vm.Shadow(e)) Interlocked.Increment(ref Counters.shadows_created);
        }
        var first = e.Object;
        if (first.Kind == VmObjectKind.Vnode) return;
        long p0 = e.Offset + rel0;
        lock (first.Lock)
        {
            if (n > first.pages.Count)
            {
                foreach (var kv in first.pages)
                    if (kv.Key >= p0 && kv.Key < p0 + n && !kv.Value.Busy) first.pages.Remove(kv.Key);
            }
            else
            {
                for (long p = p0; p < p0 + n; p++)
                    if (first.pages.TryGetValue(p, out var st) && !st.Busy) first.pages.Remove(p);
            }
        }
        var below = first.BackingObject;
        if (below == null) return;
        long off = first.BackingObjectOffset;
        var marker = new PageState(BottomIsVnode(below) ? PageContent.File : PageContent.Zero);
        for (long p = p0; p < p0 + n; p++)
        {
            if (!AnonymousBelow(below, p + off, 1)) continue;
            lock (first.Lock)
                if (!first.pages.ContainsKey(p)) first.pages[p] = marker;
        }
    }

    /// <summary>Whether an anonymous object in the chain from <paramref name="o"/> holds a page in [p, p+n).</summary>
    static bool AnonymousBelow(VmObject? o, long p, long n)
    {
        for (; o != null; o = o.BackingObject)
        {
            if (o.Kind == VmObjectKind.Anonymous)
            {
                lock (o.Lock)
                {
                    if (n > o.pages.Count)
                    {
                        foreach (var k in o.pages.Keys) if (k >= p && k < p + n) return true;
                    }
                    else
                    {
                        for (long q = p; q < p + n; q++) if (o.pages.ContainsKey(q)) return true;
                    }
                }
            }
            p += o.BackingObjectOffset;
        }
        return false;
    }

    static bool BottomIsVnode(VmObject o)
    {
        while (o.BackingObject is { } b) o = b;
        return o.Kind == VmObjectKind.Vnode;
    }
}
