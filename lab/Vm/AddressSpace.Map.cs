namespace Lab.Vm;

// Mapping operations (mmap, munmap, madvise, mremap, mprotect): the map changes.
public sealed partial class AddressSpace
{
    // ---- mapping operations (mmap, munmap, madvise, mremap, mprotect, fork, exit) ----

    public void MapAnon(ulong start, ulong length, Prot prot)
    {
        if (!PageRange(start, length, out ulong end)) return;
        lock (MapLock)
        {
            if (!Live(OnDestroyed.Throw)) return;
            UnmapLocked(start, end);
            var e = new VmMapEntry { Start = start, End = end, Protection = prot, read_ahead = VmMapEntry.ReadAheadInit };
            Layer.MapAnonymous(this, e);
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
            if (!Live(OnDestroyed.Throw)) return;
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
        if (!PageRange(start, length, out ulong end)) return;
        lock (MapLock)
        {
            if (!Live(OnDestroyed.Ignore)) return;
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
        if (!PageRange(start, length, out ulong end)) return;
        lock (MapLock)
        {
            if (!Live(OnDestroyed.Ignore)) return;
            foreach (var e in entries)
            {
                if (e.End <= start || e.Start >= end) continue;
                if (e.Shared) continue;
                ulong s = Math.Max(start, e.Start), t = Math.Min(end, e.End);
                Layer.Forget(this, e, s, t);
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
            if (!Live(OnDestroyed.Throw)) return;
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
                refs.Add(queues.MoveOut(vpn));
                // A page-out under way at the old address: the page moved with its bytes, which
                // its swap copy still equals, so it stays, clean, at the new one. The old
                // address stays "evicting" until the pageout is done there, so that nothing
                // mapped there meanwhile is resolved under the agent's feet.
            }
            for (int k = 0; k < pages.Count; k++)
            {
                installed.Add(pages[k] + delta);
                queues.MovedIn(pages[k] + delta, refs[k]);
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
            if (!Live(OnDestroyed.Throw)) return;
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
        AssertMapLocked();
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
            var (o, p) = e.Object!.Bottom(e.PindexOf(at));
            g.Object = Vm.ReferenceVnode(o.Vnode!); g.Offset = p; g.needs_copy = true; g.next_read = p;
        }
        else
            Layer.MapAnonymous(this, g);
        return g;
    }

    /// <summary>madvise(MADV_DONTFORK / MADV_DOFORK) (BSD: minherit VM_INHERIT_NONE / _COPY): the entries in the range are split out and flagged.</summary>
    public void SetDontFork(ulong start, ulong length, bool dontFork) =>
        UpdateEntries(start, length, dontFork, static (e, v) => e.DontFork = v);

    /// <summary>
    /// madvise(MADV_WIPEONFORK / MADV_KEEPONFORK) (BSD: minherit VM_INHERIT_ZERO / _COPY): the
    /// private anonymous entries in the range are split out and flagged. Linux refuses the
    /// advice on anything else, so the shim never sends it for other ranges.
    /// </summary>
    public void SetWipeOnFork(ulong start, ulong length, bool wipe) =>
        UpdateEntries(start, length, wipe, static (e, v) => { if (!e.Shared && !e.IsFile) e.WipeOnFork = v; });

    /// <summary>mprotect: the kernel enforces it; the model records it for lookups.</summary>
    public void Protect(ulong start, ulong length, Prot prot) =>
        UpdateEntries(start, length, prot, static (e, v) =>
        {
            e.Protection = v;
            if ((v & Prot.Write) != 0) e.EverWritable = true;
        }, forgetProtections: true);

    /// <summary>
    /// madvise(MADV_NORMAL / MADV_RANDOM / MADV_SEQUENTIAL): the entries in the range get
    /// the advice (split where needed). Linux sends no event for it; the daemon or a
    /// lab client calls this.
    /// </summary>
    public void Advise(ulong start, ulong length, Advice advice) =>
        UpdateEntries(start, length, advice, static (e, v) => e.Advice = v);

    /// <summary>
    /// madvise(MADV_WILLNEED): what the design's madvise does for it, outside the fault
    /// handlers (no seed has it): FreeBSD and DragonFly map the resident pages of the range
    /// read-only (<see cref="Mach.ChainFault.WillNeed"/>); UVM maps nothing. The entries are
    /// not changed (no advice is kept). Returns the pages mapped (counted in willneed_mapped).
    /// </summary>
    public int WillNeed(ulong start, ulong length)
    {
        if (!PageRange(start, length, out ulong end) || Resolver is not Mach.IWillNeedResolver w) return 0;
        lock (MapLock)
        {
            if (!Live(OnDestroyed.Ignore)) return 0;
            return w.WillNeed(this, start, end);
        }
    }

    /// <summary>
    /// The entries of the range, split at its ends, each changed by <paramref name="update"/>
    /// under the map lock (a destroyed space throws, as for every map-making operation).
    /// <paramref name="forgetProtections"/>: the page queues' write protections in the range
    /// no longer hold (mprotect set the range's protection anew).
    /// </summary>
    void UpdateEntries<T>(ulong start, ulong length, T value, Action<VmMapEntry, T> update, bool forgetProtections = false)
    {
        if (!PageRange(start, length, out ulong end)) return;
        lock (MapLock)
        {
            if (!Live(OnDestroyed.Throw)) return;
            if (forgetProtections) queues.Unprotected(start >> Vm.PageShift, end >> Vm.PageShift);
            var (i, j) = ClipRange(start, end);
            for (int k = i; k < j; k++) update(entries[k], value);
            Bump();
        }
    }

}
