namespace Lab.Tests.Vm;

/// <summary>
/// Scenarios whose counter deltas come from the Mach-lineage seeds (000: FreeBSD vm_fault.c,
/// 002: DragonFly vm_fault.c; source line numbers as printed in the listings): swap-in
/// through the pager, the swap copy dropped on a dirtying write, pre-zeroed zero fills,
/// wiring faults, the read window beside another fault's read, and the state a fault keeps
/// across RetryFault.
/// </summary>
public sealed class ChainSeedTests : VmTest
{
    readonly MemSwap swap = new();

    public ChainSeedTests() => vm.Swap = swap;

    static void Fill(SimProcess p, ulong va, byte seed)
    {
        for (ulong i = 0; i < P; i += 61) p.Write(va + i, (byte)(seed + i));
    }

    static void AssertFilled(SimProcess p, ulong va, byte seed)
    {
        for (ulong i = 0; i < P; i += 61) Assert.Equal((byte)(seed + i), p.Read(va + i));
    }

    /// <summary><paramref name="n"/> written anonymous pages, all paged out: the counters from here on are the swap-in's.</summary>
    SimProcess PagedOut(string design, int n)
    {
        var p = ProcWithAnon(design, n);
        for (int i = 0; i < n; i++) Fill(p, Pg(i), (byte)(i * 3 + 1));
        for (int i = 0; i < n; i++) Assert.Equal(EvictResult.Evicted, p.Space.Evict(Pg(i)));
        return p;
    }

    static Dictionary<string, long> Snap(SimProcess p) => p.C.Snapshot().ToDictionary(kv => kv.Key, kv => kv.Value);

    static long D(SimProcess p, Dictionary<string, long> before, string name) => p.C[name] - before[name];

    // ---- item 1: swap-in goes through the pager, with the read window ----

    /// <summary>
    /// FreeBSD: a paged-out page is not resident, so the soft fast path fails (000: 367–371)
    /// and the walk allocates it in the swap-backed object and calls the pager (000: 505,
    /// 553). The first fault is at next_read (0, the entry's start): sequential; the entry's
    /// read_ahead starts at VM_FAULT_READ_AHEAD_INIT 15, so 7 + 15 + 1 = 23 ahead
    /// (000: 569–584), and the pager brings 24 pages (000: 653–657): a hard fault
    /// (v_io_faults, 000: 987–988); prefault maps the 23 read ahead (000: 959–963).
    /// next_read becomes 24 (000: 938); the fault there is sequential again, with
    /// 7 + 23 + 1 = 31 ahead clipped to the entry's last 7 (000: 580–582, 605): 8 more pages.
    /// Two faults bring all 32 in. (The lab before: 32 soft fast-path faults, one page each.)
    /// </summary>
    [Fact]
    public void FreeBsd_SwapIn_IsAHardFaultWithTheSequentialReadWindow()
    {
        var p = PagedOut("freebsd", 32);
        var b = Snap(p);
        for (int i = 0; i < 32; i++) AssertFilled(p, Pg(i), (byte)(i * 3 + 1));
        Assert.Equal(2, D(p, b, "v_vm_faults"));
        Assert.Equal(0, D(p, b, "fastpath_hits"));
        Assert.Equal(2, D(p, b, "v_io_faults"));
        Assert.Equal(32, D(p, b, "pageins"));
        Assert.Equal(32, D(p, b, "pager_pages"));
        Assert.Equal(30, D(p, b, "read_ahead_pages"));
        Assert.Equal(0, D(p, b, "read_behind_pages"));
        Assert.Equal(30, D(p, b, "pages_prefaulted"));
        Assert.Equal(0, p.C.sigbus + p.C.internal_errors);
        Assert.Equal(32, vm.SwapSlotsInUse);         // read, not dirtied: every copy is kept
        p.Exit();
        Assert.Equal(0, vm.SwapSlotsInUse);
    }

    /// <summary>
    /// DragonFly: the fault at pindex 0 lies in [lastr, lastr + VM_FAULT_READ) with lastr 0,
    /// so it is sequential; behind 0, ahead min(16 - 0, 8) = 8 (002: 641–651, 653–658,
    /// 702–703); the pager brings pages 0–8 (002: 720, 737), a hard fault (002: 764), and
    /// lastr becomes 0 + 9 - 0 = 9 (002: 727). pmap_prefault maps 4 forward. A fault on
    /// page 5, read in but not mapped, is then a soft fault: no pager, no pagein.
    /// </summary>
    [Fact]
    public void DragonFly_SwapIn_IsAHardFaultWithItsReadWindow_TheRestAreResident()
    {
        var p = PagedOut("dragonfly", 16);
        var b = Snap(p);
        AssertFilled(p, Pg(0), 1);
        Assert.Equal(1, D(p, b, "v_vm_faults"));
        Assert.Equal(1, D(p, b, "v_io_faults"));
        Assert.Equal(9, D(p, b, "pageins"));
        Assert.Equal(9, D(p, b, "pager_pages"));
        Assert.Equal(8, D(p, b, "read_ahead_pages"));
        Assert.Equal(4, D(p, b, "pages_prefaulted"));
        AssertFilled(p, Pg(5), 16);
        Assert.Equal(2, D(p, b, "v_vm_faults"));
        Assert.Equal(1, D(p, b, "v_io_faults"));      // soft: page 5 is resident
        Assert.Equal(9, D(p, b, "pageins"));
        Assert.Equal(0, p.C.sigbus + p.C.internal_errors);
        p.Exit();
        Assert.Equal(0, vm.SwapSlotsInUse);
    }

    // ---- item 2: DragonFly's user write passes VM_FAULT_DIRTY ----

    /// <summary>
    /// A page swapped in by a read is installed read-only; the program's write then dirties
    /// it and drops its swap copy: FreeBSD through vm_fault_dirty (000: 191–193, 234–239),
    /// DragonFly because the user fault path passes VM_FAULT_DIRTY for a write
    /// (002: 997, 1022–1026).
    /// </summary>
    [Theory, InlineData("freebsd"), InlineData("dragonfly")]
    public void WriteAfterSwapIn_DropsTheSwapCopy(string design)
    {
        var p = ProcWithAnon(design, 1);
        Fill(p, Pg(0), 7);
        Assert.Equal(EvictResult.Evicted, p.Space.Evict(Pg(0)));
        AssertFilled(p, Pg(0), 7);
        Assert.False(p.Pmap.Writable(Pg(0)));
        Assert.Equal(1, vm.SwapSlotsInUse);
        p.Write(Pg(0), 99);
        Assert.Equal(1, p.C.swap_slots_freed_on_dirty);
        Assert.Equal(0, vm.SwapSlotsInUse);
        Assert.Equal(1, swap.Frees);
        p.Exit();
    }

    // ---- item 3: v_ozfod only for a page asked for pre-zeroed ----

    /// <summary>
    /// The zero fill uses the first object's placeholder page, asked for pre-zeroed only
    /// when the object has no backing object (000: 528–530; 002: 607); v_ozfod counts only
    /// a page that came zeroed (000: 729–734; 002: 846–851). The lab's free pages are always
    /// zeroed. After fork each side writes through a new shadow (a backing object): zero
    /// fill without v_ozfod.
    /// </summary>
    [Theory, InlineData("freebsd"), InlineData("dragonfly")]
    public void Ozfod_OnlyWhenTheFirstObjectHasNoBackingObject(string design)
    {
        var p = ProcWithAnon(design, 4);
        p.Write(Pg(0), 1);
        Assert.Equal(0, p.Read(Pg(3)));
        Assert.Equal(2, p.C.v_zfod);
        Assert.Equal(2, p.C.v_ozfod);
        var child = p.Fork();
        child.Write(Pg(1), 2);
        p.Write(Pg(2), 3);
        Assert.Equal(1, child.C.v_zfod);
        Assert.Equal(0, child.C.v_ozfod);
        Assert.Equal(3, p.C.v_zfod);
        Assert.Equal(2, p.C.v_ozfod);
        ExitAndAssertNoObjects(child, p);
    }

    // ---- item 6: a wiring fault neither dirties nor takes the fast path ----

    /// <summary>
    /// Wiring a page that is resident with a swap copy: FreeBSD's wiring fault skips the
    /// soft fast path (000: 354–355) and does not dirty the page, so its swap copy stays
    /// (000: 191–193); DragonFly's wiring fault passes VM_FAULT_USER_WIRE, not
    /// VM_FAULT_DIRTY (002: 1099, 1022). The page is installed writable (the entry's
    /// protection, 000: 348–349; 002: 324–325).
    /// </summary>
    [Theory, InlineData("freebsd"), InlineData("dragonfly")]
    public void WiringFault_KeepsTheSwapCopy_NoFastPath(string design)
    {
        var p = ProcWithAnon(design, 1);
        Fill(p, Pg(0), 9);
        Assert.Equal(EvictResult.Evicted, p.Space.Evict(Pg(0)));
        AssertFilled(p, Pg(0), 9);                   // swapped in, read-only
        var b = Snap(p);
        Assert.True(p.Space.Wire(A, P));
        Assert.True(p.Pmap.Writable(Pg(0)));
        Assert.Equal(1, D(p, b, "v_vm_faults"));
        Assert.Equal(0, D(p, b, "fastpath_hits"));
        Assert.Equal(0, D(p, b, "swap_slots_freed_on_dirty"));
        Assert.Equal(1, vm.SwapSlotsInUse);
        AssertFilled(p, Pg(0), 9);
        p.Exit();
        Assert.Equal(0, vm.SwapSlotsInUse);
    }

    // ---- item 8: the read window and another fault's read ----

    /// <summary>
    /// A fault reading page 4 alone (RANDOM) has it busy; meanwhile another process faults
    /// page 0: its window (next_read 0: sequential, 23 ahead, 000: 569–584) stops before the
    /// page being read, as vm_fault_additional_pages stops at a page the object holds
    /// (002: 1411–1413). So the second read is pages 0–3 and page 4 is read once.
    /// </summary>
    [Fact]
    public void ReadWindow_StopsAtAPageAnotherFaultIsReading()
    {
        var v = new MemVnode(16 * (long)P);
        var p1 = Proc("freebsd");
        var p2 = Proc("freebsd");
        p1.MapFile(A, 16 * P, v);
        p2.MapFile(A, 16 * P, v);
        p1.Space.Advise(A, 16 * P, Advice.Random);
        bool inside = false;
        v.OnLoad = (pindex, count) =>
        {
            if (inside || pindex != 4) return;
            inside = true;
            var t = new Thread(() => p2.Read(Pg(0)));
            t.Start();
            Assert.True(t.Join(10_000));
        };
        Assert.Equal(v.Data[4 * P], p1.Read(Pg(4)));
        Assert.Equal(new[] { (4L, 1), (0L, 4) }, v.Loads.OrderByDescending(l => l.Pindex).ToArray());
        Assert.Equal(3, p2.C.read_ahead_pages);
        Assert.Equal(4, p2.C.pager_pages);
        Assert.Equal(1, p1.C.pager_pages);
        AssertPageIsFile(p2, Pg(4), v, 4);
        ExitAndAssertNoObjects(p1, p2);
    }

    /// <summary>
    /// A fault on a page inside another fault's read window finds it busy: it sleeps
    /// (v_intrans, 000: 452–482; 002: 504–531), then finds it resident: no pager call of
    /// its own, a soft fault.
    /// </summary>
    [Theory, InlineData("freebsd"), InlineData("dragonfly")]
    public void FaultInsideAnotherFaultsWindow_WaitsForIt(string design)
    {
        var v = new MemVnode(16 * (long)P);
        var p1 = Proc(design);
        var p2 = Proc(design);
        p1.MapFile(A, 16 * P, v);
        p2.MapFile(A, 16 * P, v);
        var o = p1.Space.ObjectAt(A)!.Value.Object;
        Thread? t = null;
        v.OnLoad = (pindex, count) =>
        {
            if (t != null) return;
            t = new Thread(() => p2.Read(Pg(3)));
            t.Start();
            // Go on once p2 sleeps on the busy page, or has finished (the old behaviour).
            var sw = System.Diagnostics.Stopwatch.StartNew();
            while (o.Waiters == 0 && t.IsAlive && sw.ElapsedMilliseconds < 10_000) Thread.Sleep(1);
        };
        Assert.Equal(v.Data[0], p1.Read(Pg(0)));
        Assert.True(t!.Join(10_000));
        Assert.Equal(1, v.LoadCalls);
        Assert.Equal(1, p2.C.v_intrans);
        Assert.Equal(0, p2.C.pager_pages);
        Assert.Equal(0, p2.C.v_io_faults);
        AssertPageIsFile(p2, Pg(3), v, 3);
        ExitAndAssertNoObjects(p1, p2);
    }

    // ---- item 9: what a fault keeps across RetryFault ----

    /// <summary>
    /// FreeBSD keeps hardfault, behind, ahead and faultcount across RetryFault (000: 297,
    /// 301, before the label at 303). A write fault reads file pages 0–15 (next_read 0,
    /// read_ahead 15: 7 + 15 + 1 = 23 ahead, clipped to the entry's 15, 000: 578–584, 605);
    /// meanwhile the mapping is replaced by the same file at offset 1, so the
    /// re-lookup after the I/O sends the fault back to RetryFault (000: 891–917). The new
    /// pass finds file page 1 resident and copies it: no pager call, but it still counts
    /// v_io_faults (000: 987–988) and prefaults with the first pass's window, 0 behind and
    /// 15 ahead (000: 959–963): file pages 2–15 are resident, 16 is not, so 14 neighbours
    /// (the lab before: 4, the PFFOR window of a pass without I/O).
    /// </summary>
    [Fact]
    public void FreeBsd_HardfaultAndWindow_SurviveRetryFault()
    {
        var v = new MemVnode(32 * (long)P);
        var p = Proc("freebsd");
        p.MapFile(A, 16 * P, v);
        bool done = false;
        v.OnLoad = (pindex, count) =>
        {
            if (done) return;
            done = true;
            p.Munmap(A, 16 * P);
            p.MapFile(A, 16 * P, v, offset: (long)P);
        };
        p.Write(Pg(0) + 1, 0x5A);
        Assert.Equal(1, p.C.v_vm_faults);
        Assert.Equal(1, p.C.revalidate_retries);
        Assert.Equal(1, p.C.v_io_faults);
        Assert.Equal(16, p.C.pager_pages);
        Assert.Equal(14, p.C.pages_prefaulted);
        Assert.Equal(1, p.C.v_cow_faults);
        Assert.Equal(0x5A, p.Read(Pg(0) + 1));
        Assert.Equal(v.Data[P], p.Read(Pg(0)));     // file page 1
        ExitAndAssertNoObjects(p);
    }

    /// <summary>
    /// v_io_faults counts a fault that called the pager only when it ends well (000:
    /// 987–988): here the mapping goes while the pager reads, the re-lookup fails and the
    /// fault ends in SIGSEGV (000: 900–910), so nothing is counted.
    /// </summary>
    [Theory, InlineData("freebsd"), InlineData("dragonfly")]
    public void IoFaults_NotCountedForAFaultThatFails(string design)
    {
        var v = new MemVnode(16 * (long)P);
        var p = Proc(design);
        p.MapFile(A, 16 * P, v);
        v.OnLoad = (pindex, count) => p.Space.Unmap(A, 16 * P);
        Assert.Equal(FaultResult.SigSegv, p.Space.Fault(Pg(0), FaultAccess.Read));
        Assert.True(p.C.pager_pages > 0);             // the pager did read
        Assert.Equal(0, p.C.v_io_faults);
        ExitAndAssertNoObjects(p);
    }

    /// <summary>
    /// The process's rusage pair: FreeBSD counts a minor fault on the soft fast path (000: 389) and,
    /// at the slow path's end, a major one when the fault did I/O, else a minor one (000: 987–989,
    /// 1006); DragonFly counts the same pair at its end (002: 391–394). A zero fill is minor, a
    /// file read is major, a fault on a resident page is minor.
    /// </summary>
    [Theory, InlineData("freebsd"), InlineData("dragonfly")]
    public void Rusage_MajorForIo_MinorOtherwise(string design)
    {
        var v = new MemVnode(16 * (long)P);
        var p = Proc(design);
        p.MapFile(A, 16 * P, v);
        p.MapAnon(B, P);
        p.Space.Advise(A, 16 * P, Advice.Random);   // one page per read, no prefault to hide a fault
        Assert.Equal(FaultResult.Resolved, p.Space.Fault(B, FaultAccess.Write));      // zero fill
        Assert.Equal((1, 0), (p.C.ru_minflt, p.C.ru_majflt));
        Assert.Equal(FaultResult.Resolved, p.Space.Fault(Pg(3), FaultAccess.Read));   // pager read
        Assert.Equal((1, 1), (p.C.ru_minflt, p.C.ru_majflt));
        p.DontNeed(Pg(3), P);                  // unmapped here; the page stays resident in the vnode object
        Assert.Equal(FaultResult.Resolved, p.Space.Fault(Pg(3), FaultAccess.Read));
        Assert.Equal((2, 1), (p.C.ru_minflt, p.C.ru_majflt));
        Assert.Equal(1, p.C.v_io_faults);
        ExitAndAssertNoObjects(p);
    }
}
