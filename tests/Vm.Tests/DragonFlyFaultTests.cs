namespace Lab.Tests.Vm;

/// <summary>What DragonFly (seed 002) does differently from FreeBSD, with exact counter deltas.</summary>
public sealed class DragonFlyFaultTests : VmTest
{
    SimProcess Proc() => new(vm, Resolvers.Create("dragonfly"));

    [Fact]
    public void ReadWindow_RandomFault_SevenBehindEightAhead_ThenSequentialFoldsAndCachesBehind()
    {
        var v = new MemVnode(64 * (long)P);
        var p = Proc();
        p.MapFile(A, 64 * P, v, prot: Prot.Read);

        // lastr starts at 0: pindex 20 is not within [0, 16), so random: 7 behind, 8 ahead.
        AssertPageIsFile(p, Pg(20), v, 20);
        Assert.Equal((13L, 16), v.Loads[0]);
        Assert.Equal(7, p.C.read_behind_pages);
        Assert.Equal(8, p.C.read_ahead_pages);
        Assert.Equal(0, p.C.behind_deactivated);
        Assert.Equal(8, p.C.pages_prefaulted);      // pmap_prefault 4 back, 4 forward: 16..24
        Assert.Equal(0, p.C.fastpath_hits);         // DragonFly 2006 has no fast path

        // lastr = 20 + 16 - 7 = 29: a fault at 29 is sequential. The 16 valid pages behind
        // it (13..28) are cached/deactivated, and behind folds into ahead: 29..44.
        AssertPageIsFile(p, Pg(29), v, 29);
        Assert.Equal((29L, 16), v.Loads[1]);
        Assert.Equal(7, p.C.read_behind_pages);
        Assert.Equal(8 + 15, p.C.read_ahead_pages);
        Assert.Equal(16, p.C.behind_deactivated);
        Assert.Equal(16, p.C.pages_prefaulted);     // 25..28 behind, 30..33 ahead
        Assert.Equal(2, p.C.v_io_faults);
        Assert.Equal(2, p.C.v_vm_faults);

        // lastr = 29 + 16 = 45; pindex 62 is past 45 + 16: random again, ahead clipped to
        // the object (at least one), 7 behind.
        AssertPageIsFile(p, Pg(62), v, 62);
        Assert.Equal((55L, 9), v.Loads[2]);
        Assert.Equal(16, p.C.behind_deactivated);
    }

    [Fact]
    public void Advice_RandomReadsThePageAlone_SequentialFoldsFromTheStart()
    {
        var v = new MemVnode(64 * (long)P);
        var p = Proc();
        p.MapFile(A, 32 * P, v, prot: Prot.Read);
        p.MapFile(B, 32 * P, v, offset: 32 * (long)P, prot: Prot.Read);
        p.Space.Advise(A, 32 * P, Advice.Random);
        p.Space.Advise(B, 32 * P, Advice.Sequential);

        AssertPageIsFile(p, Pg(20), v, 20);
        Assert.Equal((20L, 1), v.Loads[0]);
        Assert.Equal(0, p.C.read_ahead_pages + p.C.read_behind_pages);

        AssertPageIsFile(p, B + 20 * P, v, 52);    // object pindex 52, sequential by advice
        Assert.Equal((52L, 12), v.Loads[1]);       // 7 + 8 ahead clipped to the 64-page file
        Assert.Equal(0, p.C.read_behind_pages);
        Assert.Equal(11, p.C.read_ahead_pages);
    }

    [Fact]
    public void CowMove_WithUnchangedGeneration_AfterTheOtherSideExits()
    {
        vm.CollapseEnabled = false;   // else the exit collapses the object and there is nothing to move
        var parent = Proc();
        parent.MapAnon(A, 4 * P);
        parent.Write(Pg(0), 1);
        parent.Write(Pg(1), 2);
        var anon = parent.Space.ObjectAt(A)!.Value.Object;
        var child = parent.Fork();
        parent.Write(Pg(0), 10);                      // shared backing object: copy
        Assert.Equal(1, parent.C.v_cow_faults);
        Assert.Equal(0, parent.C.v_cow_optim);
        child.Exit();
        parent.Write(Pg(1), 11);                      // ref 1, shadow 1, generation unchanged: move
        Assert.Equal(2, parent.C.v_cow_faults);
        Assert.Equal(1, parent.C.v_cow_optim);
        Assert.Equal(1, anon.ResidentCount);         // page 0 was copied, so the old object keeps it
        Assert.Equal(10, parent.Read(Pg(0)));
        Assert.Equal(11, parent.Read(Pg(1)));
        Assert.Equal(0, parent.C.fault_retries);
        ExitAndAssertNoObjects(parent);
    }

    [Fact]
    public void GenerationChangedDuringIo_RetriesWithoutReLookup_AndDoesNotMove()
    {
        var v = new MemVnode(4 * (long)P);
        var p = Proc();
        MapAndChangeTheMapOnFirstLoad(p, v);

        p.Write(Pg(2) + 1, 0x5A);                     // write fault: shadow, walk to the vnode, I/O
        Assert.Equal(1, p.C.v_vm_faults);
        Assert.Equal(1, p.C.v_io_faults);
        Assert.Equal(1, p.C.revalidate_retries);      // TRY_AGAIN after the I/O
        Assert.Equal(1, p.C.fault_retries);
        Assert.Equal(1, p.C.v_cow_faults);            // the copy made before the check stays; counted once
        Assert.Equal(0, p.C.v_cow_optim);
        Assert.Equal(1, p.C.pages_installed - p.C.pages_prefaulted);
        Assert.Equal(0x5A, p.Read(Pg(2) + 1));
        Assert.Equal(v.Data[2 * P + 2], p.Read(Pg(2) + 2));
        Assert.Equal(MemVnode.Pattern(2 * (long)P + 1), v.Data[2 * P + 1]);
        Assert.Equal(0, p.C.internal_errors);
    }

    [Fact]
    public void FreeBsd_SameMapChangeDuringIo_ReLooksUpAndGoesOn()
    {
        var v = new MemVnode(4 * (long)P);
        var p = new SimProcess(vm, Resolvers.Create("freebsd"));
        MapAndChangeTheMapOnFirstLoad(p, v);
        p.Write(Pg(2) + 1, 0x5A);
        Assert.Equal(0, p.C.fault_retries);           // same object and pindex after the re-lookup
        Assert.Equal(0, p.C.revalidate_retries);
        Assert.Equal(1, p.C.v_cow_faults);
        Assert.Equal(0x5A, p.Read(Pg(2) + 1));
    }

    [Fact]
    public void UnmapDuringIo_NothingInstalledAtTheStaleAddress()
    {
        var v = new MemVnode(4 * (long)P);
        var p = Proc();
        p.MapFile(A, 4 * P, v);
        v.OnLoad = (_, _) => p.Space.Unmap(A, 4 * P);
        Assert.Equal(FaultResult.SigSegv, p.Space.Fault(Pg(1), FaultAccess.Read));
        Assert.False(p.Pmap.Present(Pg(1)));
        Assert.Equal(1, p.C.revalidate_retries);
        Assert.Equal(0, vm.ObjectsAlive);
    }

    /// <summary>
    /// The file at A (4 pages) and one anonymous page at B; the file's first load protects B,
    /// as another thread changing the map during the I/O would.
    /// </summary>
    static void MapAndChangeTheMapOnFirstLoad(SimProcess p, MemVnode v)
    {
        p.MapFile(A, 4 * P, v);
        p.MapAnon(B, P);
        bool once = false;
        v.OnLoad = (_, _) =>
        {
            if (once) return;
            once = true;
            p.Space.Protect(B, P, Prot.Read);
        };
    }
}
