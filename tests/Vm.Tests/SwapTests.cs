namespace Lab.Tests.Vm;

/// <summary>Eviction to the swap device and swap-in, for every design (SEEDS §4 invariants 6, 14, 20, 21).</summary>
public sealed class SwapTests : VmTest
{
    readonly MemSwap swap = new();

    public SwapTests() => vm.Swap = swap;

    static void Fill(SimProcess p, ulong va, byte seed)
    {
        for (ulong i = 0; i < P; i += 61) p.Write(va + i, (byte)(seed + i));
    }

    static void AssertFilled(SimProcess p, ulong va, byte seed)
    {
        for (ulong i = 0; i < P; i += 61) Assert.Equal((byte)(seed + i), p.Read(va + i));
    }

    void ExitAndAssertBaseline(params SimProcess[] ps) => ExitAndAssertNothingLeft(swap, ps);

    [Theory, MemberData(nameof(Designs))]
    public void WriteEvictReadBack_SameBytes_OnePagein_NoVnodeRead(string design)
    {
        var v = new MemVnode((long)P);
        var p = Proc(design);
        p.MapFile(A, P, v);                      // one page: no neighbours to prefault
        Fill(p, Pg(0), 3);                       // a private copy of the file page
        Assert.Equal(EvictResult.Evicted, p.Space.Evict(Pg(0)));
        Assert.False(p.Pmap.Present(Pg(0)));
        Assert.False(p.Space.IsInstalled(Pg(0)));
        Assert.Equal(1, p.C.pageouts);
        Assert.Equal(1, vm.SwapSlotsInUse);
        int reads = v.ReadCalls, loads = v.LoadCalls;
        long io = p.C.v_io_faults;

        AssertFilled(p, Pg(0), 3);
        Assert.Equal(1, p.C.pageins);
        Assert.Equal(reads, v.ReadCalls);
        Assert.Equal(loads, v.LoadCalls);
        Assert.Equal(0, p.C.sigbus + p.C.internal_errors);
        Assert.Equal(design.StartsWith("uvm") ? 0 : 1, p.C.v_io_faults - io);   // a major fault (BSD counter)

        // Its swap copy is current: a second eviction needs no I/O.
        Assert.Equal(EvictResult.Clean, p.Space.Evict(Pg(0)));
        Assert.Equal(1, swap.Writes);
        AssertFilled(p, Pg(0), 3);
        Assert.Equal(2, p.C.pageins);
        ExitAndAssertBaseline(p);
    }

    [Theory, MemberData(nameof(Designs))]
    public void IsPagedOut_OnlyForPagesWhoseBytesAreInSwapAlone(string design)
    {
        var p = ProcWithAnon(design, 4);
        Fill(p, Pg(0), 5);
        Fill(p, Pg(1), 6);
        Assert.Equal(EvictResult.Evicted, p.Space.Evict(Pg(0)));
        Assert.True(p.Space.IsPagedOut(Pg(0)));
        Assert.True(p.Space.IsPagedOut(Pg(0) + 123));   // any address in the page
        Assert.False(p.Space.IsPagedOut(Pg(1)));        // written, still in the process
        Assert.False(p.Space.IsPagedOut(Pg(2)));        // never touched: nothing to bring back
        Assert.False(p.Space.IsPagedOut(A + 4 * P));    // not mapped
        AssertFilled(p, Pg(0), 5);                       // swapped in
        Assert.False(p.Space.IsPagedOut(Pg(0)));
        // A fork's child sees its parent's paged-out page through the chain or the amap.
        Assert.Equal(EvictResult.Evicted, p.Space.Evict(Pg(1)));
        var child = p.Fork();
        Assert.True(child.Space.IsPagedOut(Pg(1)));
        ExitAndAssertBaseline(child, p);
    }

    [Theory, MemberData(nameof(Designs))]
    public void AnonymousPages_RoundTrip(string design)
    {
        var p = ProcWithAnon(design, 8);
        for (int i = 0; i < 8; i++) Fill(p, Pg(i), (byte)(10 * i + 1));
        for (int i = 0; i < 8; i++) Assert.Equal(EvictResult.Evicted, p.Space.Evict(Pg(i)));
        Assert.Equal(8, vm.SwapSlotsInUse);
        for (int i = 7; i >= 0; i--) AssertFilled(p, Pg(i), (byte)(10 * i + 1));
        Assert.Equal(8, p.C.pageins);
        Assert.Equal(0, p.C.internal_errors);
        ExitAndAssertBaseline(p);
    }

    [Theory, MemberData(nameof(Designs))]
    public void CleanPrivateFilePage_DroppedWithoutSwap_ReReadFromFile(string design)
    {
        var v = new MemVnode((long)P);
        var p = Proc(design);
        p.MapFile(A, P, v);
        Assert.Equal(v.Data[100], p.Read(Pg(0) + 100));
        int reads = v.ReadCalls;
        Assert.Equal(EvictResult.Clean, p.Space.Evict(Pg(0)));
        Assert.Equal(1, p.C.evict_clean);
        Assert.Equal(0, swap.Writes);
        Assert.False(p.Pmap.Present(Pg(0)));
        Assert.Equal(v.Data[100], p.Read(Pg(0) + 100));
        Assert.True(v.ReadCalls > reads);
        Assert.Equal(0, p.C.pageins);
        ExitAndAssertBaseline(p);
    }

    [Theory, MemberData(nameof(Designs))]
    public void ZeroPage_And_Unmapped_And_Absent(string design)
    {
        var p = Proc(design);
        p.MapAnon(A, 2 * P, Prot.Read);              // read-only: the zero fill is known zero (writable ones are dirty)
        Assert.Equal(EvictResult.NotResident, p.Space.Evict(Pg(0)));
        Assert.Equal(EvictResult.NotResident, p.Space.Evict(Pg(9)));
        Assert.Equal(0, p.Read(Pg(0)));
        Assert.Equal(EvictResult.Clean, p.Space.Evict(Pg(0)));
        Assert.Equal(0, p.Read(Pg(0)));
        Assert.Equal(0, swap.Writes);
        ExitAndAssertBaseline(p);
    }

    [Theory, MemberData(nameof(Designs))]
    public void ForkThenEvictInParent_ChildUnaffected(string design)
    {
        var parent = ProcWithAnon(design, 4);
        for (int i = 0; i < 4; i++) Fill(parent, Pg(i), (byte)(i + 5));
        var child = parent.Fork();
        Assert.Equal(EvictResult.Evicted, parent.Space.Evict(Pg(0)));
        Assert.Equal(EvictResult.Evicted, parent.Space.Evict(Pg(1)));
        AssertFilled(child, Pg(0), 5);               // the child still has its copy
        Assert.Equal(0, child.C.pageins);
        Fill(child, Pg(1), 77);                      // a child write does not reach the parent
        AssertFilled(parent, Pg(0), 5);
        AssertFilled(parent, Pg(1), 6);
        Assert.Equal(2, parent.C.pageins);
        AssertFilled(child, Pg(1), 77);
        // Evicting the child's copy of a page the parent paged out needs no second write.
        Assert.Equal(EvictResult.Clean, child.Space.Evict(Pg(0)));
        AssertFilled(child, Pg(0), 5);
        AssertNoInternalErrors(parent, child);
        parent.Exit();
        AssertFilled(child, Pg(0), 5);
        ExitAndAssertBaseline(child);
    }

    /// <summary>After fork the paged-out page is shared copy-on-write: a write fault copies it from the swap slot.</summary>
    [Theory, MemberData(nameof(Designs))]
    public void CopyOnWriteFromASwappedPage(string design)
    {
        var parent = ProcWithAnon(design, 2);
        Fill(parent, Pg(0), 20);
        var child = parent.Fork();
        Assert.Equal(EvictResult.Evicted, parent.Space.Evict(Pg(0)));
        parent.Write(Pg(0) + 1, 0xEE);               // a write fault on a page not present: swap-in, then copy
        Assert.Equal(0xEE, parent.Read(Pg(0) + 1));
        Assert.Equal(20, parent.Read(Pg(0)));
        Assert.Equal(1, parent.C.pageins);
        AssertFilled(child, Pg(0), 20);
        AssertNoInternalErrors(parent, child);
        ExitAndAssertBaseline(parent, child);
    }

    /// <summary>The copy-on-write source's slot is corrupt: SIGBUS on the write, no half-made copy left behind, the child unaffected.</summary>
    [Theory, MemberData(nameof(Designs))]
    public void CopyOnWriteFromACorruptSlot_SigBus(string design)
    {
        var parent = ProcWithAnon(design, 2);
        Fill(parent, Pg(0), 30);
        Fill(parent, Pg(1), 31);
        var child = parent.Fork();
        Assert.Equal(EvictResult.Evicted, parent.Space.Evict(Pg(0)));
        swap.Corrupt(swap.LastSlot);
        Assert.Throws<SimSignalException>(() => parent.Write(Pg(0), 1));
        Assert.Throws<SimSignalException>(() => parent.Read(Pg(0)));
        AssertFilled(parent, Pg(1), 31);
        AssertFilled(child, Pg(0), 30);
        Fill(child, Pg(0), 40);
        AssertFilled(child, Pg(0), 40);
        AssertNoInternalErrors(parent, child);
        ExitAndAssertBaseline(parent, child);
    }

    [Theory, MemberData(nameof(Designs))]
    public void CorruptSlot_SigBusOnThatPageOnly(string design)
    {
        var p = ProcWithAnon(design, 2);
        Fill(p, Pg(0), 1);
        Fill(p, Pg(1), 2);
        Assert.Equal(EvictResult.Evicted, p.Space.Evict(Pg(0)));
        long bad = swap.LastSlot;
        Assert.Equal(EvictResult.Evicted, p.Space.Evict(Pg(1)));
        swap.Corrupt(bad);
        var e = Assert.Throws<SimSignalException>(() => p.Read(Pg(0)));
        Assert.Equal("SIGBUS", e.Signal);
        Assert.Contains(bad, swap.Bad);
        Assert.Equal(1, p.C.swap_bad_slots);
        AssertFilled(p, Pg(1), 2);
        Assert.Throws<SimSignalException>(() => p.Read(Pg(0) + 7));   // still poisoned, never zeros
        ExitAndAssertBaseline(p);
    }

    [Theory, MemberData(nameof(Designs))]
    public void WiredPage_IsNotEvicted(string design)
    {
        var p = ProcWithAnon(design, 2);
        Fill(p, Pg(0), 1);
        Assert.True(p.Space.Wire(A, P));
        Assert.Equal(EvictResult.Wired, p.Space.Evict(Pg(0)));
        Assert.True(p.Pmap.Present(Pg(0)));
        p.Space.Unwire(A, P);
        Assert.Equal(EvictResult.Evicted, p.Space.Evict(Pg(0)));
        AssertFilled(p, Pg(0), 1);
        ExitAndAssertBaseline(p);
    }

    [Theory, MemberData(nameof(Designs))]
    public void NoSwapDevice_DirtyPageStays(string design)
    {
        vm.Swap = null;
        var p = Proc(design);
        p.MapAnon(A, P);
        Fill(p, Pg(0), 9);
        Assert.Equal(EvictResult.NoSwap, p.Space.Evict(Pg(0)));
        Assert.True(p.Pmap.Present(Pg(0)));
        AssertFilled(p, Pg(0), 9);
        Fill(p, Pg(0), 11);
        AssertFilled(p, Pg(0), 11);
        p.Exit();
        Assert.Equal(0, vm.SwapSlotsInUse);
    }

    [Theory, MemberData(nameof(Designs))]
    public void FullDevice_NoSwap(string design)
    {
        swap.Capacity = 1;
        var p = ProcWithAnon(design, 2);
        Fill(p, Pg(0), 1);
        Fill(p, Pg(1), 2);
        Assert.Equal(EvictResult.Evicted, p.Space.Evict(Pg(0)));
        Assert.Equal(EvictResult.NoSwap, p.Space.Evict(Pg(1)));
        AssertFilled(p, Pg(1), 2);
        Fill(p, Pg(1), 3);                            // left write-protected: the write faults and resolves
        AssertFilled(p, Pg(1), 3);
        AssertFilled(p, Pg(0), 1);
        ExitAndAssertBaseline(p);
    }

    /// <summary>
    /// FreeBSD and DragonFly free the swap copy when a write dirties the page (000: 234–239;
    /// 002: 1022–1026, the user write passing VM_FAULT_DIRTY); UVM keeps the (stale) slot.
    /// Either way the next page-out writes the new bytes.
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void WriteAfterSwapIn_SlotPolicy(string design)
    {
        bool frees = !design.StartsWith("uvm");
        var p = Proc(design);
        p.MapAnon(A, P);
        Fill(p, Pg(0), 1);
        Assert.Equal(EvictResult.Evicted, p.Space.Evict(Pg(0)));
        AssertFilled(p, Pg(0), 1);                   // swapped in by a read: installed write-protected
        Assert.False(p.Pmap.Writable(Pg(0)));
        Assert.Equal(1, vm.SwapSlotsInUse);
        p.Write(Pg(0), 99);                          // a write-protect fault dirties it
        Assert.Equal(frees ? 0 : 1, vm.SwapSlotsInUse);
        Assert.Equal(frees ? 1 : 0, p.C.swap_slots_freed_on_dirty);
        Assert.Equal(EvictResult.Evicted, p.Space.Evict(Pg(0)));   // the new bytes are written
        Assert.Equal(2, swap.Writes);
        Assert.Equal(1, vm.SwapSlotsInUse);
        Assert.Equal(99, p.Read(Pg(0)));
        ExitAndAssertBaseline(p);
    }

    [Theory, MemberData(nameof(Designs))]
    public void WriteFaultOnSwappedPage_SwapsInWritable(string design)
    {
        var p = Proc(design);
        p.MapAnon(A, P);
        Fill(p, Pg(0), 4);
        p.Space.Evict(Pg(0));
        p.Write(Pg(0) + 1, 200);                      // a write fault on the evicted page
        Assert.True(p.Pmap.Writable(Pg(0)));
        Assert.Equal(200, p.Read(Pg(0) + 1));
        Assert.Equal(4, p.Read(Pg(0)));
        Assert.Equal(1, p.C.pageins);
        Assert.Equal(design.StartsWith("uvm") ? 1 : 0, vm.SwapSlotsInUse);   // dirtied: 000: 234–239; 002: 1022–1026
        ExitAndAssertBaseline(p);
    }

    [Theory, MemberData(nameof(Designs))]
    public void FaultDuringEviction_Retries(string design)
    {
        var p = Proc(design);
        p.MapAnon(A, P);
        Fill(p, Pg(0), 6);
        Assert.Equal(EvictResult.Evicted, p.Space.BeginEvict(Pg(0)));
        Assert.Equal(EvictResult.Busy, p.Space.BeginEvict(Pg(0)));
        // The write that raced with the removal arrives as a write-protect fault.
        Assert.Equal(FaultResult.Retry, p.Space.Fault(Pg(0), FaultAccess.WriteProtect));
        Assert.Equal(FaultResult.Retry, p.Space.Fault(Pg(0), FaultAccess.Read));
        Assert.Equal(2, p.C.evict_retries);
        Assert.Equal(0, p.C.wp_resolved);
        p.Space.CompleteEvict(Pg(0));
        AssertFilled(p, Pg(0), 6);
        Assert.Equal(1, p.C.pageins);
        ExitAndAssertBaseline(p);
    }

    [Theory, MemberData(nameof(Designs))]
    public void SharedFilePage_Clean(string design)
    {
        var v = new MemVnode(2 * (long)P);
        var p = Proc(design);
        p.MapFile(A, 2 * P, v, shared: true);
        p.Write(Pg(0), 42);
        Assert.Equal(EvictResult.Clean, p.Space.Evict(Pg(0)));
        Assert.Equal(42, p.Read(Pg(0)));             // the page cache kept it
        Assert.Equal(0, swap.Writes);
        ExitAndAssertBaseline(p);
    }

    [Theory, MemberData(nameof(Designs))]
    public void ForkTree_EvictEverything_AllDestroyed_SlotsReturn(string design)
    {
        var root = ProcWithFile(design, 8, out var v);
        root.MapAnon(A + 16 * P, 8 * P);
        var procs = new List<SimProcess> { root };
        for (int gen = 0; gen < 3; gen++)
        {
            var q = procs[^1];
            for (int i = 0; i < 8; i++)
            {
                Fill(q, Pg(i), (byte)(gen * 16 + i));
                Fill(q, Pg(16 + i), (byte)(gen * 16 + i + 100));
            }
            foreach (var x in procs)
                for (int i = 0; i < 24; i++) x.Space.Evict(Pg(i));
            procs.Add(q.Fork());
        }
        for (int k = 0; k < procs.Count; k++)
        {
            int gen = Math.Min(k, 2);
            for (int i = 0; i < 8; i++)
            {
                AssertFilled(procs[k], Pg(i), (byte)(gen * 16 + i));
                AssertFilled(procs[k], Pg(16 + i), (byte)(gen * 16 + i + 100));
            }
        }
        foreach (var x in procs) Assert.Equal(0, x.C.internal_errors + x.C.sigbus);
        Assert.True(vm.SwapSlotsInUse > 0);
        procs.Reverse();
        foreach (var x in procs) x.Exit();
        ExitAndAssertBaseline();
    }
}
