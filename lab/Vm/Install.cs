namespace Lab.Vm;

/// <summary>How the bytes of a page being installed reach the pmap.</summary>
internal enum InstallFrom
{
    /// <summary>A private copy of what is in the pmap's staging buffer (<see cref="IPmap.EnterCopy"/>).</summary>
    Staging,
    /// <summary>A zero page (<see cref="IPmap.EnterZero"/>).</summary>
    Zero,
    /// <summary>The shared vnode page itself (<see cref="IPmap.EnterShared"/>).</summary>
    Shared,
}

/// <summary>
/// The install step (the lab's pmap_enter), one for all four designs: the resolvers decide
/// what to map and update their model; these calls fetch the bytes, count and call the pmap.
/// Counters are incremented before the pmap call: the real pmap wakes the faulting thread,
/// and the program may exit at once. Callers hold the space's map lock.
/// </summary>
internal static class Install
{
    const int PageSize = Vm.PageSize;

    /// <summary>
    /// Get a vnode page's bytes ready for <see cref="Map"/>: a shared mapping needs the page
    /// valid in the cache (<see cref="InstallFrom.Shared"/>), a private one a copy in the
    /// staging buffer (<see cref="InstallFrom.Staging"/>). Returns the pager's error (0: none).
    /// </summary>
    public static int Fetch(IPmap pmap, IVnode vnode, long pindex, bool shared) =>
        shared ? vnode.LoadPages(pindex, 1) : vnode.ReadPages(pindex, 1, pmap.Staging(1));

    /// <summary>
    /// Map the page at <paramref name="va"/> and mark it installed. Counts pages_installed
    /// (and pages_prefaulted for a <paramref name="neighbour"/>) first. False: the pmap found
    /// the page present already, or gone (the caller says superseded).
    /// </summary>
    public static bool Map(AddressSpace space, VmCounters counters, ulong va, InstallFrom from, bool writable,
        IVnode? vnode = null, long pindex = 0, bool neighbour = false)
    {
        space.AssertMapLocked();
        if (neighbour) Interlocked.Increment(ref counters.pages_prefaulted);
        Interlocked.Increment(ref counters.pages_installed);
        var pmap = space.Pmap;
        bool ok = from switch
        {
            InstallFrom.Staging => pmap.EnterCopy(va, 1, writable),
            InstallFrom.Zero => pmap.EnterZero(va, writable),
            _ => pmap.EnterShared(va, vnode!, pindex, writable),
        };
        space.MarkInstalled(va);   // false means present already (or gone: the unmap event will say)
        return ok;
    }

    /// <summary>A write-protect fault resolved: the bytes are in the space already, the model's copy-on-write is done; unprotect.</summary>
    public static FaultResult Unprotect(AddressSpace space, VmCounters counters, ulong va)
    {
        space.AssertMapLocked();
        Interlocked.Increment(ref counters.wp_resolved);
        space.MarkInstalled(va);
        space.Pmap.Protect(va, PageSize, false);
        return FaultResult.Resolved;
    }

    /// <summary>Nothing to install (a duplicate, or the page is there already): wake the waiting thread.</summary>
    public static FaultResult Superseded(AddressSpace space, VmCounters counters, ulong va)
    {
        Interlocked.Increment(ref counters.superseded);
        space.Pmap.Wake(va, PageSize);
        return FaultResult.Superseded;
    }

    /// <summary>Poison the page: the access raises SIGBUS (counted in sigbus).</summary>
    public static void Poison(AddressSpace space, VmCounters counters, ulong va)
    {
        Interlocked.Increment(ref counters.sigbus);
        space.Pmap.Poison(va);
    }
}
