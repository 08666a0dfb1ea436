using System.Diagnostics;
using Lab.Vm.Mach;
using Lab.Vm.Pageout;
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
public sealed partial class AddressSpace
{
    const int PageSize = Vm.PageSize;
    const ulong PageMask = PageSize - 1;

    // Lock order: MapLock, then an amap's am_lock (UVM), then object locks from a first
    // object down (upwards only by TryEnter); the vnode table lock inside MapLock and outside
    // any object lock. Never two spaces' map locks at once. See lab/Vm/README.md "Lock order".
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
    // Pages with a fault in progress (vpn -> how many), the lab's PG_BUSY for a page-out:
    // BeginEvict leaves them alone, so a fault that dropped the map lock for I/O finds its
    // page as it left it without the page-out touching the map version (BSD page daemons
    // skip busy pages and never change map timestamps).
    readonly Dictionary<ulong, int> faulting = new();
    ulong version;
    bool destroyed;

    internal AddressSpace(Vm vm, IPmap pmap, IResolver resolver)
    {
        Vm = vm;
        Pmap = pmap;
        Resolver = resolver;
        Layer = resolver is IAmapDesign ? AmapMap.Instance : ChainMap.Instance;
        queues = new PageQueues(this);
    }

    /// <summary>The map layer of the resolver's lineage: UVM amaps over a uobj, or Mach object chains.</summary>
    internal readonly IMapLayer Layer;

    public Vm Vm { get; }
    public VmCounters Counters { get; } = new();
    public IPmap Pmap { get; }
    public IResolver Resolver { get; }

    /// <summary>Bumped by every map change; a fault that dropped the map lock compares it.</summary>
    public ulong Version => Interlocked.Read(ref version);


    /// <summary>Resolve a fault at <paramref name="va"/>: counts v_vm_faults once, then the resolver.</summary>
    public FaultResult Fault(ulong va, FaultAccess access) => Fault(va, access, null);

    /// <summary>Faults (not wiring ones) whose page, once resolved, belongs to a file mapping
    /// (its entry's object is a vnode's): coverage's faults on a program's own lab files.</summary>
    public long FileFaults;

    /// <summary>A fault, or a wiring fault (VM_FAULT_WIRE) for a design that tells them apart (<paramref name="wiring"/>).</summary>
    FaultResult Fault(ulong va, FaultAccess access, Mach.IWiringResolver? wiring)
    {
        Interlocked.Increment(ref Counters.v_vm_faults);
        va &= ~PageMask;
        ulong vpn = va >> Vm.PageShift;
        lock (MapLock) faulting[vpn] = faulting.GetValueOrDefault(vpn) + 1;
        try { return wiring != null ? wiring.WiringFault(this, va, access) : Resolver.Fault(this, va, access); }
        finally
        {
            lock (MapLock)
            {
                int n = faulting[vpn] - 1;
                if (n == 0) faulting.Remove(vpn);
                else faulting[vpn] = n;
                // Counted in the hold the fault's end takes anyway, not by another lookup.
                if (wiring == null && FindEntry(va)?.Object?.Vnode != null) Interlocked.Increment(ref FileFaults);
            }
        }
    }

    /// <summary>Whether a fault on the page is in progress. Caller holds the map lock.</summary>
    internal bool FaultingVpn(ulong vpn) => faulting.Count > 0 && faulting.ContainsKey(vpn);

    // ---- internals used by the resolvers (caller holds MapLock) ----

    internal bool Destroyed => destroyed;

    /// <summary>Debug builds: the contract "caller holds the map lock" is checked.</summary>
    [Conditional("DEBUG")]
    internal void AssertMapLocked() => Debug.Assert(Monitor.IsEntered(MapLock), "caller holds the map lock");

    /// <summary>The first entry that ends after <paramref name="va"/> (the one holding it, or the next). Caller holds the map lock.</summary>
    internal VmMapEntry? FindEntryFrom(ulong va)
    {
        AssertMapLocked();
        int lo = 0, hi = entries.Count;
        while (lo < hi)
        {
            int mid = (lo + hi) >> 1;
            if (entries[mid].End <= va) lo = mid + 1;
            else hi = mid;
        }
        return lo < entries.Count ? entries[lo] : null;
    }

    internal VmMapEntry? FindEntry(ulong va)
    {
        AssertMapLocked();
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
        AssertMapLocked();
        ulong vpn = va >> Vm.PageShift;
        installed.Add(vpn);
        queues.Installed(vpn);
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
            queues.Unprotected(va >> Vm.PageShift);
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

    /// <summary>What an operation does when the space is already destroyed (the process exited).</summary>
    enum OnDestroyed
    {
        /// <summary>An operation that makes or changes mappings: calling it on an exited process is the caller's bug.</summary>
        Throw,
        /// <summary>An operation that takes something away, records a fact or scans: it may race with the exit (a late event) and does nothing.</summary>
        Ignore,
    }

    /// <summary>
    /// The prologue rule of every operation, written once: under the map lock, a live space
    /// goes on (true); a destroyed one throws or gives false, as <paramref name="rule"/> says.
    /// Throw: MapAnon, MapFile, Remap, Grow, Protect, Advise, SetDontFork, SetWipeOnFork, Wire,
    /// ForkProtect, Fork. Ignore: Unmap, Remove, MarkWired, Unwire, PageoutScan, Destroy and the
    /// eviction and inspection calls.
    /// </summary>
    bool Live(OnDestroyed rule)
    {
        AssertMapLocked();
        if (!destroyed) return true;
        if (rule == OnDestroyed.Throw) throw new InvalidOperationException("address space destroyed");
        return false;
    }

    /// <summary>
    /// The range check of every ranged operation: <paramref name="start"/> page aligned, the
    /// length rounded up to pages, no wrap (else ArgumentException). False for an empty range.
    /// </summary>
    static bool PageRange(ulong start, ulong length, out ulong end)
    {
        end = CheckRange(start, length);
        return end != start;
    }

    void Insert(VmMapEntry e)
    {
        AssertMapLocked();
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
        AssertMapLocked();
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
        AssertMapLocked();
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
        AssertMapLocked();
        var (i, j) = ClipRange(start, end);
        for (int k = i; k < j; k++) ReleaseEntry(entries[k]);
        entries.RemoveRange(i, j - i);
        DropInstalled(start, end);
    }

    /// <summary>An entry leaves the map: its object reference and its amap reference go.</summary>
    void ReleaseEntry(VmMapEntry e)
    {
        AssertMapLocked();
        if (e.Wired) Interlocked.Add(ref Counters.wired_pages, -e.Pages);
        if (e.IsFile && e.Object != null)
        {
            // Read-ahead pages of the range this entry mapped that no space installed: wasted.
            var (vobj, p0) = e.Object.Bottom(e.Offset);
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
        AssertMapLocked();
        installed.RemoveRange(start >> Vm.PageShift, end >> Vm.PageShift);
        queues.Unprotected(start >> Vm.PageShift, end >> Vm.PageShift);
    }

    void CollectInstalled(ulong start, ulong end, List<ulong> into) =>
        installed.CollectRange(start >> Vm.PageShift, end >> Vm.PageShift, into);
}
