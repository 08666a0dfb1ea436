namespace Lab.Tests.Vm;

/// <summary>NetBSD UVM cases 1A, 1B, 2A, 2B with exact counter deltas, for both UVM designs.</summary>
public sealed class UvmFaultTests : VmTest
{
    public static new TheoryData<string> Designs => new() { "uvm2000", "uvm2019" };

    [Theory, MemberData(nameof(Designs))]
    public void Case2B_Zero_FirstTouchCopiesTheAmapThenPromotesAZeroAnon(string design)
    {
        var p = ProcWithAnon(design, 4);
        var d = new Delta(p.C);
        Assert.Equal(0, p.Read(Pg(1)));
        // needs_copy without a uobj: amap_copy and ReFault even for a read; the narrow
        // pass promotes a zeroed anon and maps it with the entry's protection. A zero fill
        // is a minor fault (uobjpage = PGO_DONTCARE; 001: 1346-1347, 1366-1368; 003: 1707-1708, 1726-1728).
        d.Is(("v_vm_faults", 1), ("faults", 1), ("fltamcopy", 1), ("fault_retries", 1),
             ("flt_przero", 1), ("pages_installed", 1), ("ru_minflt", 1));
        Assert.True(p.Pmap.Writable(Pg(1)));
        Assert.Equal(1, vm.AnonsAlive);
        Assert.Equal(1, p.Space.AnonRefAt(Pg(1)));
        Assert.Null(p.Space.ObjectAt(A));              // anonymous memory has no uobj
        Assert.Contains("amap 1/4 ref 1", p.Space.DescribeMaps());
        ExitAndAssertNoAnons(p);
    }

    [Theory, MemberData(nameof(Designs))]
    public void Case2B_Copy_WriteToAPrivateFilePromotesACopy_FileUnchanged(string design)
    {
        var p = ProcWithFile(design, 4, out var v);
        var d = new Delta(p.C);
        p.Write(Pg(2) + 1, 0x42);
        d.Is(("v_vm_faults", 1), ("faults", 1), ("fltamcopy", 1), ("fault_retries", 1),
             ("fltlget", 1), ("fltget", 1), ("v_io_faults", 1), ("pager_pages", 1),
             ("flt_prcopy", 1), ("pages_installed", 1), ("ru_majflt", 1));   // lower I/O: 001: 1371; 003: 1912
        Assert.Equal(0x42, p.Read(Pg(2) + 1));
        Assert.Equal(v.Data[2 * P + 2], p.Read(Pg(2) + 2));
        Assert.Equal(MemVnode.Pattern(2 * (long)P + 1), v.Data[2 * P + 1]);
        Assert.Equal(1, vm.AnonsAlive);
    }

    [Theory, MemberData(nameof(Designs))]
    public void Case2A_ReadOfAPrivateFile_ObjectPageReadOnly_ResidentNeighboursMapped(string design)
    {
        var v = new MemVnode(8 * (long)P);
        v.LoadPages(0, 8);
        var p = Proc(design);
        p.MapFile(A, 8 * P, v);
        var d = new Delta(p.C);
        AssertPageIsFile(p, Pg(3), v, 3);
        // NORMAL: 3 back, 4 forward, all resident: 0..2 and 4..7 mapped read-only.
        d.Is(("v_vm_faults", 1), ("faults", 1), ("fltlget", 1), ("flt_obj", 1),
             ("fltnomap", 7), ("pages_prefaulted", 7), ("pages_installed", 8), ("ru_minflt", 1));   // 001: 1368; 003: 1728
        for (int i = 0; i < 8; i++) Assert.False(p.Pmap.Writable(Pg(i)));
        for (int i = 0; i < 8; i++) AssertPageIsFile(p, Pg(i), v, i);
        Assert.Equal(1, p.C.v_vm_faults);
        Assert.Equal(0, vm.AnonsAlive);
    }

    [Theory, MemberData(nameof(Designs))]
    public void Case2A_WriteToASharedFile_IsTheObjectPageWritable(string design)
    {
        var v = new MemVnode(2 * (long)P);
        var p = Proc(design);
        p.MapFile(A, 2 * P, v, shared: true);
        var d = new Delta(p.C);
        p.Write(Pg(1), 9);
        d.Is(("v_vm_faults", 1), ("faults", 1), ("fltlget", 1), ("fltget", 1), ("v_io_faults", 1),
             ("pager_pages", 1), ("flt_obj", 1), ("pages_installed", 1), ("ru_majflt", 1));   // 001: 1371; 003: 1912
        Assert.True(p.Pmap.Writable(Pg(1)));   // the write's get dirtied the vnode: writable at once
        Assert.Equal(9, v.CachePage(1)[0]);
        Assert.Equal(0, vm.AnonsAlive);
    }

    [Theory, MemberData(nameof(Designs))]
    public void Case1B_ThenCase1A_AfterFork_AnRefBackToOneOnBothSides(string design)
    {
        var parent = ProcWithAnon(design, 2);
        parent.Write(Pg(0), 1);
        var child = parent.Fork();
        Assert.Equal(1, parent.Space.AnonRefAt(Pg(0)));   // one anon, one shared amap (am_ref 2)
        Assert.Contains("ref 2", parent.Space.DescribeMaps());

        var d = new Delta(parent.C);
        parent.Write(Pg(0), 10);
        // WP fault: amap_copy (each anon gains a reference), ReFault, an_ref 2 on a write: 1B.
        // The anon's page is resident: a minor fault (001: 310-311; 003: 288-289).
        d.Is(("v_vm_faults", 1), ("faults", 1), ("fltamcopy", 1), ("fault_retries", 1),
             ("fltanget", 1), ("flt_acow", 1), ("wp_resolved", 1), ("ru_minflt", 1));
        Assert.Equal(2, vm.AnonsAlive);
        Assert.Equal(1, parent.Space.AnonRefAt(Pg(0)));
        Assert.Equal(1, child.Space.AnonRefAt(Pg(0)));    // the old anon: only the child's amap now

        var dc = new Delta(child.C);
        child.Write(Pg(0), 20);
        // The child's amap is no longer shared: amap_copy just clears needs_copy; an_ref 1: 1A.
        dc.Is(("v_vm_faults", 1), ("faults", 1), ("fltamcopy", 1), ("fault_retries", 1),
              ("fltanget", 1), ("flt_anon", 1), ("wp_resolved", 1), ("ru_minflt", 1));
        Assert.Equal(10, parent.Read(Pg(0)));
        Assert.Equal(20, child.Read(Pg(0)));
        ExitAndAssertNoAnons(child, parent);
    }

    [Theory, MemberData(nameof(Designs))]
    public void AfterFork_ReadLeavesFltamcopy_WriteIncrementsIt(string design)
    {
        var parent = ProcWithFile(design, 4, out var v);
        parent.Write(Pg(1), 5);                           // the parent's amap
        var child = parent.Fork();

        var d = new Delta(child.C);
        AssertPageIsFile(child, Pg(2), v, 2);             // needs_copy, but a read with a uobj: 2A read-only
        Assert.Equal(0, child.C.fltamcopy);
        Assert.Equal(1, child.C.flt_obj);
        Assert.False(child.Pmap.Writable(Pg(2)));
        child.Write(Pg(2), 6);                            // WP: amap_copy, ReFault, 2B copy
        Assert.Equal(1, child.C.fltamcopy);
        Assert.Equal(1, child.C.flt_prcopy);
        Assert.Equal(5, child.Read(Pg(1)));
        Assert.Equal(6, child.Read(Pg(2)));
        AssertPageIsFile(parent, Pg(2), v, 2);
        Assert.Equal(2, child.Space.AnonRefAt(Pg(1)));    // shared by both amaps until someone writes
        ExitAndAssertFreed(parent, child);
    }

    [Theory, MemberData(nameof(Designs))]
    public void AmapCopy_ChunksALargeEntry(string design)
    {
        var p = ProcWithAnon(design, 1024);
        p.Write(Pg(100), 1);
        var lines = p.Space.DescribeMaps().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(3, lines.Length);                    // [0,96) [96,112) [112,1024)
        Assert.StartsWith($"{Pg(96):x12}-{Pg(112):x12}", lines[1]);
        Assert.Contains("amap 1/16 ref 1", lines[1]);
        Assert.Contains("amap none", lines[0]);
        p.Write(Pg(101), 2);
        Assert.Equal(1, p.C.fltamcopy);                   // same chunk: the amap is there
        p.Write(Pg(500), 3);
        Assert.Equal(2, p.C.fltamcopy);
        Assert.Equal(5, p.Space.DescribeMaps().Split('\n', StringSplitOptions.RemoveEmptyEntries).Length);
        Assert.Equal(1, p.Read(Pg(100)));
        Assert.Equal(3, p.Read(Pg(500)));
    }

    [Theory, MemberData(nameof(Designs))]
    public void Advice_RandomNoNeighbours_SequentialFlushesBehindAndLooksAhead(string design)
    {
        var v = new MemVnode(32 * (long)P);
        v.LoadPages(0, 32);
        var p = Proc(design);
        p.MapFile(A, 16 * P, v, prot: Prot.Read);
        p.MapFile(B, 32 * P, v, prot: Prot.Read);
        p.Space.Advise(A, 16 * P, Advice.Random);
        p.Space.Advise(B, 32 * P, Advice.Sequential);

        var d = new Delta(p.C);
        AssertPageIsFile(p, Pg(5), v, 5);
        d.Is(("v_vm_faults", 1), ("faults", 1), ("fltlget", 1), ("flt_obj", 1), ("pages_installed", 1), ("ru_minflt", 1));

        d = new Delta(p.C);
        AssertPageIsFile(p, B + 10 * P, v, 10);
        // SEQUENTIAL 8 back, 7 forward: the 8 back pages are deactivated and forgotten.
        d.Is(("v_vm_faults", 1), ("faults", 1), ("fltlget", 1), ("flt_obj", 1), ("behind_deactivated", 8),
             ("fltnomap", 7), ("pages_prefaulted", 7), ("pages_installed", 8), ("ru_minflt", 1));
        Assert.False(p.Pmap.Present(B + 9 * P));
        Assert.True(p.Pmap.Present(B + 17 * P));
        Assert.False(p.Pmap.Present(B + 18 * P));
    }

    [Theory, MemberData(nameof(Designs))]
    public void NoMemory_WaitsAndRestarts_2019KeepsTheSpareAnon(string design)
    {
        var p = ProcWithAnon(design, 2);
        vm.Swap = new MemSwap();   // something to reclaim into: wait (001: 1227-1228; 003: 636-638)
        vm.FailPageAllocs = 1;
        p.Write(Pg(0), 7);
        Assert.Equal(7, p.Read(Pg(0)));
        Assert.Equal(1, p.C.fltnoram);
        Assert.Equal(2, p.C.fault_retries);               // the amap copy, then the wait
        Assert.Equal(1, p.C.flt_przero);                  // counted by the pass that promoted
        Assert.Equal(design == "uvm2019" ? 1 : 0, p.C.spare_anon_reuse);
        Assert.Equal(1, vm.AnonsAlive);
        ExitAndAssertNoAnons(p);
    }

    [Theory, MemberData(nameof(Designs))]
    public void Remove_DropsTheAnons_SplitUnmapFreesOnlyItsOwn(string design)
    {
        var p = ProcWithAnon(design, 8);
        for (int i = 0; i < 8; i++) p.Write(Pg(i), (byte)(i + 1));
        Assert.Equal(8, vm.AnonsAlive);
        p.DontNeed(Pg(0), 2 * P);
        Assert.Equal(6, vm.AnonsAlive);
        Assert.Equal(0, p.Read(Pg(0)));
        Assert.Equal(7, vm.AnonsAlive);                   // a new zero anon
        p.Munmap(Pg(4), 2 * P);                           // split: the amap's per-slot references
        Assert.Equal(5, vm.AnonsAlive);
        Assert.Equal(7, p.Read(Pg(6)));
        Assert.Equal(3, p.Read(Pg(2)));
        ExitAndAssertNoAnons(p);
    }
}
