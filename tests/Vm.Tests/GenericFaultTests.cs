namespace Lab.Tests.Vm;

/// <summary>Behaviour every design must show: bytes, signals, protection, reference counts. Run for each resolver.</summary>
public sealed class GenericFaultTests : VmTest
{
    [Theory, MemberData(nameof(Designs))]
    public void ZeroFill_ReadThenWrite(string design)
    {
        var p = ProcWithAnon(design, 4);

        Assert.Equal(0, p.Read(Pg(1) + 5));
        Assert.Equal(1, p.C.v_vm_faults);
        Assert.Equal(1, p.C.pages_installed);
        Assert.Equal(0, p.C.pages_prefaulted);

        p.Write(Pg(1) + 5, 42);                  // installed writable: no second fault
        Assert.Equal(42, p.Read(Pg(1) + 5));
        Assert.Equal(1, p.C.v_vm_faults);
        Assert.Equal(0, p.C.internal_errors);
    }

    [Theory, MemberData(nameof(Designs))]
    public void FilePageIn_EveryPageReadsTheFile_PrivateMappingIsReadOnly(string design)
    {
        var v = new MemVnode(8 * (long)P);
        var p = Proc(design);
        p.MapFile(A, 8 * P, v, prot: Prot.Read);
        for (int i = 0; i < 8; i++) AssertPageIsFile(p, Pg(i), v, i);
        for (int i = 0; i < 8; i++) Assert.False(p.Pmap.Writable(Pg(i)));
        Assert.True(p.C.v_io_faults >= 1);
        Assert.Equal(p.C.v_vm_faults + p.C.pages_prefaulted, p.C.pages_installed);
        Assert.Equal(0, p.C.sigbus + p.C.internal_errors);
    }

    [Theory, MemberData(nameof(Designs))]
    public void TwoFilesWithOneInodeNumber_EachMapsItsOwnPages(string design)
    {
        // A deleted file's number goes to the next file: the old one, still mapped, and the new one
        // must be two objects, each with its file's pages.
        var old = new MemVnode(2 * (long)P, pos => (byte)(1 + pos % 100), ino: 7);
        var p = Proc(design);
        p.MapFile(A, 2 * P, old, prot: Prot.Read);
        AssertPageIsFile(p, Pg(0), old, 0);
        var next = new MemVnode(2 * (long)P, pos => (byte)(101 + pos % 100), ino: 7);
        p.MapFile(B, 2 * P, next, prot: Prot.Read);
        for (int i = 0; i < 2; i++)
        {
            Assert.Equal(next.Data[i * (int)P + 3], p.Read(B + (ulong)i * P + 3));
            AssertPageIsFile(p, Pg(i), old, i);
        }
        Assert.NotSame(vm.VnodeObject(old), vm.VnodeObject(next));
        Assert.Equal(1, old.ObjectHolds);
        Assert.Equal(1, next.ObjectHolds);
        // The file layer hears when each object goes, so it can let that file go.
        p.Munmap(A, 2 * P);
        Assert.Equal(0, old.ObjectHolds);
        Assert.Equal(1, next.ObjectHolds);
        p.Munmap(B, 2 * P);
        Assert.Equal(0, next.ObjectHolds);
        Assert.Equal(0, p.C.sigbus + p.C.internal_errors + p.C.pager_errors);
    }

    [Theory, MemberData(nameof(Designs))]
    public void PrivateFile_WriteFault_CopiesUp_FileUnchanged(string design)
    {
        var p = ProcWithFile(design, 4, out var v, out var before);

        p.Write(Pg(2) + 10, 0xEE);
        Assert.Equal(1, p.C.v_vm_faults);
        Assert.Equal(1, p.C.v_io_faults);
        Assert.Equal(0xEE, p.Read(Pg(2) + 10));
        Assert.Equal(before[2 * P + 11], p.Read(Pg(2) + 11));
        Assert.Equal(before, v.Data);
        Assert.Equal(before[2 * P + 10], v.CachePage(2)[10]);
        for (int i = 0; i < 4; i++)
            if (i != 2) AssertPageIsFile(p, Pg(i), v, i);
        Assert.False(p.Pmap.Writable(Pg(0)));
        Assert.Contains("private-file", p.Space.DescribeMaps());
    }

    [Theory, MemberData(nameof(Designs))]
    public void PrivateFile_ReadThenWrite_OneReadFaultOneWpFault(string design)
    {
        var v = new MemVnode(1 * (long)P);
        var p = Proc(design);
        p.MapFile(A, P, v);

        ReadThenWriteThePrivatePage(p, v);
    }

    [Theory, MemberData(nameof(Designs))]
    public void Fork_EachSideSeesItsOwnWrites(string design)
    {
        var parent = ProcWithAnon(design, 4);
        parent.Write(Pg(0), 1);
        parent.Write(Pg(1), 2);

        var child = parent.Fork();
        Assert.False(parent.Pmap.Writable(Pg(0)));   // ForkProtect
        Assert.False(child.Pmap.Writable(Pg(0)));
        parent.Write(Pg(0), 10);
        child.Write(Pg(0), 20);
        Assert.Equal(10, parent.Read(Pg(0)));
        Assert.Equal(20, child.Read(Pg(0)));
        Assert.Equal(2, parent.Read(Pg(1)));
        Assert.Equal(2, child.Read(Pg(1)));
        Assert.Equal(0, child.Read(Pg(2)));          // untouched before fork: zero
        child.Exit();
        parent.Write(Pg(1), 11);
        Assert.Equal(11, parent.Read(Pg(1)));
        Assert.Equal(10, parent.Read(Pg(0)));
        AssertNoInternalErrors(parent, child);
        ExitAndAssertFreed(parent);
    }

    [Theory, MemberData(nameof(Designs))]
    public void Fork_ChildExitsFirst_ParentWritesWithOneWpFault(string design)
    {
        var parent = ProcWithAnon(design, 2);
        parent.Write(Pg(0), 1);
        var child = parent.Fork();
        child.Exit();
        long faults = parent.C.v_vm_faults;
        parent.Write(Pg(0), 2);                       // a write-protect fault, nobody else has the page
        Assert.Equal(faults + 1, parent.C.v_vm_faults);
        Assert.Equal(1, parent.C.wp_resolved);
        Assert.Equal(2, parent.Read(Pg(0)));
    }

    [Theory, MemberData(nameof(Designs))]
    public void Fork_PrivateFile_BothSidesKeepTheirWrites(string design)
    {
        var parent = ProcWithFile(design, 2, out var v);
        parent.Write(Pg(0), 7);                       // parent's shadow gets page 0
        var child = parent.Fork();
        child.Write(Pg(0), 8);
        parent.Write(Pg(1), 9);
        Assert.Equal(7, parent.Read(Pg(0)));
        Assert.Equal(8, child.Read(Pg(0)));
        Assert.Equal(9, parent.Read(Pg(1)));
        AssertPageIsFile(child, Pg(1), v, 1);
        Assert.Equal(MemVnode.Pattern(0), v.Data[0]);
        AssertNoInternalErrors(parent, child);
        ExitAndAssertNoObjects(parent, child);
    }

    [Theory, MemberData(nameof(Designs))]
    public void ForkTree_ThreeDeep_EachSeesItsAncestorsWritesAndTheFile(string design)
    {
        var p0 = ProcWithFile(design, 4, out var v);
        p0.Write(Pg(0), 1);                          // p0: shadow S0 over the vnode object
        var p1 = p0.Fork();
        p1.Write(Pg(1), 2);                          // p1: S1 over S0
        var p2 = p1.Fork();
        p2.Write(Pg(2), 3);                          // p2: S2 over S1 over S0 over the file
        if (design is "freebsd" or "dragonfly") Assert.Contains("depth 4", p2.Space.DescribeMaps());

        // Page 3 was never touched: p2's read walks S2, S1, S0 (all anonymous) to the file.
        AssertPageIsFile(p2, Pg(3), v, 3);
        Assert.False(p2.Pmap.Writable(Pg(3)));
        p2.Write(Pg(3), 4);
        Assert.Equal(4, p2.Read(Pg(3)));
        Assert.Equal(1, p2.Read(Pg(0)));
        Assert.Equal(2, p2.Read(Pg(1)));
        Assert.Equal(2, p1.Read(Pg(1)));
        AssertPageIsFile(p0, Pg(1), v, 1);
        AssertPageIsFile(p1, Pg(3), v, 3);
        AssertNoInternalErrors(p0, p1, p2);

        // p2 hides everything: its pages read the file again, not its ancestors' writes.
        p2.DontNeed(A, 4 * P);
        for (int i = 0; i < 4; i++) AssertPageIsFile(p2, Pg(i), v, i);
        Assert.Equal(1, p0.Read(Pg(0)));
        p0.Exit(); p1.Exit(); p2.Exit();
        Assert.Equal(0, vm.ObjectsAlive);
        Assert.Equal(0, vm.AnonsAlive);
    }

    [Theory, MemberData(nameof(Designs))]
    public void SharedMapping_IsCoherentAcrossSpaces_AndReportedForWriteBack(string design)
    {
        var v = new MemVnode(4 * (long)P);
        var a = Proc(design);
        var b = Proc(design);
        a.MapFile(A, 4 * P, v, shared: true);
        b.MapFile(B, 4 * P, v, shared: true);

        a.Write(A + P + 3, 0x77);
        Assert.Equal(1, a.C.v_io_faults);
        Assert.True(a.Pmap.Writable(A + P));
        Assert.Equal(0x77, b.Read(B + P + 3));
        Assert.Equal(0, b.C.v_io_faults);             // already in the page cache

        var ranges = a.Space.SharedRanges(A, 4 * P);
        var r = Assert.Single(ranges);
        Assert.Same(v, r.Vnode);
        Assert.Equal(0, r.FirstPindex);
        Assert.Equal(4, r.Count);
        Assert.Empty(a.Space.SharedRanges(A + 4 * P, P));

        foreach (var (vn, first, count) in ranges) vn.MarkDirty(first, count);
        v.Flush();
        Assert.Equal(0x77, v.Data[P + 3]);
    }

    [Theory, MemberData(nameof(Designs))]
    public void Eof_SigBusPastTheEnd_TailOfLastPageIsZero(string design)
    {
        var v = new MemVnode(2 * (long)P + (long)P / 2);
        var p = Proc(design);
        p.MapFile(A, 4 * P, v, prot: Prot.Read);

        Assert.Equal(v.Data[2 * P + 100], p.Read(Pg(2) + 100));
        Assert.Equal(0, p.Read(Pg(2) + P / 2));
        Assert.Equal(0, p.Read(Pg(2) + P - 1));
        var e = Assert.Throws<SimSignalException>(() => p.Read(Pg(3)));
        Assert.Equal("SIGBUS", e.Signal);
        Assert.Equal(1, p.C.eof_faults);
        Assert.Equal(1, p.C.sigbus);
    }

    [Theory, MemberData(nameof(Designs))]
    public void PagerError_SigBusOnThatPageOnly(string design)
    {
        var v = new MemVnode(8 * (long)P) { ErrorAt = 5 };
        var p = Proc(design);
        p.MapFile(A, 8 * P, v, prot: Prot.Read);

        AssertPageIsFile(p, Pg(4), v, 4);             // its cluster held page 5: retried alone
        var e = Assert.Throws<SimSignalException>(() => p.Read(Pg(5)));
        Assert.Equal("SIGBUS", e.Signal);
        AssertPageIsFile(p, Pg(6), v, 6);
        AssertPageIsFile(p, Pg(3), v, 3);
        Assert.Equal(1, p.C.pager_errors);
        Assert.Equal(1, p.C.sigbus);
        Assert.False(p.Pmap.Present(Pg(5)));
    }

    [Theory, MemberData(nameof(Designs))]
    public void Remove_PrivateAnon_ReadsZeroAfter(string design)
    {
        var p = ProcWithAnon(design, 2);
        p.Write(Pg(0), 9);
        p.Write(Pg(1), 8);
        p.DontNeed(Pg(0), P);
        Assert.False(p.Space.IsInstalled(Pg(0)));
        Assert.Equal(0, p.Read(Pg(0)));
        Assert.Equal(8, p.Read(Pg(1)));
        Assert.Equal(0, p.C.internal_errors);
    }

    [Theory, MemberData(nameof(Designs))]
    public void Remove_PrivateFile_ReadsTheFileAgain(string design)
    {
        var p = ProcWithFile(design, 2, out var v);
        p.Write(Pg(1) + 1, 0xAB);
        Assert.Equal(0xAB, p.Read(Pg(1) + 1));
        p.DontNeed(A, 2 * P);
        AssertPageIsFile(p, Pg(1), v, 1);
        AssertPageIsFile(p, Pg(0), v, 0);
    }

    [Theory, MemberData(nameof(Designs))]
    public void Remove_AfterFork_HidesTheSharedOlderContent(string design)
    {
        var parent = ProcWithAnon(design, 2);
        parent.Write(Pg(0), 5);
        var child = parent.Fork();
        child.DontNeed(A, 2 * P);
        Assert.Equal(0, child.Read(Pg(0)));           // Linux: discarded, reads zero
        Assert.Equal(5, parent.Read(Pg(0)));
        child.Write(Pg(0), 6);
        Assert.Equal(6, child.Read(Pg(0)));
        Assert.Equal(5, parent.Read(Pg(0)));

        var v = new MemVnode((long)P);
        parent.MapFile(B, P, v);
        parent.Write(B, 1);
        var child2 = parent.Fork();
        child2.DontNeed(B, P);
        AssertPageIsFile(child2, B, v, 0);            // the file, not the parent's copy
        Assert.Equal(1, parent.Read(B));
        AssertNoInternalErrors(parent, child, child2);
    }

    [Theory, MemberData(nameof(Designs))]
    public void Unmap_PartialRange_SplitsTheEntry(string design)
    {
        var p = ProcWithAnon(design, 4);
        UnmapTheMiddleTwoPagesOfFour(p);

        p.Space.Unmap(Pg(1), 2 * P);                  // idempotent
        p.Munmap(A, 4 * P);
        Assert.Equal(0, vm.ObjectsAlive);
        Assert.Equal(0, vm.AnonsAlive);
    }

    [Theory, MemberData(nameof(Designs))]
    public void Remap_MovesTheContent(string design)
    {
        var p = ProcWithAnon(design, 2);
        p.Write(Pg(0), 3);
        p.Write(Pg(1), 4);
        long faults = p.C.v_vm_faults;
        p.Mremap(A, B, 2 * P);
        Assert.Equal(3, p.Read(B));
        Assert.Equal(4, p.Read(B + P));
        Assert.Equal(faults, p.C.v_vm_faults);        // the pages moved with the mapping
        Assert.Equal("SIGSEGV", Assert.Throws<SimSignalException>(() => p.Read(A)).Signal);
        Assert.True(p.Space.IsInstalled(B));
        Assert.False(p.Space.IsInstalled(A));

        // A page not yet touched follows too: it is zero at the new place.
        Assert.Equal(0, p.C.internal_errors);
    }

    [Theory, MemberData(nameof(Designs))]
    public void Grow_ExtendsPrivateFileSharedFileAndAnonymousMappings(string design)
    {
        var v = new MemVnode(8 * (long)P, i => (byte)(i / 4096 + 1));   // page k holds k+1
        var p = Proc(design);
        p.MapFile(A, 2 * P, v);                       // private, two pages of the file
        p.Write(Pg(1), 99);                           // shadowed now
        p.Space.Grow(A, 2 * P, 4 * P);                // mremap grows it in place
        Assert.Equal(99, p.Read(Pg(1)));
        Assert.Equal(3, p.Read(Pg(2)));               // the file continues: page 2 of the file
        Assert.Equal(4, p.Read(Pg(3)));
        p.Write(Pg(3), 7);
        Assert.Equal(4, v.Data[3 * P]);               // still private

        var s = Proc(design);
        s.MapFile(B, P, v, shared: true);
        s.Space.Grow(B, P, 2 * P);
        s.Write(B + P, 42);                           // shared: the file's page 1
        Assert.Equal(42, v.CachePage(1)[0]);

        var a = Proc(design);
        a.MapAnon(A, P);
        a.Space.Grow(A, P, 3 * P);
        Assert.Equal(0, a.Read(A + 2 * P));
        AssertNoInternalErrors(p, s, a);
        Assert.Equal(0, p.C.sigsegv + s.C.sigsegv + a.C.sigsegv);
    }

    [Theory, MemberData(nameof(Designs))]
    public void Prefault_NeverOutsideTheEntry(string design)
    {
        var v = new MemVnode(8 * (long)P);
        var p = Proc(design);
        // Two entries over one file, back to back: [0,4) and [4,8).
        p.MapFile(A, 4 * P, v, offset: 0, prot: Prot.Read);
        p.MapFile(Pg(4), 4 * P, v, offset: 4 * (long)P, prot: Prot.Read);
        v.LoadPages(0, 8);                            // everything resident

        p.Read(Pg(3));                                // fast path: prefault 4 back, 4 forward
        Assert.Equal(3, p.C.pages_prefaulted);        // pages 2, 1, 0 only
        for (int i = 4; i < 8; i++) Assert.False(p.Pmap.Present(Pg(i)));
        p.Read(Pg(4));
        Assert.Equal(6, p.C.pages_prefaulted);        // 5, 6, 7: nothing below the entry's start
        Assert.Equal(2, p.C.v_vm_faults);
    }

    [Theory, MemberData(nameof(Designs))]
    public void Protection_WriteToReadOnlyIsSigSegv_NotCow(string design)
    {
        var v = new MemVnode((long)P);
        var p = Proc(design);
        p.MapFile(A, P, v, prot: Prot.Read);
        Assert.Equal(FaultResult.SigSegv, p.Space.Fault(A, FaultAccess.Write));
        Assert.Equal(FaultResult.SigSegv, p.Space.Fault(B, FaultAccess.Read));
        Assert.Equal(0, p.C.v_cow_faults + p.C.flt_prcopy);
        Assert.Equal(2, p.C.sigsegv);
        Assert.Equal(2, p.C.v_vm_faults);
    }

    [Theory, MemberData(nameof(Designs))]
    public void Destroy_AllSpaces_ReturnsObjectsToBaseline(string design)
    {
        var v = new MemVnode(4 * (long)P);
        var a = ProcWithAnon(design, 4);
        a.MapFile(B, 4 * P, v);
        a.MapFile(B + 8 * P, 4 * P, v, shared: true);
        a.Write(A, 1);
        a.Write(B, 2);
        a.Write(B + 8 * P, 3);
        var b = a.Fork();
        b.Write(A, 4);
        b.Write(B + P, 5);
        var c = b.Fork();
        c.Write(A + P, 6);
        c.Munmap(A + P, P);
        Assert.True(vm.ObjectsAlive > 0);
        ExitAndAssertFreed(a, b, c);
    }

    [Theory, MemberData(nameof(Designs))]
    public void Duplicate_FaultOnAnInstalledPage_IsSuperseded(string design)
    {
        var p = Proc(design);
        p.MapAnon(A, P);
        p.Write(A, 1);
        Assert.Equal(FaultResult.Superseded, p.Space.Fault(A, FaultAccess.Write));
        Assert.Equal(1, p.Read(A));
        Assert.Equal(0, p.C.internal_errors);
        Assert.Equal(1, p.C.superseded);
    }

    [Theory, MemberData(nameof(Designs))]
    public void AnonymousBytesTheSpaceDoesNotHave_AreAnInternalError(string design)
    {
        var p = Proc(design);
        p.MapAnon(A, P);
        p.Write(A, 1);
        p.Pmap.Zap(A, P);                              // the kernel lost the page behind our back
        p.Space.ForgetInstalled(A);
        Assert.Equal("SIGBUS", Assert.Throws<SimSignalException>(() => p.Read(A)).Signal);
        Assert.Equal(1, p.C.internal_errors);
    }

    [Theory, MemberData(nameof(Designs))]
    public void WriteProtectFault_OnAPageTheModelLacks_KeepsTheBytes(string design)
    {
        var p = Proc(design);
        p.MapAnon(A, P);
        Assert.Equal(FaultResult.Resolved, p.Space.Fault(A, FaultAccess.WriteProtect));
        Assert.Equal(1, p.C.internal_errors);
        Assert.Equal(1, p.C.wp_resolved);
        Assert.Equal(0, p.Pmap.Enters);                // nothing was overwritten
    }

    [Theory, MemberData(nameof(Designs))]
    public void ConcurrentFaults_OnePagerReadPerPage(string design)
    {
        var v = new MemVnode(16 * (long)P) { LoadDelayMs = 50 };
        var spaces = new AddressSpace[8];
        var pmaps = new NullPmap[8];
        for (int i = 0; i < spaces.Length; i++)
        {
            pmaps[i] = new NullPmap(readPage: false);
            spaces[i] = vm.CreateSpace(pmaps[i], Resolvers.Create(design));
            spaces[i].MapFile(A, 16 * P, Prot.Read, v, 0, shared: true);
        }
        var results = new FaultResult[spaces.Length];
        Parallel.For(0, spaces.Length, i => results[i] = spaces[i].Fault(Pg(3), FaultAccess.Read));
        Assert.All(results, r => Assert.Equal(FaultResult.Resolved, r));
        Assert.Equal(1, v.IoCalls);
        long io = spaces.Sum(s => s.Counters.v_io_faults);
        Assert.Equal(1, io);
        foreach (var s in spaces) s.Destroy();
        Assert.Equal(0, vm.ObjectsAlive);
    }
}
