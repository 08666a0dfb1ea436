using System.Text;
using Lab.Vm.Uvm;

namespace Lab.Vm;

/// <summary>
/// One address space (struct vmspace): the map (a sorted list of entries), the pmap,
/// the counters and the set of pages installed in the pmap. One lock per space
/// (<see cref="MapLock"/>) guards the map and the installed set; every pmap call is
/// made with it held, so a pmap never sees two calls of one space at once.
/// The map layer follows the resolver's lineage: Mach (FreeBSD, DragonFly) entries
/// point at an object chain; UVM entries have an optional amap over an optional uobj.
/// </summary>
public sealed class AddressSpace
{
    const int PageSize = Vm.PageSize;
    const ulong PageMask = PageSize - 1;

    internal readonly object MapLock = new();
    readonly List<VmMapEntry> entries = new();
    // Virtual page numbers present in the pmap: what Linux has, as far as we know.
    readonly PageSet installed = new();
    // Pages between BeginEvict and CompleteEvict: their removal from the process is under
    // way, so a fault on one must wait (FaultResult.Retry) rather than resolve against a
    // page that is about to vanish. The count keeps the check off the fault path otherwise.
    readonly PageSet evicting = new();
    int evictingCount;
    // Pages whose eviction was aborted: the kernel may have written them since their bytes were
    // saved without a write-protect fault (a page pinned for I/O, written through the pin), so
    // their next page-out saves them again rather than trusting the swap copy.
    readonly PageSet mustSave = new();
    ulong version;
    bool destroyed;
    // Freed anons kept for reuse, so promotions allocate nothing in steady state.
    // A stack in an array rather than a link in each anon: the link would cost every
    // live anon 8 bytes. It grows to the most anons this space ever freed at once and
    // is kept, so refaulting a range after MADV_DONTNEED allocates nothing.
    Anon[] anonFree = [];
    int anonFreeCount;

    internal AddressSpace(Vm vm, IPmap pmap, IResolver resolver)
    {
        Vm = vm;
        Pmap = pmap;
        Resolver = resolver;
        Uvm = resolver is IAmapDesign;
    }

    /// <summary>UVM map layer (amap over uobj) rather than Mach object chains.</summary>
    internal readonly bool Uvm;

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
            // UVM: no uobj, and needs_copy so the first fault makes the amap (as mmap does).
            var e = new VmMapEntry
            {
                Start = start, End = end, Protection = prot,
                Object = Uvm ? null : Vm.AllocateAnonymous((long)((end - start) >> Vm.PageShift)),
                needs_copy = Uvm,
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
                if (Uvm) ForgetAnons(e, s, t); else Forget(e, s, t);
            }
            DropInstalled(start, end);
            Bump();
        }
    }

    /// <summary>
    /// mremap move (UFFD_EVENT_REMAP): the mappings and the installed pages move. With
    /// <paramref name="keepOld"/> (MREMAP_DONTUNMAP) the old range stays mapped, empty: each
    /// moved entry leaves a fresh one of its kind behind (anonymous: zero-fill; a file: the
    /// file again at the same offset).
    /// </summary>
    public void Remap(ulong from, ulong to, ulong length, bool keepOld = false)
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
                if (keepOld) Insert(Continuation(e, e.Start, e.End, e.Start));
                e.Start = e.Start - from + to;
                e.End = e.End - from + to;
                Insert(e);
            }
            var pages = new List<ulong>();
            CollectInstalled(from, fromEnd, pages);
            ulong delta = (to >> Vm.PageShift) - (from >> Vm.PageShift);
            var refs = new List<bool>(pages.Count);
            foreach (var vpn in pages)
            {
                installed.Remove(vpn);
                refs.Add(referenced.Remove(vpn));
                inactive.Remove(vpn);
                protectedByPageout.Remove(vpn);
                // A page-out under way at the old address: the page moved with its bytes, which
                // its swap copy still equals, so it stays, clean, at the new one. The old
                // address stays "evicting" until the pageout is done there, so that nothing
                // mapped there meanwhile is resolved under the agent's feet.
            }
            for (int k = 0; k < pages.Count; k++)
            {
                installed.Add(pages[k] + delta);
                if (refs[k]) referenced.Add(pages[k] + delta);
            }
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
            var g = Continuation(e, oldEnd, newEnd, oldEnd);
            Insert(g);
            Bump();
        }
    }

    /// <summary>
    /// A fresh, empty entry over [start, end) that maps what <paramref name="e"/> maps from
    /// its address <paramref name="at"/> on: the same shared object, the file under a private
    /// file mapping (copy-on-write again), or new anonymous memory. Caller holds the map lock.
    /// </summary>
    VmMapEntry Continuation(VmMapEntry e, ulong start, ulong end, ulong at)
    {
        var g = new VmMapEntry
        {
            Start = start, End = end, Protection = e.Protection, Shared = e.Shared, IsFile = e.IsFile,
            EverWritable = e.EverWritable, Advice = e.Advice, WipeOnFork = e.WipeOnFork, DontFork = e.DontFork,
            read_ahead = VmMapEntry.ReadAheadInit,
        };
        if (e.Shared)
        {
            g.Object = e.Object!; g.Offset = e.PindexOf(at);
            Vm.Reference(e.Object!);
        }
        else if (e.IsFile)
        {
            // The file under the (possibly shadowed) object, at the page of `at`.
            var o = e.Object!;
            long p = e.PindexOf(at);
            while (o.Vnode == null && o.BackingObject is { } b) { p += o.BackingObjectOffset; o = b; }
            g.Object = Vm.ReferenceVnode(o.Vnode!); g.Offset = p; g.needs_copy = true; g.next_read = p;
        }
        else if (Uvm)
            g.needs_copy = true;
        else
            g.Object = Vm.AllocateAnonymous((long)((end - start) >> Vm.PageShift));
        return g;
    }

    /// <summary>madvise(MADV_DONTFORK / MADV_DOFORK) (BSD: minherit VM_INHERIT_NONE / _COPY): the entries in the range are split out and flagged.</summary>
    public void SetDontFork(ulong start, ulong length, bool dontFork)
    {
        ulong end = CheckRange(start, length);
        if (end == start) return;
        lock (MapLock)
        {
            ThrowIfDestroyed();
            var (i, j) = ClipRange(start, end);
            for (int k = i; k < j; k++) entries[k].DontFork = dontFork;
            Bump();
        }
    }

    /// <summary>
    /// madvise(MADV_WIPEONFORK / MADV_KEEPONFORK) (BSD: minherit VM_INHERIT_ZERO / _COPY): the
    /// private anonymous entries in the range are split out and flagged. Linux refuses the
    /// advice on anything else, so the shim never sends it for other ranges.
    /// </summary>
    public void SetWipeOnFork(ulong start, ulong length, bool wipe)
    {
        ulong end = CheckRange(start, length);
        if (end == start) return;
        lock (MapLock)
        {
            ThrowIfDestroyed();
            var (i, j) = ClipRange(start, end);
            for (int k = i; k < j; k++)
                if (!entries[k].Shared && !entries[k].IsFile) entries[k].WipeOnFork = wipe;
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
            if (protectedByPageout.Count > 0) protectedByPageout.RemoveRange(start >> Vm.PageShift, end >> Vm.PageShift);
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
    /// madvise(MADV_NORMAL / MADV_RANDOM / MADV_SEQUENTIAL): the entries in the range get
    /// the advice (split where needed). Linux sends no event for it; the daemon or a
    /// lab client calls this.
    /// </summary>
    public void Advise(ulong start, ulong length, Advice advice)
    {
        ulong end = CheckRange(start, length);
        if (end == start) return;
        lock (MapLock)
        {
            ThrowIfDestroyed();
            var (i, j) = ClipRange(start, end);
            for (int k = i; k < j; k++) entries[k].Advice = advice;
            Bump();
        }
    }

    /// <summary>
    /// mlock / vm_map_wire: the entries in the range become wired and every page is
    /// faulted in now with the entry's full protection, so a private writable page is
    /// made this space's own (copy-on-write broken: the first object's page, or an anon
    /// only this amap holds) and installed writable. Pages already present in a
    /// read-only or shared entry need nothing. If a page fails (SIGBUS, or the map
    /// changed under the loop), the whole range is unwired again (wire_failures) and
    /// the result is false. Unmapped holes and PROT_NONE entries are skipped.
    /// </summary>
    public bool Wire(ulong start, ulong length)
    {
        ulong end = CheckRange(start, length);
        if (end == start) return true;
        lock (MapLock)
        {
            ThrowIfDestroyed();
            MarkWiredLocked(start, end);
        }
        for (ulong va = start; va < end; va += PageSize)
        {
            FaultAccess access;
            lock (MapLock)
            {
                var e = Destroyed ? null : FindEntry(va);
                if (e == null || e.Protection == Prot.None) continue;
                if (!e.Wired) return WireFailed(start, end);   // unwired or remapped meanwhile
                bool write = (e.Protection & Prot.Write) != 0;
                if (Installed(va))
                {
                    if (!write || e.Shared) continue;
                    access = FaultAccess.WriteProtect;   // present, maybe copy-on-write: break it
                }
                else access = write ? FaultAccess.Write : FaultAccess.Read;
            }
            var r = Fault(va, access);
            if (r is FaultResult.SigBus or FaultResult.SigSegv) return WireFailed(start, end);
        }
        return true;
    }

    /// <summary>
    /// The entries in the range become wired without faulting anything in: the kernel has
    /// locked (or is locking) the pages itself (mlock through the lab's shim, whose populate
    /// faults come through the pmap as usual), so the pageout must never pick them.
    /// </summary>
    public void MarkWired(ulong start, ulong length)
    {
        ulong end = CheckRange(start, length);
        if (end == start) return;
        lock (MapLock)
        {
            if (destroyed) return;
            MarkWiredLocked(start, end);
        }
    }

    void MarkWiredLocked(ulong start, ulong end)
    {
        var (i, j) = ClipRange(start, end);
        for (int k = i; k < j; k++)
        {
            var e = entries[k];
            if (e.Wired) continue;
            e.Wired = true;
            Interlocked.Add(ref Counters.wired_pages, e.Pages);
        }
        Bump();
    }

    bool WireFailed(ulong start, ulong end)
    {
        Interlocked.Increment(ref Counters.wire_failures);
        Unwire(start, end - start);
        return false;
    }

    /// <summary>munlock / vm_map_unwire: the entries in the range are no longer wired, so their pages may be evicted again.</summary>
    public void Unwire(ulong start, ulong length)
    {
        ulong end = CheckRange(start, length);
        if (end == start) return;
        lock (MapLock)
        {
            if (destroyed) return;
            var (i, j) = ClipRange(start, end);
            for (int k = i; k < j; k++)
            {
                var e = entries[k];
                if (!e.Wired) continue;
                e.Wired = false;
                Interlocked.Add(ref Counters.wired_pages, -e.Pages);
            }
            Bump();
        }
    }

    /// <summary>Whether the page at <paramref name="va"/> may be paged out: it is mapped and its entry is not wired.</summary>
    public bool IsEvictable(ulong va)
    {
        lock (MapLock)
        {
            var e = destroyed ? null : FindEntry(va & ~PageMask);
            return e != null && !e.Wired;
        }
    }

    // ---- page-out (the VM half: the daemon chooses the pages and owns the store) ----

    /// <summary>
    /// Page out the page at <paramref name="va"/>: <see cref="BeginEvict"/> then
    /// <see cref="CompleteEvict"/>, for a pmap whose Remove is synchronous.
    /// </summary>
    public EvictResult Evict(ulong va)
    {
        var r = BeginEvict(va);
        if (r is EvictResult.Evicted or EvictResult.Clean) CompleteEvict(va);
        return r;
    }

    /// <summary>
    /// First half of a page-out. The page's bytes are saved where they are not already
    /// kept: a dirty anonymous page (a shadow object's, or an anon's) is write-protected,
    /// read from the process and written to a new swap slot, and the model then says the
    /// slot holds it. A page equal to the file or zero, a shared file page, or one whose
    /// swap copy is current is dropped without I/O. Then <see cref="IPmap.Remove"/> is
    /// asked; until <see cref="CompleteEvict"/>, faults on the page get
    /// <see cref="FaultResult.Retry"/>. Nothing changes unless the result is Evicted or Clean.
    /// </summary>
    public EvictResult BeginEvict(ulong va)
    {
        va &= ~PageMask;
        ulong vpn = va >> Vm.PageShift;
        lock (MapLock)
        {
            var e = destroyed ? null : FindEntry(va);
            if (e == null || !installed.Contains(vpn)) return EvictResult.NotResident;
            if (e.Wired) return EvictResult.Wired;
            if (evictingCount > 0 && evicting.Contains(vpn)) return EvictResult.Busy;
            var r = e.Shared ? EvictResult.Clean : Uvm ? EvictAnon(e, va) : EvictChainPage(e, va);
            if (r is not (EvictResult.Evicted or EvictResult.Clean)) return r;
            if (r == EvictResult.Clean) Interlocked.Increment(ref Counters.evict_clean);
            evicting.Add(vpn);
            evictingCount++;
            Bump();   // a fault that had the map unlocked for I/O looks again
            Pmap.Remove(va, 1);
            return r;
        }
    }

    // The check word of the bytes the last PageOut saved (under the map lock).
    ulong lastSaveCheck;

    /// <summary>A 64-bit check word of a page's bytes (FNV-1a over its words; never 0). The shim computes the same.</summary>
    public static ulong PageCheck(ReadOnlySpan<byte> page)
    {
        var words = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, ulong>(page);
        ulong h = 0xcbf29ce484222325;
        foreach (ulong w in words) h = (h ^ w) * 0x100000001b3;
        return h | 1;
    }

    /// <summary>The pmap has removed the page: forget it as installed and let its faults through.</summary>
    public void CompleteEvict(ulong va)
    {
        ulong vpn = (va & ~PageMask) >> Vm.PageShift;
        lock (MapLock)
        {
            if (!evicting.Remove(vpn)) return;
            evictingCount--;
            installed.Remove(vpn);
            protectedByPageout.Remove(vpn);
            mustSave.Remove(vpn);
        }
    }

    /// <summary>
    /// The pmap could not take the page out after all (the process's agent was busy or
    /// failed): the page stays installed. Its bytes are still equal to what
    /// <see cref="BeginEvict"/> saved (it is write-protected; a write would have waited), so
    /// it is clean against its swap copy as far as faults show; but the kernel may write a
    /// page it holds pinned for I/O without a fault, so its next page-out saves it again.
    /// Faults on it go through again.
    /// </summary>
    public void AbortEvict(ulong va)
    {
        ulong vpn = (va & ~PageMask) >> Vm.PageShift;
        lock (MapLock)
        {
            if (!evicting.Remove(vpn)) return;
            evictingCount--;
            mustSave.Add(vpn);
            Bump();
        }
    }

    /// <summary>Whether a page-out of <paramref name="va"/> is under way. Caller holds the map lock.</summary>
    internal bool EvictingPage(ulong va) => evictingCount > 0 && evicting.Contains(va >> Vm.PageShift);

    /// <summary>Mach: the shallowest page of the chain at <paramref name="va"/> is the one installed here.</summary>
    EvictResult EvictChainPage(VmMapEntry e, ulong va)
    {
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
                        if (o.Kind == VmObjectKind.Anonymous) return EvictObjectPage(o, p, st, va);
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
    EvictResult EvictObjectPage(VmObject o, long p, PageState st, ulong va)
    {
        switch (st.Content)
        {
            case PageContent.Swap when !mustSave.Contains(va >> Vm.PageShift):
            case PageContent.Zero:
            case PageContent.File:
                return EvictResult.Clean;
            case PageContent.Swap:
            case PageContent.InSpaces:
                break;
            default:
                return EvictResult.Busy;
        }
        long slot = PageOut(va, SwapOwnerKind.Object, o.Id, p);
        if (slot <= 0) return slot < 0 ? EvictResult.Busy : EvictResult.NoSwap;
        mustSave.Remove(va >> Vm.PageShift);
        Vm.FreeSwapSlot(o.TakeSwapSlot(p));   // a stale copy (written since) goes
        o.SetSwapSlot(p, slot);
        o.pages[p] = new PageState(PageContent.Swap, swapped: true);
        return EvictResult.Evicted;
    }

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

    /// <summary>
    /// Write-protect the page (a write meanwhile becomes a write-protect fault, which
    /// waits), read its bytes from the process and write them to the swap device.
    /// Returns the slot, 0 without a device or when it is full, -1 when the bytes could
    /// not be read. Caller holds the map lock.
    /// </summary>
    long PageOut(ulong va, SwapOwnerKind kind, long ownerId, long ownerIndex)
    {
        if (Vm.Swap == null) return 0;
        if (!protectedByPageout.Remove(va >> Vm.PageShift) && !Pmap.TryWriteProtect(va, PageSize))
        {
            pmapRefused = true;
            return -1;   // without it a write could be lost: later
        }
        var buf = Pmap.Staging(1);
        if (!Pmap.ReadPage(va, buf)) return -1;
        lastSaveCheck = PageCheck(buf[..PageSize]);
        long slot = Vm.SwapWrite(kind, ownerId, ownerIndex, buf);
        if (slot <= 0) return 0;
        Interlocked.Increment(ref Counters.pageouts);
        Interlocked.Increment(ref Counters.swap_slots_used);
        return slot;
    }

    // ---- page queues: which pages the pageout takes (active/inactive, second chance) ----
    //
    // Every installed page is active until a sweep deactivates it. The sweep goes round the
    // installed pages like a clock hand: a page referenced since the hand last passed (it
    // faulted: installed, or written after being write-protected) loses its reference and
    // stays active; an unreferenced one becomes inactive and is write-protected, so that a
    // write to it faults and references it again. Evictions take the inactive pages oldest
    // first; one referenced meanwhile goes back to active (second chance). Reads of a
    // resident page are invisible to us (no accessed bit through userfaultfd): a read-only
    // page is judged by when it faulted in.

    readonly PageSet referenced = new();
    readonly PageSet inactive = new();
    // Pages this scan's deactivation write-protected and that nothing has touched since (any
    // install, removal, move or mprotect of the page clears its bit): their page-out need
    // not write-protect them again.
    readonly PageSet protectedByPageout = new();
    ulong[] inactiveQueue = new ulong[64];   // FIFO ring of vpns; entries whose bit went are skipped
    int inactiveHead, inactiveCount;
    ulong activeHand;
    // The pmap refused a write protection during this scan: it is not a good moment, stop.
    bool pmapRefused;

    /// <summary>Pages installed in the pmap now (what counts against a resident limit). Read without the lock.</summary>
    public int ResidentPages => installed.Count;   // an int read: atomic, maybe a little stale

    /// <summary>Pages on the inactive queue now (stale entries included).</summary>
    public int InactivePages { get { lock (MapLock) return inactive.Count; } }

    /// <summary>
    /// One pageout scan: keep the inactive queue filled (deactivating active pages with the
    /// sweep) and begin the eviction of up to <paramref name="want"/> inactive pages that were
    /// not referenced since. The addresses whose eviction began (Evicted or Clean) go into
    /// <paramref name="begun"/>; the caller has the pmap take them out and then calls
    /// <see cref="CompleteEvict"/> for each. Stops early when the swap device is full.
    /// </summary>
    public int PageoutScan(int want, Span<ulong> begun, out bool swapFull) => PageoutScan(want, begun, Span<ulong>.Empty, out swapFull);

    /// <summary>
    /// <see cref="PageoutScan(int, Span{ulong}, out bool)"/>, also giving for each page begun the
    /// <see cref="PageCheck"/> of the bytes saved for it (0: nothing saved, its copy is older).
    /// The pmap can compare it with the page as it leaves: the kernel may write a page it holds
    /// pinned for I/O without a fault, after the bytes were saved.
    /// </summary>
    public int PageoutScan(int want, Span<ulong> begun, Span<ulong> saved, out bool swapFull)
    {
        swapFull = false;
        want = Math.Min(want, begun.Length);
        if (want <= 0) return 0;
        int n = 0;
        lock (MapLock)
        {
            if (destroyed) return 0;
            Interlocked.Increment(ref Counters.pd_scans);
            pmapRefused = false;
            // A few rounds: the first sweeps may only clear reference bits.
            for (int round = 0; round < 3 && n < want && !pmapRefused; round++)
            {
                if (inactive.Count < want * 2) Deactivate(want * 2 - inactive.Count);
                while (n < want && inactiveCount > 0 && !pmapRefused)
                {
                    ulong vpn = inactiveQueue[inactiveHead];
                    inactiveHead = (inactiveHead + 1) % inactiveQueue.Length;
                    inactiveCount--;
                    if (!inactive.Remove(vpn)) continue;             // stale: already handled
                    if (!installed.Contains(vpn)) continue;           // gone meanwhile
                    if (referenced.Remove(vpn))
                    {
                        Interlocked.Increment(ref Counters.pd_reactivated);
                        continue;
                    }
                    ulong va = vpn << Vm.PageShift;
                    lastSaveCheck = 0;
                    var r = BeginEvict(va);
                    if (r is EvictResult.Evicted or EvictResult.Clean)
                    {
                        if (n < saved.Length) saved[n] = r == EvictResult.Evicted ? lastSaveCheck : 0;
                        begun[n++] = va;
                    }
                    // A dirty page with nowhere to go stays active; clean pages behind it are still taken.
                    else if (r == EvictResult.NoSwap) swapFull = true;
                }
            }
        }
        return n;
    }

    /// <summary>Move up to <paramref name="count"/> unreferenced active pages to the inactive queue. Caller holds the map lock.</summary>
    void Deactivate(int count)
    {
        if (count <= 0 || installed.Count == 0) return;
        Span<ulong> look = count <= 256 ? stackalloc ulong[256] : new ulong[Math.Min(count * 2, 65536)];
        // Looking at each installed page at most twice: the first time may only clear its bit.
        int budget = Math.Min(installed.Count * 2, 1 << 22);
        ulong runStart = 0;
        int runCount = 0;
        try
        {
            DeactivateSome(ref count, ref budget, look, ref runStart, ref runCount);
        }
        finally
        {
            if (runCount > 0) ProtectRun(ref runStart, ref runCount);
        }
    }

    /// <summary>
    /// Write-protect a run of pages just deactivated; they count as protected by the pageout.
    /// False: the pmap refused (an event is pending): stop the scan. The run's pages stay
    /// inactive unprotected, so their page-out protects them itself.
    /// </summary>
    bool ProtectRun(ref ulong runStart, ref int runCount)
    {
        bool ok = Pmap.TryWriteProtect(runStart << Vm.PageShift, (ulong)runCount << Vm.PageShift);
        if (ok)
            for (int k = 0; k < runCount; k++) protectedByPageout.Add(runStart + (ulong)k);
        else pmapRefused = true;
        runCount = 0;
        return ok;
    }

    void DeactivateSome(ref int count, ref int budget, Span<ulong> look, ref ulong runStart, ref int runCount)
    {
        while (count > 0 && budget > 0 && !pmapRefused)
        {
            int got = installed.CollectFrom(activeHand, look[..Math.Min(look.Length, budget)]);
            if (got == 0) return;
            budget -= got;
            for (int i = 0; i < got && count > 0; i++)
            {
                ulong vpn = look[i];
                activeHand = vpn + 1;
                if (inactive.Contains(vpn) || (evictingCount > 0 && evicting.Contains(vpn))) continue;
                var e = FindEntry(vpn << Vm.PageShift);
                if (e == null || e.Wired) continue;
                if (referenced.Remove(vpn))
                {
                    Interlocked.Increment(ref Counters.pd_skipped_referenced);
                    continue;
                }
                // Shared file pages need no write protection: evicting them loses nothing.
                // The others are protected a run of neighbours at a time (one ioctl per run).
                if (!e.Shared && (e.Protection & Prot.Write) != 0)
                {
                    if (runCount > 0 && vpn != runStart + (ulong)runCount && !ProtectRun(ref runStart, ref runCount)) return;
                    if (runCount == 0) runStart = vpn;
                    runCount++;
                }
                inactive.Add(vpn);
                if (inactiveCount == inactiveQueue.Length) GrowInactiveQueue();
                inactiveQueue[(inactiveHead + inactiveCount) % inactiveQueue.Length] = vpn;
                inactiveCount++;
                Interlocked.Increment(ref Counters.pd_deactivated);
                count--;
            }
        }
    }

    void GrowInactiveQueue()
    {
        var bigger = new ulong[inactiveQueue.Length * 2];
        for (int i = 0; i < inactiveCount; i++) bigger[i] = inactiveQueue[(inactiveHead + i) % inactiveQueue.Length];
        inactiveQueue = bigger;
        inactiveHead = 0;
    }

    /// <summary>Whether the entry at <paramref name="va"/> is wired.</summary>
    public bool IsWired(ulong va)
    {
        lock (MapLock) return FindEntry(va & ~PageMask)?.Wired == true;
    }

    /// <summary>
    /// How many layers a fault at <paramref name="va"/> may have to look through: the
    /// objects of the chain (Mach), or amap plus uobj (UVM); 0 without an entry.
    /// </summary>
    public int ChainDepth(ulong va)
    {
        lock (MapLock)
        {
            var e = FindEntry(va & ~PageMask);
            return e == null ? 0 : EntryDepth(e);
        }
    }

    /// <summary>The deepest <see cref="ChainDepth"/> over all entries: the chain-depth view of the space now.</summary>
    public int MaxChainDepth()
    {
        lock (MapLock)
        {
            int max = 0;
            foreach (var e in entries) max = Math.Max(max, EntryDepth(e));
            return max;
        }
    }

    int EntryDepth(VmMapEntry e) =>
        Uvm ? (e.aref_amap != null ? 1 : 0) + (e.Object != null ? 1 : 0) : e.Object!.ChainDepth;

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
                // Nothing of a don't-fork or wipe-on-fork entry is shared with the child: Linux
                // leaves those pages writable.
                if (e.Shared || e.DontFork || e.WipeOnFork || (e.Protection & Prot.Write) == 0) continue;
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
                if (e.DontFork) continue;   // VM_INHERIT_NONE: the child has no mapping here
                if (e.WipeOnFork && !e.Shared && !e.IsFile)
                {
                    // VM_INHERIT_ZERO: the child's entry is new zero-fill memory, sharing nothing
                    // with ours (Linux copies no pages of a VM_WIPEONFORK vma, and keeps the flag).
                    var z = Continuation(e, e.Start, e.End, e.Start);
                    z.Wired = false;
                    child.entries.Add(z);
                    continue;
                }
                // vm_map_copy_entry collapses the object it is about to share, so the
                // chains the two spaces inherit are as short as they can be.
                if (!Uvm && !e.Shared && e.Object != null) Vm.Collapse(e.Object, Counters);
                var c = e.Clone();
                c.Wired = false;   // wiring is not inherited (mlock is per process)
                if (e.Object != null) Vm.Reference(e.Object);
                if (e.aref_amap is { } amap)
                    lock (amap.am_lock) amap.Ref(e.aref_pageoff, (int)e.Pages);   // both entries share it until amap_copy
                if (!e.Shared)
                {
                    e.needs_copy = true;
                    c.needs_copy = true;
                    pages.Clear();
                    CollectInstalled(e.Start, e.End, pages);
                    foreach (var vpn in pages) { child.installed.Add(vpn); child.referenced.Add(vpn); }
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
                long eof = e.Object!.Size;
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
            foreach (var e in entries) ReleaseEntry(e);
            entries.Clear();
            installed.Clear();
            referenced.Clear();
            inactive.Clear();
            protectedByPageout.Clear();
            mustSave.Clear();
            inactiveCount = 0;
            evicting.Clear();
            evictingCount = 0;
            destroyed = true;
            Bump();
        }
    }

    /// <summary>
    /// One line per entry: start-end prot kind object offset needs_copy, then the chain
    /// depth (Mach) or the amap's used slots, size and references (UVM).
    /// </summary>
    /// <summary>Every object the map reaches: first objects and their backing chains, once each (inspection).</summary>
    public IReadOnlyList<VmObject> Objects()
    {
        var list = new List<VmObject>();
        lock (MapLock)
        {
            foreach (var e in entries)
                for (var o = e.Object; o != null && !list.Contains(o); o = o.BackingObject)
                    list.Add(o);
        }
        return list;
    }

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
                sb.Append($"{e.Start:x12}-{e.End:x12} {r}{w}{x} {e.KindName} {(object?)e.Object ?? "none"} ")
                  .Append($"offset {e.Offset} needs_copy {(e.needs_copy ? 1 : 0)}");
                if (!Uvm) sb.Append($" depth {e.Object!.ChainDepth}");
                else if (e.aref_amap is { } a)
                    lock (a.am_lock) sb.Append($" amap {a.am_nused}/{a.Slots} ref {a.am_ref}");
                else sb.Append(" amap none");
                sb.Append('\n');
            }
        }
        return sb.ToString();
    }

    /// <summary>
    /// The first object (Mach) or uobj (UVM) and pindex the map gives for
    /// <paramref name="va"/>; null without an entry, or for UVM anonymous memory, which
    /// has no object (inspection and tests).
    /// </summary>
    public (VmObject Object, long Pindex)? ObjectAt(ulong va)
    {
        lock (MapLock)
        {
            var e = FindEntry(va);
            return e?.Object == null ? null : (e.Object, e.PindexOf(va & ~PageMask));
        }
    }

    /// <summary>Tests and the swap store to come: the anon at <paramref name="va"/> (UVM), or null.</summary>
    internal Anon? AnonAt(ulong va)
    {
        lock (MapLock)
        {
            var e = FindEntry(va);
            if (e?.aref_amap is not { } a) return null;
            lock (a.am_lock) return a.am_anon[e.SlotOf(va & ~PageMask)];
        }
    }

    /// <summary>UVM: the anon's reference count at <paramref name="va"/> (0: no amap or no anon there).</summary>
    public int AnonRefAt(ulong va)
    {
        lock (MapLock)
        {
            var e = FindEntry(va);
            if (e?.aref_amap is not { } a) return 0;
            lock (a.am_lock) return a.am_anon[e.SlotOf(va & ~PageMask)]?.an_ref ?? 0;
        }
    }

    /// <summary>Whether the model believes the page at <paramref name="va"/> is present in the pmap.</summary>
    public bool IsInstalled(ulong va)
    {
        lock (MapLock) return installed.Contains(va >> Vm.PageShift);
    }

    /// <summary>
    /// Whether the page at <paramref name="va"/> is a private page whose bytes live only in
    /// swap: paged out, not in the process. Linux swap is invisible to a program; a range
    /// that leaves the lab must get such pages back first (the daemon faults them in).
    /// </summary>
    public bool IsPagedOut(ulong va)
    {
        va &= ~PageMask;
        lock (MapLock)
        {
            if (destroyed || installed.Contains(va >> Vm.PageShift)) return false;
            var e = FindEntry(va);
            if (e == null || e.Shared) return false;
            if (Uvm)
            {
                if (e.aref_amap is not { } a) return false;
                lock (a.am_lock) return a.am_anon[e.SlotOf(va)] is { Content: PageContent.Swap };
            }
            long pindex = e.PindexOf(va);
            for (var o = e.Object; o != null;)
            {
                VmObject? next;
                lock (o.Lock)
                {
                    if (o.Lookup(pindex, out var st) != PageLookup.Absent) return st.Content == PageContent.Swap;
                    next = o.backing_object;
                    pindex += o.backing_object_offset;
                }
                o = next;
            }
            return false;
        }
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

    internal void MarkInstalled(ulong va)
    {
        ulong vpn = va >> Vm.PageShift;
        installed.Add(vpn);
        referenced.Add(vpn);   // the pageout's reference bit: this page was just used
        if (protectedByPageout.Count > 0) protectedByPageout.Remove(vpn);
    }

    /// <summary>
    /// The pmap says the page at <paramref name="va"/> is absent although the model has it
    /// installed (the kernel dropped it without an event): forget it, so the next fault
    /// resolves it instead of being answered "superseded" for ever. Tests use it too.
    /// </summary>
    public void ForgetInstalled(ulong va)
    {
        lock (MapLock)
        {
            installed.Remove(va >> Vm.PageShift);
            protectedByPageout.Remove(va >> Vm.PageShift);
        }
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
        if (e.aref_amap is { } amap)
        {
            // amap_splitref: both pieces use the amap, each for its own slots.
            tail.aref_pageoff = e.SlotOf(at);
            lock (amap.am_lock) amap.am_ref++;
        }
        e.End = at;
        if (e.Object != null) Vm.Reference(e.Object);
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
        for (int k = i; k < j; k++) ReleaseEntry(entries[k]);
        entries.RemoveRange(i, j - i);
        DropInstalled(start, end);
    }

    /// <summary>An entry leaves the map: its object reference and its amap reference go.</summary>
    void ReleaseEntry(VmMapEntry e)
    {
        if (e.Wired) Interlocked.Add(ref Counters.wired_pages, -e.Pages);
        if (e.IsFile && e.Object != null)
        {
            // Read-ahead pages of the range this entry mapped that no space installed: wasted.
            var (vobj, p0) = Mach.ChainFault.Bottom(e.Object, e.Offset);
            vobj.DropReadAhead(p0, e.Pages, Counters);
        }
        Vm.Deallocate(e.Object, Counters);
        if (e.aref_amap is { } amap)
        {
            lock (amap.am_lock) amap.Unref(e.aref_pageoff, (int)e.Pages, this);
            e.aref_amap = null;
        }
    }

    void DropInstalled(ulong start, ulong end)
    {
        installed.RemoveRange(start >> Vm.PageShift, end >> Vm.PageShift);
        if (protectedByPageout.Count > 0) protectedByPageout.RemoveRange(start >> Vm.PageShift, end >> Vm.PageShift);
    }

    void CollectInstalled(ulong start, ulong end, List<ulong> into) =>
        installed.CollectRange(start >> Vm.PageShift, end >> Vm.PageShift, into);

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
            if (!AnonymousBelow(e.Object!, e.Offset + rel0, n)) return;
            if (Vm.Shadow(e)) Interlocked.Increment(ref Counters.shadows_created);
        }
        var first = e.Object!;
        if (first.Kind == VmObjectKind.Vnode) return;
        long p0 = e.Offset + rel0;
        lock (first.Lock)
        {
            if (n > first.pages.Count)
            {
                foreach (var kv in first.pages)
                    if (kv.Key >= p0 && kv.Key < p0 + n && !kv.Value.Busy) DropPage(first, kv.Key, kv.Value);
            }
            else
            {
                for (long p = p0; p < p0 + n; p++)
                    if (first.pages.TryGetValue(p, out var st) && !st.Busy) DropPage(first, p, st);
            }
        }
        var below = first.BackingObject;
        if (below == null) return;
        var marker = new PageState(BottomIsVnode(below) ? PageContent.File : PageContent.Zero);
        for (long p = p0; p < p0 + n; p++)
        {
            if (!AnonymousBelow(first, p, 1, skipFirst: true)) continue;
            lock (first.Lock)
                if (!first.pages.ContainsKey(p)) first.pages[p] = marker;
        }
    }

    /// <summary>A page leaves its object, and its swap slot with it. Caller holds the object's lock.</summary>
    void DropPage(VmObject o, long p, PageState st)
    {
        o.pages.Remove(p);
        if (st.Swapped) Vm.FreeSwapSlot(o.TakeSwapSlot(p));
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

    static bool BottomIsVnode(VmObject o)
    {
        while (o.BackingObject is { } b) o = b;
        return o.Kind == VmObjectKind.Vnode;
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
