using System.Text;

namespace Lab.Vm;

/// <summary>
/// What differs between the two map layers: Mach object chains (<see cref="Mach.ChainMap"/>,
/// FreeBSD and DragonFly) and UVM amaps over a uobj (<see cref="Uvm.AmapMap"/>, uvm2000 and
/// uvm2019). The resolver picks the layer (<see cref="Uvm.IAmapDesign"/>); the address space
/// asks it wherever the layers differ. Every member is called with the space's map lock held.
/// </summary>
internal interface IMapLayer
{
    /// <summary>Fill in what a new private anonymous entry maps (mmap, a grown or kept-behind anonymous range).</summary>
    void MapAnonymous(AddressSpace space, VmMapEntry e);

    /// <summary>Remove's model side for the private entry <paramref name="e"/> over [s, t) (MADV_DONTNEED).</summary>
    void Forget(AddressSpace space, VmMapEntry e, ulong s, ulong t);

    /// <summary>The private page at <paramref name="va"/>: save its bytes if they are kept nowhere else (BeginEvict).</summary>
    EvictResult Evict(AddressSpace space, VmMapEntry e, ulong va);

    /// <summary>Whether the private page at <paramref name="va"/>, not installed, has its bytes only in swap.</summary>
    bool IsPagedOut(AddressSpace space, VmMapEntry e, ulong va);

    /// <summary>How many layers a fault in <paramref name="e"/> may look through.</summary>
    int Depth(VmMapEntry e);

    /// <summary>Before fork shares the entry with the child.</summary>
    void BeforeFork(AddressSpace space, VmMapEntry e);

    /// <summary>The layer's part of an entry's line in <see cref="AddressSpace.DescribeMaps"/>.</summary>
    void Describe(VmMapEntry e, StringBuilder sb);
}
