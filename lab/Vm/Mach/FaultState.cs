namespace Lab.Vm.Mach;

/// <summary>
/// Per-fault state (struct faultstate): a struct on the faulting thread's stack, so a
/// fault allocates nothing. Shared by the FreeBSD and DragonFly resolvers. Names
/// follow the seeds where the concept is theirs.
/// </summary>
internal struct FaultState
{
    public AddressSpace space;
    public VmCounters counters;
    public ulong va;
    public FaultAccess access;
    public bool write;                 // Write or WriteProtect

#pragma warning disable IDE1006 // BSD names on purpose
    // From the lookup.
    public VmMapEntry entry;
    public VmObject first_object;
    public long first_pindex;
    public Prot prot;                  // what the install may grant
    public ulong map_generation;
    public bool lookup_still_valid;    // false once the map lock was dropped

    // The walk: where the page was found (object, pindex, its state).
    public VmObject obj;
    public long pindex;
    public PageState m;
    public VmObject? src;              // where the bytes come from (differs from obj after a COW)
    public long src_pindex;
    public bool first_m;               // we own a busy slot in first_object at first_pindex
    public bool referenced;            // we hold a reference on first_object
    public bool zerofill;
    public bool prezeroed;             // the first object's placeholder was asked for pre-zeroed (VM_ALLOC_ZERO)
    public bool staged;                // the swap pager left the faulting page's bytes in the pmap's staging buffer
    // hardfault (both seeds) and FreeBSD's behind/ahead/faultcount are kept across
    // RetryFault (000: 297, 301; 002: 224): Reset leaves them.
    public bool hardfault;             // the pager was called
    public int behind, ahead;          // the pager's window
    public int faultcount;             // 0: no I/O; 1: zero fill or a one-page read; else the window
    public bool wired;                 // the entry is wired: full protection now, no prefault
    public bool wiring;                // VM_FAULT_WIRE: the fault comes from Wire (mlock), not from the program
    public bool need_dirty;            // a writable install dirties the page and drops its swap copy (set by the design)
    public bool cowed;                 // this fault copied or moved a page up: try a collapse after it
    public int depth;                  // objects the last walk visited (1: the first object)
#pragma warning restore IDE1006

    public FaultResult result;

    /// <summary>Start of a pass (RetryFault). hardfault and the read window are not reset: see <see cref="ResetWindow"/>.</summary>
    public void Reset()
    {
        obj = null!;
        pindex = 0;
        m = default;
        src = null;
        src_pindex = 0;
        zerofill = false;
        prezeroed = false;
        staged = false;
        depth = 0;
        result = default;
    }

    /// <summary>DragonFly: its window and faultcount are locals of one vm_fault_object call (002: 483, 635).</summary>
    public void ResetWindow() => behind = ahead = faultcount = 0;
}
