namespace Lab.Vm;

/// <summary>
/// Fault counters of one address space. The v_* fields keep the FreeBSD/DragonFly
/// names (struct vmmeter), the flt* ones NetBSD's (uvmexp); the others are the lab's.
/// A design leaves the others' counters at zero. Every increment is Interlocked
/// because several uffd threads may fault in one space at once.
/// </summary>
public sealed class VmCounters
{
#pragma warning disable IDE1006 // BSD names on purpose
    public long v_vm_faults;      // every fault, counted once
    public long v_zfod;           // zero-filled pages
    public long v_ozfod;          // zero-fills that needed no zeroing by us (EnterZero)
    public long v_cow_faults;     // copy-on-write resolved by copy or move
    public long v_cow_optim;      // copy-on-write resolved by moving the page
    public long v_io_faults;      // faults that called the pager
    public long v_intrans;        // waits for a busy page
    public long pages_installed;  // pages entered into the pmap (fault and prefault)
    public long pages_prefaulted; // of which neighbours mapped by prefault
    public long read_ahead_pages; // pages asked of the pager after the faulting one
    public long read_behind_pages; // pages asked of the pager before the faulting one
    public long pager_pages;      // pages in pager requests, faulting page included
    public long pager_errors;     // pager calls that failed (the page is poisoned)
    public long eof_faults;       // accesses at or past the end of a vnode object
    public long fastpath_hits;    // resolved from the first object without the chain walk
    public long shadows_created;  // shadow objects made by needs_copy resolution
    public long wp_resolved;      // write-protect faults resolved by unprotecting
    public long superseded;       // faults that found nothing to do
    public long sigsegv;          // lookups that failed
    public long sigbus;           // faults that poisoned the page
    public long fault_retries;    // RetryFault loops (busy page, changed map)
    public long internal_errors;  // the model could not supply bytes it should have
    public long revalidate_retries; // retries because the map changed while the fault had it unlocked
    public long behind_deactivated; // pages deactivated/cached behind a sequential fault (model only: the page queues do not take this advice)
    // NetBSD UVM (uvmexp.*); zero for the Mach-lineage designs.
    public long faults;           // every UVM fault, counted once (uvmexp.faults / cpu_nfault)
    public long fltanget;         // uvmfault_anonget calls
    public long fltpgwait;        // waits for a busy page
    public long fltnoram;         // waits for memory (restart)
    public long pageins;          // pages read back from the swap device (all designs; NetBSD's name)
    public long fltamcopy;        // needs_copy cleared by amap_copy
    public long fltnamap;         // neighbour anon pages mapped
    public long fltlget;          // non-blocking (PGO_LOCKED) object lookups
    public long fltnomap;         // neighbour object pages mapped
    public long flt_acow;         // case 1B: anon copy-on-write
    public long flt_anon;         // case 1A: anon mapped directly
    public long fltget;           // blocking (PGO_SYNCIO) object gets
    public long flt_obj;          // case 2A: object page mapped directly
    public long flt_prcopy;       // case 2B: object page promoted by copy
    public long flt_przero;       // case 2B: zero-filled anon
    public long spare_anon_reuse; // uvm2019: a promote used the anon kept from a restarted pass
    // Shadow chains (freebsd, dragonfly).
    public long collapses;        // backing objects merged into their only shadow and freed
    public long bypasses;         // backing objects skipped by a shadow that hides all their pages
    public long chain_depth_max;  // most objects one fault walked (a maximum, not a sum)
    public long chain_walk_1;     // faults whose walk ended in the first object
    public long chain_walk_2;     // ... in its backing object
    public long chain_walk_3_4;   // ... 3 or 4 objects deep
    public long chain_walk_5_16;  // ... 5 to 16 objects deep
    public long chain_walk_17_up; // ... 17 or more objects deep
    // Wiring and the swap-slot hooks (all designs).
    public long wired_pages;      // pages in wired entries now (a gauge)
    public long wire_failures;    // Wire calls that failed on a page and were rolled back
    public long swap_slots_freed_on_dirty; // FreeBSD: a write fault dropped the page's swap copy
    public long swap_slots_freed_on_wire;  // UVM: wiring dropped the anon's swap slot
    // Eviction and swap (all designs).
    public long pageouts;         // pages written to the swap device by this space's evictions
    public long evict_clean;      // evictions that dropped the page without I/O
    public long swap_bad_slots;   // swap reads that failed (corrupt or missing): the page was poisoned
    public long evict_retries;    // faults answered Retry because their page was being evicted
    public long pd_scans;         // pageout scans of this space (one per batch the pageout asked for)
    public long pd_deactivated;   // pages moved active -> inactive (write-protected to catch writes)
    public long pd_reactivated;   // inactive pages found referenced: second chance, back to active
    public long pd_skipped_referenced; // active pages the sweep passed over because they were referenced
    // Read-ahead accounting (vnode pager). A page the pager read after the faulting one is
    // "used" when it is first installed in a space afterwards, by a fault or by prefault
    // (uffd shows no accessed bit, so a mapping is the best evidence of use). It is
    // "wasted" when, before any such install, an entry mapping it is unmapped (or its
    // space exits) or its vnode object dies. Counted in the space that installs or unmaps.
    public long read_ahead_used;
    public long read_ahead_wasted;
    // NetBSD UVM (uvmexp.*), added later; zero for the Mach-lineage designs.
    public long fltnoanon;        // promotions that found no page and nothing reclaimable: the fault fails
    public long fltanretry;       // uvmfault_anonget loops that went round again (after a swap read)
    public long fltpgrele;        // object pages released while the fault read them: restart
    // The process's rusage pair (ru_minflt / ru_majflt), counted where each seed counts them.
    public long ru_minflt;        // faults served without I/O
    public long ru_majflt;        // faults that needed I/O (pager or swap)
    public long willneed_mapped;  // pages madvise(MADV_WILLNEED) mapped (FreeBSD, DragonFly: resident pages, read-only)
#pragma warning restore IDE1006

    /// <summary>Count one fault's walk of <paramref name="depth"/> objects (histogram and maximum).</summary>
    internal void CountWalk(int depth)
    {
        if (depth <= 1) Interlocked.Increment(ref chain_walk_1);
        else if (depth == 2) Interlocked.Increment(ref chain_walk_2);
        else if (depth <= 4) Interlocked.Increment(ref chain_walk_3_4);
        else if (depth <= 16) Interlocked.Increment(ref chain_walk_5_16);
        else Interlocked.Increment(ref chain_walk_17_up);
        RaiseMax(ref chain_depth_max, depth);
    }

    static void RaiseMax(ref long field, long value)
    {
        long cur = Volatile.Read(ref field);
        while (value > cur)
        {
            long seen = Interlocked.CompareExchange(ref field, value, cur);
            if (seen == cur) return;
            cur = seen;
        }
    }

    delegate ref long Field(VmCounters c);

    // One table instead of reflection: Interlocked needs a ref to the real field.
    static readonly (string Name, Field Get)[] Fields =
    [
        ("v_vm_faults", c => ref c.v_vm_faults),
        ("v_zfod", c => ref c.v_zfod),
        ("v_ozfod", c => ref c.v_ozfod),
        ("v_cow_faults", c => ref c.v_cow_faults),
        ("v_cow_optim", c => ref c.v_cow_optim),
        ("v_io_faults", c => ref c.v_io_faults),
        ("v_intrans", c => ref c.v_intrans),
        ("pages_installed", c => ref c.pages_installed),
        ("pages_prefaulted", c => ref c.pages_prefaulted),
        ("read_ahead_pages", c => ref c.read_ahead_pages),
        ("read_behind_pages", c => ref c.read_behind_pages),
        ("pager_pages", c => ref c.pager_pages),
        ("pager_errors", c => ref c.pager_errors),
        ("eof_faults", c => ref c.eof_faults),
        ("fastpath_hits", c => ref c.fastpath_hits),
        ("shadows_created", c => ref c.shadows_created),
        ("wp_resolved", c => ref c.wp_resolved),
        ("superseded", c => ref c.superseded),
        ("sigsegv", c => ref c.sigsegv),
        ("sigbus", c => ref c.sigbus),
        ("fault_retries", c => ref c.fault_retries),
        ("internal_errors", c => ref c.internal_errors),
        ("revalidate_retries", c => ref c.revalidate_retries),
        ("behind_deactivated", c => ref c.behind_deactivated),
        ("faults", c => ref c.faults),
        ("fltanget", c => ref c.fltanget),
        ("fltpgwait", c => ref c.fltpgwait),
        ("fltnoram", c => ref c.fltnoram),
        ("pageins", c => ref c.pageins),
        ("fltamcopy", c => ref c.fltamcopy),
        ("fltnamap", c => ref c.fltnamap),
        ("fltlget", c => ref c.fltlget),
        ("fltnomap", c => ref c.fltnomap),
        ("flt_acow", c => ref c.flt_acow),
        ("flt_anon", c => ref c.flt_anon),
        ("fltget", c => ref c.fltget),
        ("flt_obj", c => ref c.flt_obj),
        ("flt_prcopy", c => ref c.flt_prcopy),
        ("flt_przero", c => ref c.flt_przero),
        ("spare_anon_reuse", c => ref c.spare_anon_reuse),
        ("collapses", c => ref c.collapses),
        ("bypasses", c => ref c.bypasses),
        ("chain_depth_max", c => ref c.chain_depth_max),
        ("chain_walk_1", c => ref c.chain_walk_1),
        ("chain_walk_2", c => ref c.chain_walk_2),
        ("chain_walk_3_4", c => ref c.chain_walk_3_4),
        ("chain_walk_5_16", c => ref c.chain_walk_5_16),
        ("chain_walk_17_up", c => ref c.chain_walk_17_up),
        ("wired_pages", c => ref c.wired_pages),
        ("wire_failures", c => ref c.wire_failures),
        ("swap_slots_freed_on_dirty", c => ref c.swap_slots_freed_on_dirty),
        ("swap_slots_freed_on_wire", c => ref c.swap_slots_freed_on_wire),
        ("pageouts", c => ref c.pageouts),
        ("evict_clean", c => ref c.evict_clean),
        ("swap_bad_slots", c => ref c.swap_bad_slots),
        ("evict_retries", c => ref c.evict_retries),
        ("pd_scans", c => ref c.pd_scans),
        ("pd_deactivated", c => ref c.pd_deactivated),
        ("pd_reactivated", c => ref c.pd_reactivated),
        ("pd_skipped_referenced", c => ref c.pd_skipped_referenced),
        ("read_ahead_used", c => ref c.read_ahead_used),
        ("read_ahead_wasted", c => ref c.read_ahead_wasted),
        ("fltnoanon", c => ref c.fltnoanon),
        ("fltanretry", c => ref c.fltanretry),
        ("fltpgrele", c => ref c.fltpgrele),
        ("ru_minflt", c => ref c.ru_minflt),
        ("ru_majflt", c => ref c.ru_majflt),
        ("willneed_mapped", c => ref c.willneed_mapped),
    ];

    /// <summary>Add this space's counters into <paramref name="total"/> (e.g. at exit).</summary>
    public void AddTo(VmCounters total)
    {
        ArgumentNullException.ThrowIfNull(total);
        foreach (var (name, get) in Fields)
        {
            long v = Interlocked.Read(ref get(this));
            if (v == 0) continue;
            if (name == "chain_depth_max") RaiseMax(ref get(total), v);   // a maximum adds as a maximum
            else Interlocked.Add(ref get(total), v);
        }
    }

    /// <summary>Name/value pairs of every counter, in declaration order.</summary>
    public IEnumerable<KeyValuePair<string, long>> Snapshot()
    {
        var list = new List<KeyValuePair<string, long>>(Fields.Length);
        foreach (var (name, get) in Fields)
            list.Add(new(name, Interlocked.Read(ref get(this))));
        return list;
    }

    /// <summary>One counter by name (tests, `lab stat`).</summary>
    public long this[string name]
    {
        get
        {
            foreach (var (n, get) in Fields)
                if (n == name) return Interlocked.Read(ref get(this));
            throw new ArgumentException($"no counter named '{name}'", nameof(name));
        }
    }
}
