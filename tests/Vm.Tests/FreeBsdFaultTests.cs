namespace Lab.Tests.Vm;

/// <summary>FreeBSD's own counters and windows (the generic behaviour is in <see cref="GenericFaultTests"/>).</summary>
public sealed class FreeBsdFaultTests : VmTest
{
    [Fact]
    public void ZeroFill_ReadThenWrite()
    {
        var p = new SimProcess(vm);
        p.MapAnon(A, 4 * P);

        Assert.Equal(0, p.Read(Pg(1) + 5));
        Assert.Equal(1, p.C.v_vm_faults);
        Assert.Equal(1, p.C.v_zfod);
        Assert.Equal(1, p.C.pages_installed);
        Assert.Equal(0, p.C.pages_prefaulted);   // never after a zero fill

        p.Write(Pg(1) + 5, 42);                  // installed writable: no second fault
        Assert.Equal(42, p.Read(Pg(1) + 5));
        Assert.Equal(1, p.C.v_vm_faults);
        Assert.Equal(1, p.C.v_zfod);
        Assert.Equal(0, p.C.v_cow_faults);
    }

    [Fact]
    public void FilePageIn_SequentialFirstFault_ReadsAheadAndPrefaults()
    {
        var v = new MemVnode(8 * (long)P);
        var p = new SimProcess(vm);
        p.MapFile(A, 8 * P, v, prot: Prot.Read);

        Assert.Equal(v.Data[0], p.Read(A));
        // A new entry's next_read is its first pindex: the first fault there is sequential,
        // read-ahead min(7 + 15 + 1, rest of the entry) = 7.
        Assert.Equal(1, p.C.v_io_faults);
        Assert.Equal(8, v.PagesLoaded);
        Assert.Single(v.Loads);
        Assert.Equal(7, p.C.read_ahead_pages);
        Assert.Equal(0, p.C.read_behind_pages);
        Assert.Equal(7, p.C.pages_prefaulted);
        Assert.Equal(8, p.C.pages_installed);

        for (int i = 0; i < 8; i++) AssertPageIsFile(p, Pg(i), v, i);
        Assert.Equal(1, p.C.v_vm_faults);        // the neighbours were prefaulted
        for (int i = 0; i < 8; i++) Assert.False(p.Pmap.Writable(Pg(i)));
    }

    [Fact]
    public void FilePageIn_RandomThenSequential_ClusterThenGrowingWindow()
    {
        var v = new MemVnode(64 * (long)P);
        var p = new SimProcess(vm);
        p.MapFile(A, 64 * P, v, prot: Prot.Read);

        // pindex 20 is not next_read: the aligned 16-page cluster 16..31.
        AssertPageIsFile(p, Pg(20), v, 20);
        Assert.Equal((16L, 16), v.Loads[0]);
        Assert.Equal(4, p.C.read_behind_pages);
        Assert.Equal(11, p.C.read_ahead_pages);
        Assert.Equal(15, p.C.pages_prefaulted);   // behind 4 + ahead 11, all resident

        // next_read = 20 + 11 + 1 = 32: sequential, read_ahead was 0, so ahead = 7.
        AssertPageIsFile(p, Pg(32), v, 32);
        Assert.Equal((32L, 8), v.Loads[1]);
        // next_read = 40, read_ahead 7: ahead = 7 + 7 + 1 = 15.
        AssertPageIsFile(p, Pg(40), v, 40);
        Assert.Equal((40L, 16), v.Loads[2]);
        Assert.Equal(3, p.C.v_io_faults);
        Assert.Equal(3, p.C.v_vm_faults);
    }

    [Fact]
    public void PrivateFile_WriteFault_CopiesUp_FileUnchanged()
    {
        var v = new MemVnode(4 * (long)P);
        var before = (byte[])v.Data.Clone();
        var p = new SimProcess(vm);
        p.MapFile(A, 4 * P, v);

        p.Write(Pg(2) + 10, 0xEE);
        Assert.Equal(1, p.C.v_vm_faults);
        Assert.Equal(1, p.C.v_cow_faults);
        Assert.Equal(0, p.C.v_cow_optim);
        Assert.Equal(1, p.C.v_io_faults);
        Assert.Equal(1, p.C.shadows_created);
        Assert.Equal(4, v.PagesLoaded);            // cluster 0..15 clipped to the 4-page file

        Assert.Equal(0xEE, p.Read(Pg(2) + 10));
        Assert.Equal(before[2 * P + 11], p.Read(Pg(2) + 11));
        Assert.Equal(before, v.Data);
        Assert.Equal(before[2 * P + 10], v.CachePage(2)[10]);
        // The neighbours came in read-only from the vnode object under the shadow.
        Assert.Equal(3, p.C.pages_prefaulted);
        AssertPageIsFile(p, Pg(0), v, 0);
        Assert.False(p.Pmap.Writable(Pg(0)));
        Assert.Equal(1, p.C.v_vm_faults);
        Assert.Contains("private-file", p.Space.DescribeMaps());
        Assert.Contains("depth 2", p.Space.DescribeMaps());
    }

    [Fact]
    public void PrivateFile_ReadThenWrite_OneReadFaultOneWpFault()
    {
        var v = new MemVnode(1 * (long)P);
        var p = new SimProcess(vm);
        p.MapFile(A, P, v);

        ReadThenWriteThePrivatePage(p, v);
        Assert.Equal(1, p.C.v_cow_faults);
    }

    [Theory, InlineData(true), InlineData(false)]
    public void Fork_EachSideSeesItsOwnWrites_CollapseOrMoveAfterTheOtherSideExits(bool collapse)
    {
        vm.CollapseEnabled = collapse;
        var parent = new SimProcess(vm);
        parent.MapAnon(A, 4 * P);
        parent.Write(Pg(0), 1);
        parent.Write(Pg(1), 2);
        var anon = parent.Space.ObjectAt(A)!.Value.Object;

        var child = parent.Fork();
        Assert.False(parent.Pmap.Writable(Pg(0)));   // ForkProtect
        Assert.False(child.Pmap.Writable(Pg(0)));
        Assert.Equal(2, anon.RefCount);

        // Parent's first write: shadow over the shared object (ref 2), so copy.
        parent.Write(Pg(0), 10);
        Assert.Equal(1, parent.C.v_cow_faults);
        Assert.Equal(0, parent.C.v_cow_optim);
        Assert.Equal(1, anon.ShadowCount);
        Assert.Equal(2, anon.RefCount);

        // Child's first write: a second shadow, so copy again.
        child.Write(Pg(0), 20);
        Assert.Equal(1, child.C.v_cow_faults);
        Assert.Equal(0, child.C.v_cow_optim);
        Assert.Equal(2, anon.ShadowCount);

        Assert.Equal(10, parent.Read(Pg(0)));
        Assert.Equal(20, child.Read(Pg(0)));
        Assert.Equal(2, parent.Read(Pg(1)));
        Assert.Equal(2, child.Read(Pg(1)));
        Assert.Equal(0, child.Read(Pg(2)));          // untouched before fork: zero fill in the child's shadow
        Assert.Equal(1, child.C.v_zfod);
        var shadow = parent.Space.ObjectAt(A)!.Value.Object;
        Assert.Equal(2, parent.Space.ChainDepth(A));

        // The child exits: the old object is left with one reference and one shadow.
        child.Exit();
        if (collapse)
        {
            // vm_object_deallocate collapses it into the parent's shadow: page 1 moves
            // up (page 0 is hidden by the parent's copy), the old object is freed.
            Assert.Equal(1, child.C.collapses);
            Assert.True(anon.IsDead);
            Assert.Equal(1, parent.Space.ChainDepth(A));
            Assert.Equal(2, shadow.ResidentCount);
            parent.Write(Pg(1), 11);                 // the first object's page: no copy-on-write
            Assert.Equal(1, parent.C.v_cow_faults);
            Assert.Equal(1, parent.C.fastpath_hits);
            Assert.Equal(2, parent.C.wp_resolved);   // the copy-on-write of page 0, then this one
        }
        else
        {
            // Without collapse the parent's next write to a page the old object holds
            // moves the page instead of copying it.
            Assert.Equal(1, anon.RefCount);
            Assert.Equal(1, anon.ShadowCount);
            Assert.Equal(2, anon.ResidentCount);
            parent.Write(Pg(1), 11);
            Assert.Equal(2, parent.C.v_cow_faults);
            Assert.Equal(1, parent.C.v_cow_optim);
            Assert.Equal(1, anon.ResidentCount);
        }
        Assert.Equal(11, parent.Read(Pg(1)));
        Assert.Equal(10, parent.Read(Pg(0)));
        Assert.Equal(0, parent.C.internal_errors);

        ExitAndAssertNoObjects(parent);
    }

    [Fact]
    public void Fork_ChildExitsFirst_ParentWritesWithoutShadowOrCow()
    {
        var parent = new SimProcess(vm);
        parent.MapAnon(A, 2 * P);
        parent.Write(Pg(0), 1);
        var child = parent.Fork();
        child.Exit();
        parent.Write(Pg(0), 2);                       // a write-protect fault, object no longer shared
        Assert.Equal(0, parent.C.shadows_created);
        Assert.Equal(0, parent.C.v_cow_faults);
        Assert.Equal(1, parent.C.wp_resolved);
        Assert.Equal(2, parent.Read(Pg(0)));
    }

    [Fact]
    public void SharedMapping_PrefaultedPageIsReadOnlyUntilWritten()
    {
        var v = new MemVnode(4 * (long)P);
        var a = new SimProcess(vm);
        a.MapFile(A, 4 * P, v, shared: true);
        a.Read(A);                                    // reads ahead 0..3, prefaults 1..3 read-only
        Assert.Equal(3, a.C.pages_prefaulted);
        a.Write(Pg(2), 5);
        Assert.Equal(FaultAccess.WriteProtect, a.Pmap.Faults[^1]);
        Assert.Equal(5, v.CachePage(2)[0]);
    }

    [Fact]
    public void Unmap_PartialRange_SplitsTheEntry()
    {
        var p = new SimProcess(vm);
        p.MapAnon(A, 4 * P);
        UnmapTheMiddleTwoPagesOfFour(p);
        var obj = p.Space.ObjectAt(A)!.Value.Object;
        Assert.Equal(2, obj.RefCount);               // one object, two entries

        p.Space.Unmap(Pg(1), 2 * P);                  // idempotent
        p.Munmap(A, 4 * P);
        Assert.Equal(0, vm.ObjectsAlive);
    }

    [Fact]
    public void Prefault_StopsAtAHole()
    {
        var v = new MemVnode(8 * (long)P);
        var p = new SimProcess(vm);
        p.MapFile(A, 8 * P, v, prot: Prot.Read);
        v.LoadPages(3, 1);
        v.LoadPages(4, 1);
        v.LoadPages(6, 1);                            // 5 is a hole; 2 is a hole
        p.Read(Pg(4));
        // Spiral: 3 (mapped), 5 (hole: stop). 6 is never reached.
        Assert.Equal(1, p.C.pages_prefaulted);
        Assert.True(p.Pmap.Present(Pg(3)));
        Assert.False(p.Pmap.Present(Pg(6)));
    }

    [Fact]
    public void WriteProtectFault_OnAPageTheModelLacks_KeepsTheBytes()
    {
        var p = new SimProcess(vm);
        p.MapAnon(A, P);
        Assert.Equal(FaultResult.Resolved, p.Space.Fault(A, FaultAccess.WriteProtect));
        Assert.Equal(1, p.C.internal_errors);
        Assert.Equal(0, p.C.v_zfod);
        Assert.Equal(1, p.C.wp_resolved);
        Assert.Equal(0, p.Pmap.Enters);                // nothing was overwritten
    }
}
