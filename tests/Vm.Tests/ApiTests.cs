namespace Lab.Tests.Vm;

public sealed class ApiTests
{
    [Fact]
    public void Resolvers_AreTheFourDesigns_EachCreatedByName()
    {
        Assert.Equal(new[] { "freebsd", "dragonfly", "uvm2000", "uvm2019" }, Resolvers.Names);
        foreach (var n in Resolvers.Names) Assert.Equal(n, Resolvers.Create(n).Name);
    }

    [Fact]
    public void Resolvers_KnowFreeBsd_AndNameTheValidOnesOtherwise()
    {
        Assert.Contains("freebsd", Resolvers.Names);
        Assert.Equal("freebsd", Resolvers.Create("freebsd").Name);
        var e = Assert.Throws<ArgumentException>(() => Resolvers.Create("plan9"));
        Assert.Contains("freebsd", e.Message);
    }

    [Fact]
    public void Counters_SnapshotAndAddTo()
    {
        var a = new VmCounters();
        var total = new VmCounters();
        a.v_zfod = 3;
        a.v_vm_faults = 5;
        a.AddTo(total);
        a.AddTo(total);
        Assert.Equal(6, total.v_zfod);
        Assert.Equal(10, total["v_vm_faults"]);
        var snap = total.Snapshot().ToDictionary(kv => kv.Key, kv => kv.Value);
        Assert.Equal(6, snap["v_zfod"]);
        Assert.Contains("v_cow_optim", snap.Keys);
        Assert.Contains("internal_errors", snap.Keys);
        foreach (var k in new[] { "faults", "flt_anon", "flt_acow", "flt_obj", "flt_prcopy", "flt_przero", "fltamcopy",
                                  "fltnamap", "fltnomap", "fltlget", "fltget", "fltanget", "pageins", "revalidate_retries" })
            Assert.Contains(k, snap.Keys);
        Assert.Equal("v_vm_faults", total.Snapshot().First().Key);
    }

    [Fact]
    public void VnodeObject_IsOnePerVnode()
    {
        var vm = new Lab.Vm.Vm();
        var v = new MemVnode(4096);
        Assert.Same(vm.VnodeObject(v), vm.VnodeObject(v));
        Assert.Equal(VmObjectKind.Vnode, vm.VnodeObject(v).Kind);
        Assert.Equal(1, vm.VnodeObject(v).Size);
        Assert.Equal(0, vm.ObjectsAlive);             // no references yet
    }

    [Fact]
    public void Version_BumpsOnEveryMapChange()
    {
        var vm = new Lab.Vm.Vm();
        var p = new SimProcess(vm);
        ulong v0 = p.Space.Version;
        p.MapAnon(0x10000, 4096);
        ulong v1 = p.Space.Version;
        p.Space.Protect(0x10000, 4096, Prot.Read);
        ulong v2 = p.Space.Version;
        p.Munmap(0x10000, 4096);
        Assert.True(v0 < v1 && v1 < v2 && v2 < p.Space.Version);
    }

    [Fact]
    public void Misaligned_Ranges_AreRejected()
    {
        var vm = new Lab.Vm.Vm();
        var p = new SimProcess(vm);
        Assert.Throws<ArgumentException>(() => p.Space.MapAnon(0x10001, 4096, Prot.Read));
        Assert.Throws<ArgumentException>(() => p.Space.MapFile(0x10000, 4096, Prot.Read, new MemVnode(10), 100, false));
    }
}
