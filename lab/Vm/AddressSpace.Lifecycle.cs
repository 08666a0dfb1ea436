namespace Lab.Vm;

// Lifecycle: fork and exit.
public sealed partial class AddressSpace
{
    /// <summary>
    /// Before a real fork: write-protect every installed page of private writable
    /// entries (vmspace_fork's pmap_protect), so that each side's first write after
    /// the fork arrives as a write-protect fault.
    /// </summary>
    public void ForkProtect()
    {
        lock (MapLock)
        {
            if (!Live(OnDestroyed.Throw)) return;
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
            if (!Live(OnDestroyed.Throw)) return child;
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
                Layer.BeforeFork(this, e);   // Mach: collapse the object about to be shared
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
                    foreach (var vpn in pages) { child.installed.Add(vpn); child.queues.Reference(vpn); }
                }
                child.entries.Add(c);
            }
            Bump();
        }
        return child;
    }

    /// <summary>Process exit: drop every entry and its object reference.</summary>
    public void Destroy()
    {
        lock (MapLock)
        {
            if (!Live(OnDestroyed.Ignore)) return;
            foreach (var e in entries) ReleaseEntry(e);
            entries.Clear();
            installed.Clear();
            queues.Clear();
            mustSave.Clear();
            evicting.Clear();
            evictingCount = 0;
            destroyed = true;
            Bump();
        }
    }
}
