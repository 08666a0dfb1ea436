using Xunit.Abstractions;

using Lab.Vm;

namespace Lab.Tests.Vm;

/// <summary>
/// madvise(MADV_WILLNEED). No seed has it: the four are fault handlers, and their advice is the
/// entry's access pattern only (UVM's uvmadvice[] has NORMAL, RANDOM and SEQUENTIAL rows and the
/// fault refuses any other advice: 001: 167–175, 725–726; 003: 155–165, 1071–1072; the Mach
/// seeds read only MADV_RANDOM/SEQUENTIAL behaviour and call MADV_DONTNEED: 000: 1014–1056).
/// The lab follows the kernels around the seeds for the Mach designs: FreeBSD's vm_map_madvise
/// maps the resident pages of an unwired entry's object (vm_map_pmap_enter), DragonFly's
/// (pmap_object_init_pt) those of a vnode object only, read-only, nothing read in; UVM maps
/// nothing.
/// </summary>
public sealed class WillNeedTests(ITestOutputHelper output) : VmTest
{
    /// <summary>
    /// A file read through one mapping (its 8 pages resident in the vnode object), then mapped
    /// again at B and advised WILLNEED: the Mach designs map the 8 pages read-only there and
    /// the reads at B fault nothing; UVM maps none and each read faults (RANDOM: no neighbours).
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void ResidentFilePages_MappedByMach_NotByUvm(string design)
    {
        var v = new MemVnode(8 * (long)P);
        var p = Proc(design);
        p.MapFile(A, 8 * P, v);
        p.Space.Advise(A, 8 * P, Advice.Random);
        for (int i = 0; i < 8; i++) Assert.Equal(v.Data[i * (int)P], p.Read(Pg(i)));
        p.MapFile(B, 8 * P, v);
        p.Space.Advise(B, 8 * P, Advice.Random);
        var d = new Delta(p.C, output);
        int mapped = p.Space.WillNeed(B, 8 * P);
        bool mach = !design.StartsWith("uvm", StringComparison.Ordinal);
        Assert.Equal(mach ? 8 : 0, mapped);
        if (mach)
        {
            d.Is(("willneed_mapped", 8), ("pages_installed", 8));
            for (int i = 0; i < 8; i++) Assert.False(p.Pmap.Writable(B + (ulong)i * P));   // read-only, as pmap_enter_quick
        }
        else d.Is();
        long before = p.C.v_vm_faults;
        for (int i = 0; i < 8; i++) Assert.Equal(v.Data[i * (int)P], p.Read(B + (ulong)i * P));
        Assert.Equal(mach ? 0 : 8, p.C.v_vm_faults - before);
        p.Exit();
    }

    /// <summary>FreeBSD passes over a wired entry (its pages are mapped by the wiring); the others map nothing more either.</summary>
    [Theory, MemberData(nameof(Designs))]
    public void WiredEntry_NothingMapped(string design)
    {
        var v = new MemVnode(4 * (long)P);
        var p = Proc(design);
        p.MapFile(A, 4 * P, v, prot: Prot.Read);
        Assert.True(p.Space.Wire(A, 4 * P));
        var d = new Delta(p.C, output);
        Assert.Equal(0, p.Space.WillNeed(A, 4 * P));
        d.Is();
        p.Exit();
    }
}
