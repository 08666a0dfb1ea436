namespace Lab.Vm;

/// <summary>
/// One map entry (struct vm_map_entry): a page-aligned VA range mapping an object
/// from <see cref="Offset"/>. Guarded by the owning space's map lock.
/// </summary>
internal sealed class VmMapEntry
{
    /// <summary>VM_FAULT_READ_AHEAD_INIT: the read-ahead a new entry starts with.</summary>
    internal const int ReadAheadInit = 15;

    public ulong Start, End;
    public Prot Protection;
    public VmObject Object = null!;
    public long Offset;            // pindex in Object of Start
    public bool Shared;            // MAP_SHARED: faults go to the object itself, fork shares it
    public bool IsFile;            // made by MapFile (for DescribeMaps)
    public bool EverWritable;      // shared: mapped or mprotected writable at some point (write-back needs it)
#pragma warning disable IDE1006 // BSD names on purpose
    public bool needs_copy;        // MAP_ENTRY_NEEDS_COPY: Object is shared copy-on-write; shadow it before writing
    public long next_read;         // pindex where a sequential fault would land next
    public int read_ahead;         // last read-ahead window (pages)
#pragma warning restore IDE1006

    public long Pages => (long)((End - Start) >> Vm.PageShift);

    public long PindexOf(ulong va) => Offset + (long)((va - Start) >> Vm.PageShift);

    public VmMapEntry Clone() => (VmMapEntry)MemberwiseClone();

    public string KindName => Shared ? "shared-file" : IsFile ? "private-file" : "private-anon";
}
