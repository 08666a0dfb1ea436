using Lab.Vm.Uvm;

namespace Lab.Vm;

/// <summary>
/// One map entry (struct vm_map_entry): a page-aligned VA range mapping an object
/// from <see cref="Offset"/>. Guarded by the owning space's map lock.
/// Mach-lineage spaces (FreeBSD, DragonFly) always have an <see cref="Object"/>; UVM
/// spaces have an optional amap over an optional uobj (null for anonymous memory).
/// </summary>
internal sealed class VmMapEntry
{
    /// <summary>VM_FAULT_READ_AHEAD_INIT: the read-ahead a new entry starts with.</summary>
    internal const int ReadAheadInit = 15;

    public ulong Start, End;
    public Prot Protection;
    public VmObject? Object;       // Mach: the first object; UVM: the uobj (null: anonymous memory)
    public long Offset;            // pindex in Object of Start
    public bool Shared;            // MAP_SHARED: faults go to the object itself, fork shares it
    public bool IsFile;            // made by MapFile (for DescribeMaps)
    public bool EverWritable;      // shared: mapped or mprotected writable at some point (write-back needs it)
    public Advice Advice;          // madvise behaviour (MAP_ENTRY_BEHAV_* / uvm advice)
    public bool Wired;             // mlock / Wire: faulted in up front with full protection, never evicted
    public bool WipeOnFork;        // MADV_WIPEONFORK (BSD: VM_INHERIT_ZERO): a fork child gets fresh zero-fill memory here
    public bool DontFork;          // MADV_DONTFORK (BSD: VM_INHERIT_NONE): a fork child has nothing here
#pragma warning disable IDE1006 // BSD names on purpose
    public bool needs_copy;        // Mach: shadow before writing; UVM: amap_copy before writing (or before any fault without a uobj)
    public long next_read;         // FreeBSD: pindex where a sequential fault would land next
    public int read_ahead;         // FreeBSD: last read-ahead window (pages)
    public long lastr;             // DragonFly: pindex after the last read; a fault within VM_FAULT_READ of it is sequential
    public Amap? aref_amap;        // UVM upper layer (struct vm_aref)
    public int aref_pageoff;       // UVM: amap slot of Start
#pragma warning restore IDE1006

    public long Pages => (long)((End - Start) >> Vm.PageShift);

    public long PindexOf(ulong va) => Offset + (long)((va - Start) >> Vm.PageShift);

    /// <summary>The amap slot of <paramref name="va"/> (UVM).</summary>
    public int SlotOf(ulong va) => aref_pageoff + (int)((va - Start) >> Vm.PageShift);

    public VmMapEntry Clone() => (VmMapEntry)MemberwiseClone();

    public string KindName => Shared ? "shared-file" : IsFile ? "private-file" : "private-anon";
}
