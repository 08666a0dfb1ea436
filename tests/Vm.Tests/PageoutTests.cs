namespace Lab.Tests.Vm;

/// <summary>
/// The page queues (<see cref="AddressSpace.PageoutScan"/>): the clock sweep that clears
/// reference bits and deactivates, the inactive queue taken oldest first, second chance,
/// wiring, clean pages, no swap, evictions in flight, stale queue entries, fork. Every
/// design. The SimPmap's Remove zaps synchronously; the scan's caller completes each
/// eviction it was handed (the daemon's contract).
/// </summary>
public sealed class PageoutTests : VmTest
{
    readonly MemSwap swap = new();

    public PageoutTests() => vm.Swap = swap;

    static ulong[] Pages(int first, int count) => Enumerable.Range(first, count).Select(Pg).ToArray();

    /// <summary>The whole page: a pattern that differs in every page and every byte position.</summary>
    static byte[] Pattern(int seed)
    {
        var b = new byte[P];
        for (int i = 0; i < b.Length; i++) b[i] = (byte)(seed * 31 + i * 7 + (i >> 8));
        return b;
    }

    static void WritePage(SimProcess p, ulong va, byte[] bytes)
    {
        for (int i = 0; i < bytes.Length; i++) p.Write(va + (ulong)i, bytes[i]);
    }

    static void AssertPage(SimProcess p, ulong va, byte[] bytes) => Assert.Equal(bytes, p.Pmap.ReadPage(va));

    /// <summary>One scan; then, as the daemon does after the pmap removed them, complete the evictions begun.</summary>
    static ulong[] Scan(SimProcess p, int want, out bool swapFull, bool complete = true)
    {
        var begun = new ulong[Math.Max(want, 1)];
        int n = p.Space.PageoutScan(want, begun, out swapFull);
        var got = begun[..n];
        if (complete)
            foreach (var va in got) p.Space.CompleteEvict(va);
        return got;
    }

    static ulong[] Scan(SimProcess p, int want)
    {
        var got = Scan(p, want, out bool full);
        Assert.False(full);
        return got;
    }

    void ExitAndAssertBaseline(params SimProcess[] ps) => ExitAndAssertNothingLeft(swap, ps);

    static void AssertNoErrors(SimProcess p) => Assert.Equal(0, p.C.internal_errors + p.C.sigbus + p.C.swap_bad_slots);

    /// <summary>
    /// 64 dirty anonymous pages, all referenced by the faults that installed them. The first
    /// scan's sweep clears all 64 bits (one pass round the clock), deactivates 2 x want = 32
    /// pages on its second pass from the hand at 0, and evicts the 16 oldest inactive ones:
    /// the lowest addresses, each written to swap.
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void FirstScan_ClearsBitsThenDeactivates_EvictsLowestSixteen_BytesRoundTrip(string design)
    {
        var p = ProcWithAnon(design, 64);
        for (int i = 0; i < 64; i++) WritePage(p, Pg(i), Pattern(i));
        Assert.Equal(64, p.Space.ResidentPages);
        Assert.Equal(0, p.Space.InactivePages);

        var begun = Scan(p, 16, out bool full, complete: false);
        Assert.False(full);
        Assert.Equal(Pages(0, 16), begun);
        Assert.Equal(64, p.Space.ResidentPages);      // begun, not complete: still counted
        foreach (var va in begun)
        {
            Assert.False(p.Pmap.Present(va));          // the (synchronous) pmap removed it
            p.Space.CompleteEvict(va);
        }
        Assert.Equal(48, p.Space.ResidentPages);
        Assert.Equal(16, p.Space.InactivePages);        // 16..31 wait on the inactive queue
        for (int i = 16; i < 32; i++) Assert.False(p.Pmap.Writable(Pg(i)));   // write-protected to catch writes
        for (int i = 32; i < 64; i++) Assert.True(p.Pmap.Writable(Pg(i)));

        Assert.Equal(1, p.C.pd_scans);
        Assert.Equal(64, p.C.pd_skipped_referenced);
        Assert.Equal(32, p.C.pd_deactivated);
        Assert.Equal(0, p.C.pd_reactivated);
        Assert.Equal(16, p.C.pageouts);
        Assert.Equal(0, p.C.evict_clean);
        Assert.Equal(16, swap.Writes);
        Assert.Equal(16, vm.SwapSlotsInUse);
        Assert.Equal(0, p.C.pageins);

        for (int i = 0; i < 64; i++) AssertPage(p, Pg(i), Pattern(i));
        Assert.Equal(16, p.C.pageins);
        Assert.Equal(64, p.Space.ResidentPages);
        Assert.Equal(16, swap.Writes);
        AssertNoErrors(p);
        ExitAndAssertBaseline(p);
    }

    /// <summary>
    /// Second chance: three of the 16 inactive pages are written after the first scan (a
    /// write-protect fault references them). The second scan deactivates 32..47 (the hand is
    /// at 32; their bits were cleared by the first sweep), passes over the three written
    /// ones (pd_reactivated +3) and takes the 13 others and then 32..34.
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void WrittenWhileInactive_SecondChance_NextScanTakesOthers(string design)
    {
        var p = ProcWithAnon(design, 64);
        for (int i = 0; i < 64; i++) WritePage(p, Pg(i), Pattern(i));
        Assert.Equal(Pages(0, 16), Scan(p, 16));
        Assert.Equal(16, p.Space.InactivePages);

        long wp = p.C.wp_resolved;
        for (int i = 16; i < 19; i++) p.Write(Pg(i) + 5, 0xA5);   // inactive, write-protected: faults
        Assert.Equal(3, p.C.wp_resolved - wp);
        for (int i = 16; i < 19; i++) Assert.True(p.Pmap.Writable(Pg(i)));

        var second = Scan(p, 16);
        Assert.Equal(Pages(19, 13).Concat(Pages(32, 3)).ToArray(), second);
        Assert.Equal(2, p.C.pd_scans);
        Assert.Equal(3, p.C.pd_reactivated);
        Assert.Equal(48, p.C.pd_deactivated);            // 32 + 16
        Assert.Equal(64, p.C.pd_skipped_referenced);     // nothing referenced in the second sweep's path
        Assert.Equal(32, p.C.pageouts);
        Assert.Equal(32, p.Space.ResidentPages);
        Assert.Equal(13, p.Space.InactivePages);          // 35..47
        for (int i = 16; i < 19; i++) Assert.True(p.Pmap.Present(Pg(i)));

        for (int i = 0; i < 64; i++)
        {
            var want = Pattern(i);
            if (i is >= 16 and < 19) want[5] = 0xA5;
            AssertPage(p, Pg(i), want);
        }
        Assert.Equal(32, p.C.pageins);
        AssertNoErrors(p);
        ExitAndAssertBaseline(p);
    }

    /// <summary>
    /// A reactivated page has lost its bit: unless it is used again it is deactivated at the
    /// hand's next pass, and taken. Here the hand goes round to it after 48..63.
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void Reactivated_NotUsedAgain_TakenNextRound(string design)
    {
        var p = ProcWithAnon(design, 8);
        for (int i = 0; i < 8; i++) WritePage(p, Pg(i), Pattern(i));
        Assert.Equal(Pages(0, 2), Scan(p, 2));            // deactivates 0..3, takes 0, 1
        p.Write(Pg(2), 1);                                 // second chance for 2
        Assert.Equal(new[] { Pg(3), Pg(4) }, Scan(p, 2)); // 2 reactivated; 4, 5 deactivated
        Assert.Equal(1, p.C.pd_reactivated);
        // Inactive now: 5. The sweep from 6: 6, 7 and then, wrapping, 2 (bit gone) are deactivated.
        Assert.Equal(new[] { Pg(5), Pg(6) }, Scan(p, 2));
        Assert.Equal(new[] { Pg(7), Pg(2) }, Scan(p, 2));
        Assert.Equal(1, p.C.pd_reactivated);
        Assert.Equal(0, p.Space.ResidentPages);
        var two = Pattern(2);
        two[0] = 1;
        for (int i = 0; i < 8; i++) AssertPage(p, Pg(i), i == 2 ? two : Pattern(i));
        Assert.Equal(8, p.C.pageins);
        AssertNoErrors(p);
        ExitAndAssertBaseline(p);
    }

    /// <summary>
    /// Wired pages are never deactivated nor evicted, and the sweep passes them before
    /// looking at their reference bits: the bits stay set and are not counted. After munlock
    /// the sweep finds them still referenced, clears the bits, and then takes them like others.
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void WiredPages_BitsUntouched_NeverDeactivatedNorEvicted(string design)
    {
        var p = ProcWithAnon(design, 8);
        for (int i = 0; i < 8; i++) WritePage(p, Pg(i), Pattern(i));
        Assert.True(p.Space.Wire(A, 4 * P));

        Assert.Equal(Pages(4, 4), Scan(p, 4));
        Assert.Equal(4, p.C.pd_deactivated);              // 4..7 only
        Assert.Equal(4, p.C.pd_skipped_referenced);        // 4..7 only: the wired pages' bits are left alone
        Assert.Equal(0, p.Space.InactivePages);

        Assert.Empty(Scan(p, 4));                          // only wired pages left resident
        Assert.Equal(2, p.C.pd_scans);
        Assert.Equal(4, p.C.pd_deactivated);
        Assert.Equal(4, p.C.pd_skipped_referenced);
        Assert.Equal(4, p.Space.ResidentPages);
        for (int i = 0; i < 4; i++) Assert.True(p.Pmap.Present(Pg(i)) && p.Pmap.Writable(Pg(i)));
        Assert.Equal(4, p.C.pageouts);

        p.Space.Unwire(A, 4 * P);
        Assert.Equal(Pages(0, 4), Scan(p, 4));
        Assert.Equal(8, p.C.pd_skipped_referenced);        // 0..3: their bits were still set, cleared now
        Assert.Equal(8, p.C.pd_deactivated);
        Assert.Equal(3, p.C.pd_scans);
        Assert.Equal(8, p.C.pageouts);
        for (int i = 0; i < 8; i++) AssertPage(p, Pg(i), Pattern(i));
        Assert.Equal(8, p.C.pageins);
        AssertNoErrors(p);
        ExitAndAssertBaseline(p);
    }

    /// <summary>Never-written zero pages of a read-only mapping are dropped without swap I/O.</summary>
    [Theory, MemberData(nameof(Designs))]
    public void ReadOnlyZeroPages_EvictedClean_NoSwapWrites(string design)
    {
        var p = Proc(design);
        p.MapAnon(A, 8 * P, Prot.Read);
        for (int i = 0; i < 8; i++) Assert.Equal(0, p.Read(Pg(i) + 9));
        Assert.Equal(8, p.Space.ResidentPages);

        Assert.Equal(Pages(0, 8), Scan(p, 8));
        Assert.Equal(8, p.C.evict_clean);
        Assert.Equal(0, p.C.pageouts);
        Assert.Equal(0, swap.Writes);
        Assert.Equal(0, vm.SwapSlotsInUse);
        Assert.Equal(8, p.C.pd_deactivated);
        Assert.Equal(0, p.Space.ResidentPages);
        for (int i = 0; i < 8; i++) AssertPage(p, Pg(i), new byte[P]);
        Assert.Equal(0, p.C.pageins);
        AssertNoErrors(p);
        ExitAndAssertBaseline(p);
    }

    /// <summary>Pages read back from swap and not written since: their slot is current, so the next eviction writes nothing.</summary>
    [Theory, MemberData(nameof(Designs))]
    public void SwappedInUnwritten_EvictedClean_SlotsUnchanged(string design)
    {
        var p = ProcWithAnon(design, 8);
        for (int i = 0; i < 8; i++) WritePage(p, Pg(i), Pattern(i));
        Assert.Equal(Pages(0, 8), Scan(p, 8));
        Assert.Equal(8, swap.Writes);
        for (int i = 0; i < 8; i++) AssertPage(p, Pg(i), Pattern(i));   // swapped in by reads: write-protected
        Assert.Equal(8, p.C.pageins);
        for (int i = 0; i < 8; i++) Assert.False(p.Pmap.Writable(Pg(i)));

        Assert.Equal(Pages(0, 8), Scan(p, 8));
        Assert.Equal(8, p.C.evict_clean);
        Assert.Equal(8, p.C.pageouts);
        Assert.Equal(8, swap.Writes);
        Assert.Equal(8, vm.SwapSlotsInUse);
        Assert.Equal(8, swap.InUse);
        for (int i = 0; i < 8; i++) AssertPage(p, Pg(i), Pattern(i));
        Assert.Equal(16, p.C.pageins);
        AssertNoErrors(p);
        ExitAndAssertBaseline(p);
    }

    /// <summary>
    /// Without a swap device a dirty anonymous page cannot go: the scan says swapFull, the
    /// page leaves the inactive queue and stays active, and the scan goes on to the next
    /// ones. With only dirty pages it begins nothing: each of its 3 rounds deactivates all 8
    /// again (their bits are gone after the first sweep) and finds each without swap.
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void NoSwapDevice_DirtyPagesStay_SwapFull(string design)
    {
        vm.Swap = null;
        var p = ProcWithAnon(design, 8);
        for (int i = 0; i < 8; i++) WritePage(p, Pg(i), Pattern(i));

        Assert.Empty(Scan(p, 4, out bool full));
        Assert.True(full);
        Assert.Equal(8, p.Space.ResidentPages);
        Assert.Equal(0, p.C.pageouts);
        Assert.Equal(0, p.C.evict_clean);
        Assert.Equal(1, p.C.pd_scans);
        Assert.Equal(8, p.C.pd_skipped_referenced);
        Assert.Equal(24, p.C.pd_deactivated);               // 8 in each of the 3 rounds
        Assert.Equal(0, p.C.pd_reactivated);
        Assert.Equal(0, p.Space.InactivePages);             // every page tried, none left waiting
        Assert.Equal(0, vm.SwapSlotsInUse);
        for (int i = 0; i < 8; i++) Assert.True(p.Pmap.Present(Pg(i)));
        for (int i = 0; i < 8; i++) AssertPage(p, Pg(i), Pattern(i));
        p.Write(Pg(3), 0x3C);                               // write-protected while inactive: resolves
        Assert.Equal(0x3C, p.Read(Pg(3)));
        AssertNoErrors(p);
        ExitAndAssertFreed(p);
    }

    /// <summary>
    /// Without a swap device, the scan does not stop at a dirty inactive page: it says
    /// swapFull, leaves the page active, and takes the clean pages behind it in the same
    /// scan. A second scan finds only the dirty pages: it begins nothing, says swapFull, and
    /// deactivates the 4 dirty pages again in each of its 3 rounds.
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void NoSwapDevice_CleanPagesBehindDirtyOnes_TakenInTheSameScan(string design)
    {
        vm.Swap = null;
        var p = ProcWithAnon(design, 4);
        p.MapAnon(A + 4 * P, 4 * P, Prot.Read);
        for (int i = 0; i < 4; i++) WritePage(p, Pg(i), Pattern(i));
        for (int i = 4; i < 8; i++) Assert.Equal(0, p.Read(Pg(i)));

        Assert.Equal(Pages(4, 4), Scan(p, 4, out bool full));
        Assert.True(full);                                  // 0..3 had nowhere to go
        Assert.Equal(4, p.C.evict_clean);
        Assert.Equal(1, p.C.pd_scans);
        Assert.Equal(8, p.C.pd_skipped_referenced);
        Assert.Equal(8, p.C.pd_deactivated);
        Assert.Equal(0, p.C.pageouts);
        Assert.Equal(4, p.Space.ResidentPages);
        Assert.Equal(0, p.Space.InactivePages);
        for (int i = 0; i < 4; i++) Assert.True(p.Pmap.Present(Pg(i)));
        for (int i = 4; i < 8; i++) Assert.False(p.Pmap.Present(Pg(i)));

        Assert.Empty(Scan(p, 4, out bool again));
        Assert.True(again);
        Assert.Equal(2, p.C.pd_scans);
        Assert.Equal(8, p.C.pd_skipped_referenced);
        Assert.Equal(20, p.C.pd_deactivated);               // 0..3 in each of the second scan's 3 rounds
        Assert.Equal(4, p.C.evict_clean);
        Assert.Equal(4, p.Space.ResidentPages);
        for (int i = 0; i < 4; i++) AssertPage(p, Pg(i), Pattern(i));
        for (int i = 4; i < 8; i++) AssertPage(p, Pg(i), new byte[P]);
        AssertNoErrors(p);
        p.Exit();
    }

    /// <summary>
    /// Evictions begun and not completed are not handed out again: not by the next scan,
    /// not when the page had been begun by a direct BeginEvict while it sat on the inactive
    /// queue (the scan's BeginEvict says Busy and it moves on).
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void BegunNotCompleted_NeverHandedOutTwice(string design)
    {
        var p = ProcWithAnon(design, 16);
        for (int i = 0; i < 16; i++) WritePage(p, Pg(i), Pattern(i));

        var first = Scan(p, 4, out _, complete: false);   // deactivates 0..7, begins 0..3
        Assert.Equal(Pages(0, 4), first);
        Assert.Equal(EvictResult.Evicted, p.Space.BeginEvict(Pg(4)));   // inactive, begun from outside
        var second = Scan(p, 4, out _, complete: false);
        Assert.Equal(Pages(5, 4), second);                // 4 skipped (Busy), 8 deactivated meanwhile
        var third = Scan(p, 16, out _, complete: false);  // everything else not in flight
        Assert.Equal(Pages(9, 7), third);
        Assert.Empty(Scan(p, 16, out _, complete: false));
        Assert.Equal(16, p.Space.ResidentPages);           // none completed yet
        Assert.Equal(16, p.C.pageouts);                    // each written once
        Assert.Equal(16, swap.Writes);

        foreach (var va in first.Concat(second).Concat(third).Append(Pg(4))) p.Space.CompleteEvict(va);
        Assert.Equal(0, p.Space.ResidentPages);
        for (int i = 0; i < 16; i++) AssertPage(p, Pg(i), Pattern(i));
        Assert.Equal(16, p.C.pageins);
        AssertNoErrors(p);
        ExitAndAssertBaseline(p);
    }

    /// <summary>Inactive pages unmapped meanwhile are dropped from the queue quietly; the scan takes the next ones.</summary>
    [Theory, MemberData(nameof(Designs))]
    public void UnmappedWhileInactive_Skipped(string design)
    {
        var p = ProcWithAnon(design, 8);
        for (int i = 0; i < 8; i++) WritePage(p, Pg(i), Pattern(i));
        Assert.Equal(Pages(0, 2), Scan(p, 2));            // 2, 3 left inactive
        p.Munmap(Pg(2), 2 * P);
        Assert.Equal(2, p.Space.InactivePages);           // stale until the scan reaches them
        Assert.Equal(Pages(4, 2), Scan(p, 2));
        Assert.Equal(0, p.Space.InactivePages);           // the sweep deactivated only 4, 5 (2 x want - 2 stale)
        Assert.Equal(0, p.C.pd_reactivated);
        Assert.Equal(4, p.C.pageouts);
        Assert.Throws<SimSignalException>(() => p.Read(Pg(2)));
        for (int i = 0; i < 8; i++)
            if (i is not (2 or 3)) AssertPage(p, Pg(i), Pattern(i));
        AssertNoErrors(p);
        ExitAndAssertBaseline(p);
    }

    /// <summary>
    /// An inactive page is unmapped and a new mapping at the same address is written (its
    /// fault references it). The old queue entry reaches the new page: it is counted as
    /// reactivated (though it was never deactivated) and not evicted; it stays writable,
    /// its bytes intact. Later scans take it as any other page.
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void NewMappingAtAnInactiveAddress_NotEvictedByTheStaleEntry(string design)
    {
        var p = ProcWithAnon(design, 8);
        for (int i = 0; i < 8; i++) WritePage(p, Pg(i), Pattern(i));
        Assert.Equal(Pages(0, 2), Scan(p, 2));            // 2, 3 inactive
        p.Munmap(Pg(2), P);
        p.MapAnon(Pg(2), P);
        WritePage(p, Pg(2), Pattern(99));

        Assert.Equal(new[] { Pg(3), Pg(4) }, Scan(p, 2));
        Assert.Equal(1, p.C.pd_reactivated);
        Assert.True(p.Pmap.Present(Pg(2)));
        Assert.True(p.Pmap.Writable(Pg(2)));
        AssertPage(p, Pg(2), Pattern(99));
        // Inactive: 5. Then 6, 7 and, wrapping, 2 (its bit was taken by the stale entry).
        Assert.Equal(new[] { Pg(5), Pg(6) }, Scan(p, 2));
        Assert.Equal(new[] { Pg(7), Pg(2) }, Scan(p, 2));
        for (int i = 0; i < 8; i++) AssertPage(p, Pg(i), Pattern(i == 2 ? 99 : i));
        AssertNoErrors(p);
        ExitAndAssertBaseline(p);
    }

    /// <summary>
    /// Fork, then the parent's scan takes its pages (written to swap once) and the child's
    /// scan takes the same pages (their swap copy is current: clean). The child's pages
    /// start with their reference bits set, as fresh installs do, so its first sweep clears
    /// the 8 bits on a first pass before it deactivates.
    /// Both read the right bytes back; later writes stay on their side.
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void Fork_ScanBothSides_RightBytesEverywhere(string design)
    {
        var parent = ProcWithAnon(design, 8);
        for (int i = 0; i < 8; i++) WritePage(parent, Pg(i), Pattern(i));
        var child = parent.Fork();
        Assert.Equal(8, child.Space.ResidentPages);

        Assert.Equal(Pages(0, 4), Scan(parent, 4));
        Assert.Equal(8, parent.C.pd_skipped_referenced);
        Assert.Equal(4, parent.C.pageouts);
        Assert.Equal(4, swap.Writes);
        for (int i = 0; i < 8; i++) AssertPage(child, Pg(i), Pattern(i));   // the child has its copies
        Assert.Equal(0, child.C.pageins);

        Assert.Equal(Pages(0, 4), Scan(child, 4));
        Assert.Equal(8, child.C.pd_skipped_referenced);    // each installed page starts referenced
        Assert.Equal(8, child.C.pd_deactivated);
        Assert.Equal(4, child.C.evict_clean);
        Assert.Equal(0, child.C.pageouts);
        Assert.Equal(4, swap.Writes);

        for (int i = 0; i < 8; i++) AssertPage(child, Pg(i), Pattern(i));
        for (int i = 0; i < 8; i++) AssertPage(parent, Pg(i), Pattern(i));
        Assert.Equal(4, child.C.pageins);
        // Mach: the child's reads paged the four in into the object both still share (the
        // swap pager, 000: 505, 553–659; 002: 575, 632–741): the parent finds them resident.
        // UVM: each side's anons come in through its own anonget.
        Assert.Equal(design.StartsWith("uvm") ? 4 : 0, parent.C.pageins);

        parent.Write(Pg(0), 0xEE);
        child.Write(Pg(1), 0xCC);
        var p0 = Pattern(0); p0[0] = 0xEE;
        var c1 = Pattern(1); c1[0] = 0xCC;
        AssertPage(parent, Pg(0), p0);
        AssertPage(parent, Pg(1), Pattern(1));
        AssertPage(child, Pg(0), Pattern(0));
        AssertPage(child, Pg(1), c1);

        // Everything out on both sides, then back in.
        Scan(parent, 8);
        Scan(parent, 8);
        Scan(child, 8);
        Scan(child, 8);
        Assert.Equal(0, parent.Space.ResidentPages);
        Assert.Equal(0, child.Space.ResidentPages);
        for (int i = 0; i < 8; i++) AssertPage(parent, Pg(i), i == 0 ? p0 : Pattern(i));
        for (int i = 0; i < 8; i++) AssertPage(child, Pg(i), i == 1 ? c1 : Pattern(i));
        AssertNoErrors(parent);
        AssertNoErrors(child);
        parent.Exit();
        for (int i = 0; i < 8; i++) AssertPage(child, Pg(i), i == 1 ? c1 : Pattern(i));
        ExitAndAssertBaseline(child);
    }

    /// <summary>Edge cases of the arguments: nothing asked, a short buffer, an empty or destroyed space.</summary>
    [Theory, MemberData(nameof(Designs))]
    public void Arguments_WantClampedToBuffer_EmptyAndDestroyedSpaces(string design)
    {
        var p = Proc(design);
        Assert.Empty(Scan(p, 4));                          // nothing mapped
        Assert.Equal(1, p.C.pd_scans);
        p.MapAnon(A, 8 * P);
        for (int i = 0; i < 8; i++) WritePage(p, Pg(i), Pattern(i));
        Assert.Equal(0, p.Space.PageoutScan(0, new ulong[4], out _));
        Assert.Equal(0, p.Space.PageoutScan(4, Span<ulong>.Empty, out _));
        Assert.Equal(1, p.C.pd_scans);                     // those did not count
        var buf = new ulong[2];
        Assert.Equal(2, p.Space.PageoutScan(100, buf, out bool full));
        Assert.False(full);
        Assert.Equal(Pages(0, 2), buf);
        foreach (var va in buf) p.Space.CompleteEvict(va);
        Assert.Equal(4, p.C.pd_deactivated);               // 2 x the clamped want
        p.Exit();
        Assert.Equal(0, p.Space.PageoutScan(4, new ulong[4], out _));
        Assert.Equal(0, p.Space.ResidentPages);
        Assert.Equal(0, p.Space.InactivePages);
        ExitAndAssertBaseline();
    }

    /// <summary>
    /// A private file mapping: pages only read are the file's (clean, dropped without I/O),
    /// pages written are this space's copies (written to swap). Both read back right.
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void PrivateFile_ReadPagesClean_WrittenPagesToSwap(string design)
    {
        var p = ProcWithFile(design, 8, out var v, out var data);
        p.Space.Advise(A, 8 * P, Advice.Random);
        for (int i = 0; i < 4; i++) Assert.Equal(data[(long)P * i], p.Read(Pg(i)));
        for (int i = 4; i < 8; i++) WritePage(p, Pg(i), Pattern(i));

        Assert.Equal(Pages(0, 8), Scan(p, 8));
        Assert.Equal(4, p.C.evict_clean);
        Assert.Equal(4, p.C.pageouts);
        Assert.Equal(4, swap.Writes);
        for (int i = 0; i < 4; i++) AssertPage(p, Pg(i), data.AsSpan((int)P * i, (int)P).ToArray());
        for (int i = 4; i < 8; i++) AssertPage(p, Pg(i), Pattern(i));
        Assert.Equal(4, p.C.pageins);
        Assert.Equal(data, v.Data);
        AssertNoErrors(p);
        ExitAndAssertBaseline(p);
    }

    /// <summary>
    /// Shared file pages are not write-protected when deactivated (evicting them loses
    /// nothing): a write while inactive raises no fault, gives no second chance, and the
    /// page is dropped clean; the page cache has the bytes.
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void SharedFile_NotProtected_WrittenWhileInactiveStillTaken_Clean(string design)
    {
        var v = new MemVnode(4 * (long)P);
        var p = Proc(design);
        p.MapFile(A, 4 * P, v, shared: true);
        for (int i = 0; i < 4; i++) p.Write(Pg(i), (byte)(0x40 + i));

        Assert.Equal(Pages(0, 2), Scan(p, 2));            // 2, 3 inactive
        Assert.True(p.Pmap.Writable(Pg(2)));
        int faults = p.Pmap.Faults.Count;
        p.Write(Pg(2) + 1, 0x99);
        Assert.Equal(faults, p.Pmap.Faults.Count);
        Assert.Equal(Pages(2, 2), Scan(p, 2));
        Assert.Equal(0, p.C.pd_reactivated);
        Assert.Equal(4, p.C.evict_clean);
        Assert.Equal(0, swap.Writes);
        for (int i = 0; i < 4; i++) Assert.Equal(0x40 + i, p.Read(Pg(i)));
        Assert.Equal(0x99, p.Read(Pg(2) + 1));
        AssertNoErrors(p);
        ExitAndAssertBaseline(p);
    }

    /// <summary>Anonymous pages first read (a zero fill in a writable mapping), then written: their bytes go to swap.</summary>
    [Theory, MemberData(nameof(Designs))]
    public void WritableAnon_ReadFirstThenWritten_RoundTrip(string design)
    {
        var p = ProcWithAnon(design, 4);
        for (int i = 0; i < 4; i++) Assert.Equal(0, p.Read(Pg(i)));
        for (int i = 0; i < 4; i++) WritePage(p, Pg(i), Pattern(i));
        Assert.Equal(Pages(0, 4), Scan(p, 4));
        Assert.Equal(4, p.C.pageouts);
        for (int i = 0; i < 4; i++) AssertPage(p, Pg(i), Pattern(i));
        AssertNoErrors(p);
        ExitAndAssertBaseline(p);
    }

    /// <summary>The hand goes round in address order across bitmap chunks (2 MiB each) and wraps to the lowest page.</summary>
    [Theory, MemberData(nameof(Designs))]
    public void Hand_AcrossChunks_WrapsToLowest(string design)
    {
        const ulong B = A + 3 * 2 * 1024 * 1024, C = A + (1UL << 30);
        var p = ProcWithAnon(design, 2);
        p.MapAnon(B, 2 * P);
        p.MapAnon(C, 2 * P);
        // RANDOM: a swap-in reads the faulting page alone (000: 558–562; 002: 638–640), so
        // only the page read comes back and the hand's path is the test's.
        p.Space.Advise(A, 2 * P, Advice.Random);
        var all = new[] { A, A + P, B, B + P, C, C + P };
        for (int i = 0; i < all.Length; i++) WritePage(p, all[i], Pattern(i));

        Assert.Equal(new[] { A, A + P }, Scan(p, 2));     // clears all 6 bits, deactivates A, A+P, B, B+P
        AssertPage(p, A, Pattern(0));                      // back in, referenced again
        Assert.Equal(new[] { B, B + P }, Scan(p, 2));     // the sweep from B+P+1 deactivates C, C+P
        Assert.Equal(0, p.C.pd_skipped_referenced - 6);
        Assert.Equal(new[] { C, C + P }, Scan(p, 2));     // the sweep wraps to A: clears its bit, then deactivates it
        Assert.Equal(7, p.C.pd_skipped_referenced);
        Assert.Equal(new[] { A }, Scan(p, 2));
        Assert.Equal(7, p.C.pd_deactivated);
        Assert.Equal(0, p.Space.ResidentPages);
        for (int i = 0; i < all.Length; i++) AssertPage(p, all[i], Pattern(i));
        AssertNoErrors(p);
        ExitAndAssertBaseline(p);
    }

    /// <summary>A scan asking for more than 128 pages (the sweep's buffer is then on the heap) and an inactive queue grown past 64.</summary>
    [Theory, MemberData(nameof(Designs))]
    public void LargeScan_HeapBuffer_QueueGrows(string design)
    {
        var p = ProcWithAnon(design, 300);
        for (int i = 0; i < 300; i++) { p.Write(Pg(i), (byte)i); p.Write(Pg(i) + P - 1, (byte)~i); }
        var got = Scan(p, 200);
        Assert.Equal(Pages(0, 200), got);
        Assert.Equal(300, p.C.pd_skipped_referenced);
        Assert.Equal(300, p.C.pd_deactivated);
        Assert.Equal(100, p.Space.InactivePages);
        Assert.Equal(Pages(200, 100), Scan(p, 200));
        Assert.Equal(0, p.Space.ResidentPages);
        for (int i = 0; i < 300; i++)
        {
            Assert.Equal((byte)i, p.Read(Pg(i)));
            Assert.Equal((byte)~i, p.Read(Pg(i) + P - 1));
        }
        Assert.Equal(300, p.C.pageins);
        AssertNoErrors(p);
        ExitAndAssertBaseline(p);
    }

    /// <summary>
    /// Seeded random work on a forked pair: writes, reads, MADV_DONTNEED and scans of
    /// various sizes, every byte checked against a model of what each process should see.
    /// Every scan hands out distinct resident pages, never a wired one, and the resident
    /// count stays equal to the pmap's.
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void Random_WritesReadsScans_ModelAgrees(string design)
    {
        const int N = 48;
        var rng = new Random(12345);
        var parent = Proc(design);
        parent.MapAnon(A, N * P);
        var procs = new List<SimProcess> { parent };
        var models = new List<byte[][]> { Enumerable.Range(0, N).Select(_ => new byte[P]).ToArray() };
        for (int step = 0; step < 3000; step++)
        {
            int k = rng.Next(procs.Count);
            var p = procs[k];
            var m = models[k];
            int pg = rng.Next(N);
            int off = rng.Next((int)P);
            switch (rng.Next(100))
            {
                case < 40:
                    byte b = (byte)rng.Next(256);
                    p.Write(Pg(pg) + (ulong)off, b);
                    m[pg][off] = b;
                    break;
                case < 75:
                    Assert.Equal(m[pg][off], p.Read(Pg(pg) + (ulong)off));
                    break;
                case < 78:
                    p.DontNeed(Pg(pg), P);
                    m[pg] = new byte[P];
                    break;
                case < 79 when procs.Count < 3:
                    procs.Add(p.Fork());
                    models.Add(m.Select(x => (byte[])x.Clone()).ToArray());
                    break;
                default:
                    int want = 1 + rng.Next(12);
                    int before = p.Space.ResidentPages;
                    var got = Scan(p, want);
                    Assert.True(got.Length <= want);
                    Assert.Equal(got.Length, got.Distinct().Count());
                    foreach (var va in got) Assert.False(p.Pmap.Present(va));
                    Assert.Equal(before - got.Length, p.Space.ResidentPages);
                    break;
            }
            Assert.Equal(p.Pmap.PresentCount, p.Space.ResidentPages);
        }
        for (int k = 0; k < procs.Count; k++)
            for (int pg = 0; pg < N; pg++) AssertPage(procs[k], Pg(pg), models[k][pg]);
        foreach (var p in procs) AssertNoErrors(p);
        Assert.True(procs.Sum(p => p.C.pageouts) > 0);
        Assert.True(procs.Sum(p => p.C.pd_reactivated) > 0);
        foreach (var p in procs) p.Exit();
        ExitAndAssertBaseline();
    }

    /// <summary>
    /// Seeded random work with map changes and evictions completed late: munmap and
    /// re-mmap, mremap onto another page, mlock/munlock, MADV_DONTNEED, and scans whose
    /// evictions stay in flight until a page in flight is about to be touched. Bytes are
    /// checked against a model; scans never hand out a page in flight, a wired page, or
    /// one page twice.
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void Random_MapChangesAndLateCompletions_ModelAgrees(string design)
    {
        const int N = 32;
        var rng = new Random(777);
        var p = Proc(design);
        p.MapAnon(A, N * P);
        var m = Enumerable.Range(0, N).Select(_ => new byte[P]).ToArray();
        var pending = new HashSet<ulong>();
        void CompleteAll()
        {
            foreach (var va in pending) p.Space.CompleteEvict(va);
            pending.Clear();
        }
        long scansWithPending = 0;
        for (int step = 0; step < 4000; step++)
        {
            int pg = rng.Next(N);
            int off = rng.Next((int)P);
            int op = rng.Next(100);
            if (op < 85 && pending.Count > 0 && (rng.Next(4) == 0 || pending.Contains(Pg(pg)))) CompleteAll();
            switch (op)
            {
                case < 35:
                    if (pending.Contains(Pg(pg))) break;
                    byte b = (byte)rng.Next(256);
                    p.Write(Pg(pg) + (ulong)off, b);
                    m[pg][off] = b;
                    break;
                case < 65:
                    if (pending.Contains(Pg(pg))) break;
                    Assert.Equal(m[pg][off], p.Read(Pg(pg) + (ulong)off));
                    break;
                case < 68:
                    CompleteAll();
                    p.DontNeed(Pg(pg), P);
                    m[pg] = new byte[P];
                    break;
                case < 71:
                    CompleteAll();
                    p.Munmap(Pg(pg), P);
                    p.MapAnon(Pg(pg), P);
                    m[pg] = new byte[P];
                    break;
                case < 74:
                {
                    CompleteAll();
                    int to = rng.Next(N);
                    if (to == pg) break;
                    p.Mremap(Pg(pg), Pg(to), P);
                    p.MapAnon(Pg(pg), P);
                    m[to] = m[pg];
                    m[pg] = new byte[P];
                    break;
                }
                case < 77:
                    CompleteAll();
                    Assert.True(p.Space.Wire(Pg(pg), P));
                    break;
                case < 80:
                    p.Space.Unwire(Pg(pg), P);
                    break;
                default:
                {
                    int want = 1 + rng.Next(8);
                    if (pending.Count > 0) scansWithPending++;
                    var got = Scan(p, want, out bool full, complete: false);
                    Assert.False(full);
                    Assert.True(got.Length <= want);
                    Assert.Equal(got.Length, got.Distinct().Count());
                    foreach (var va in got)
                    {
                        Assert.DoesNotContain(va, pending);
                        Assert.False(p.Space.IsWired(va));
                        Assert.False(p.Pmap.Present(va));
                        pending.Add(va);
                    }
                    break;
                }
            }
            Assert.Equal(p.Pmap.PresentCount + pending.Count, p.Space.ResidentPages);
        }
        CompleteAll();
        for (int pg = 0; pg < N; pg++) AssertPage(p, Pg(pg), m[pg]);
        AssertNoErrors(p);
        Assert.True(p.C.pageouts > 0);
        Assert.True(p.C.pd_reactivated > 0);
        Assert.True(scansWithPending > 0);
        ExitAndAssertBaseline(p);
    }

    /// <summary>
    /// mremap moves the installed pages with their reference bits: the page moved just after
    /// it was written is passed over once by the sweep like the others. An inactive page
    /// moved loses its inactive bit (its queue entry at the old address is stale and
    /// skipped); at the new address it is active, its bit already spent, and the hand
    /// deactivates it when it gets there.
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void Mremap_MovedPageKeepsItsReferenceBit_InactiveBitDropped(string design)
    {
        var p = ProcWithAnon(design, 8);
        for (int i = 0; i < 8; i++) WritePage(p, Pg(i), Pattern(i));
        p.Mremap(Pg(0), Pg(20), P);
        Assert.True(p.Space.IsInstalled(Pg(20)));
        Assert.False(p.Space.IsInstalled(Pg(0)));
        Assert.Equal(Pages(1, 2), Scan(p, 2));
        Assert.Equal(8, p.C.pd_skipped_referenced);       // 1..7 and 20: the moved page kept its bit
        Assert.Equal(4, p.C.pd_deactivated);              // 1, 2, 3, 4
        Assert.Equal(2, p.Space.InactivePages);           // 3, 4

        p.Mremap(Pg(3), Pg(30), P);                        // inactive: its bit stays behind and goes
        Assert.Equal(1, p.Space.InactivePages);           // 4
        Assert.True(p.Space.IsInstalled(Pg(30)));
        Assert.Equal(Pages(4, 2), Scan(p, 2));            // the stale entry for 3 skipped; 5, 6, 7 deactivated
        Assert.Equal(7, p.C.pd_deactivated);
        Assert.Equal(new[] { Pg(6), Pg(7) }, Scan(p, 2)); // the hand reaches 20, 30: deactivated
        Assert.Equal(9, p.C.pd_deactivated);
        Assert.Equal(new[] { Pg(20), Pg(30) }, Scan(p, 2));
        Assert.Equal(9, p.C.pd_deactivated);
        Assert.Equal(8, p.C.pd_skipped_referenced);
        Assert.Equal(0, p.C.pd_reactivated);
        Assert.Equal(8, p.C.pageouts);
        Assert.Equal(0, p.Space.ResidentPages);
        AssertPage(p, Pg(20), Pattern(0));
        AssertPage(p, Pg(30), Pattern(3));
        for (int i = 1; i < 8; i++)
            if (i != 3) AssertPage(p, Pg(i), Pattern(i));
        Assert.Equal(8, p.C.pageins);
        AssertNoErrors(p);
        ExitAndAssertBaseline(p);
    }

    /// <summary>A pmap over the SimPmap whose Remove is only recorded (the daemon's agent drops the pages later); the test applies it.</summary>
    sealed class DeferredRemovePmap(SimPmap sim) : IPmap
    {
        public readonly List<(ulong Va, int Pages)> Pending = new();
        public int PageSize => sim.PageSize;
        public Span<byte> Staging(int pages) => sim.Staging(pages);
        public bool EnterCopy(ulong va, int pages, bool writable) => sim.EnterCopy(va, pages, writable);
        public bool EnterZero(ulong va, bool writable) => sim.EnterZero(va, writable);
        public bool EnterShared(ulong va, IVnode vnode, long pindex, bool writable) => sim.EnterShared(va, vnode, pindex, writable);
        public void Protect(ulong va, ulong length, bool writeProtect) => sim.Protect(va, length, writeProtect);
        public void Poison(ulong va) => sim.Poison(va);
        public void Wake(ulong va, ulong length) => sim.Wake(va, length);
        public bool ReadPage(ulong va, Span<byte> dest) => sim.ReadPage(va, dest);
        public void Remove(ulong va, int pages) => Pending.Add((va, pages));
    }

    /// <summary>
    /// mremap of a page whose eviction was begun (written to swap, write-protected, its
    /// removal asked of the pmap but not done yet) and not completed: the page-table entry
    /// moves with the page, and the page stops being evicted. At the new address it is
    /// installed once, clean against its swap copy: a read needs no fault, a write faults
    /// (write-protect) and resolves. The removal then done at the old address finds nothing,
    /// and CompleteEvict there changes nothing. The next scan writes the new bytes to swap.
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void Mremap_EvictionInFlight_PageMovedStaysInstalled_NoLongerEvicting(string design)
    {
        var sim = new SimPmap();
        var pmap = new DeferredRemovePmap(sim);
        var space = vm.CreateSpace(pmap, Resolvers.Create(design));
        sim.Space = space;
        var c = space.Counters;
        space.MapAnon(A, 4 * P, Prot.Read | Prot.Write);
        for (int i = 0; i < 4; i++)
        {
            var b = Pattern(i);
            for (int j = 0; j < b.Length; j++) sim.Write(Pg(i) + (ulong)j, b[j]);
        }

        Assert.Equal(EvictResult.Evicted, space.BeginEvict(Pg(0)));
        Assert.Equal(1, c.pageouts);
        Assert.Equal(1, vm.SwapSlotsInUse);
        Assert.Equal(new[] { (Pg(0), 1) }, pmap.Pending);
        Assert.True(sim.Present(Pg(0)));
        Assert.False(sim.Writable(Pg(0)));
        Assert.Equal(4, space.ResidentPages);

        sim.Move(Pg(0), Pg(20), P);                       // the kernel's mremap
        space.Remap(Pg(0), Pg(20), P);                     // its event
        Assert.Equal(4, space.ResidentPages);              // counted once, at the new address
        Assert.True(space.IsInstalled(Pg(20)));
        Assert.False(space.IsInstalled(Pg(0)));

        foreach (var (va, n) in pmap.Pending) sim.Remove(va, n);   // the agent's madvise, at the old address
        pmap.Pending.Clear();
        space.CompleteEvict(Pg(0));                        // no eviction under way there any more
        Assert.Equal(4, space.ResidentPages);
        Assert.True(space.IsInstalled(Pg(20)));
        Assert.Equal(sim.PresentCount, space.ResidentPages);

        int faults = sim.Faults.Count;
        Assert.Equal(Pattern(0), sim.ReadPage(Pg(20)));
        Assert.Equal(faults, sim.Faults.Count);             // present: no fault, nothing superseded
        long wp = c.wp_resolved;
        sim.Write(Pg(20) + 7, 0x5A);                        // clean against its swap copy: write-protected
        Assert.Equal(1, c.wp_resolved - wp);
        Assert.True(sim.Writable(Pg(20)));
        var moved = Pattern(0);
        moved[7] = 0x5A;
        Assert.Equal(moved, sim.ReadPage(Pg(20)));
        Assert.Throws<SimSignalException>(() => sim.Read(Pg(0)));
        Assert.Equal(0, c.superseded);
        Assert.Equal(0, c.pageins);

        // The next scan takes all four (the moved page kept its reference bit: 4 bits cleared
        // first); the written page goes to swap again, its stale slot freed.
        var begun = new ulong[4];
        Assert.Equal(4, space.PageoutScan(4, begun, out bool full));
        Assert.False(full);
        Assert.Equal(new[] { Pg(1), Pg(2), Pg(3), Pg(20) }, begun);
        Assert.Equal(4, c.pd_skipped_referenced);
        Assert.Equal(5, c.pageouts);
        Assert.Equal(0, c.evict_clean);
        Assert.Equal(4, vm.SwapSlotsInUse);
        foreach (var (va, n) in pmap.Pending) sim.Remove(va, n);
        pmap.Pending.Clear();
        foreach (var va in begun) space.CompleteEvict(va);
        Assert.Equal(0, space.ResidentPages);
        Assert.Equal(moved, sim.ReadPage(Pg(20)));
        for (int i = 1; i < 4; i++) Assert.Equal(Pattern(i), sim.ReadPage(Pg(i)));
        Assert.Equal(4, c.pageins);
        Assert.Equal(0, c.internal_errors + c.sigbus + c.swap_bad_slots + c.superseded);
        space.Destroy();
        sim.Clear();
        ExitAndAssertBaseline();
    }

    /// <summary>A pmap over the SimPmap whose TryWriteProtect can be refused for chosen pages (a userfaultfd range busy elsewhere).</summary>
    sealed class RefusingPmap(SimPmap sim) : IPmap
    {
        public readonly HashSet<ulong> Refuse = new();
        public int PageSize => sim.PageSize;
        public Span<byte> Staging(int pages) => sim.Staging(pages);
        public bool EnterCopy(ulong va, int pages, bool writable) => sim.EnterCopy(va, pages, writable);
        public bool EnterZero(ulong va, bool writable) => sim.EnterZero(va, writable);
        public bool EnterShared(ulong va, IVnode vnode, long pindex, bool writable) => sim.EnterShared(va, vnode, pindex, writable);
        public void Protect(ulong va, ulong length, bool writeProtect) => sim.Protect(va, length, writeProtect);
        public bool TryWriteProtect(ulong va, ulong length)
        {
            for (ulong a = va; a < va + length; a += (ulong)sim.PageSize)
                if (Refuse.Contains(a)) return false;
            sim.Protect(va, length, true);
            return true;
        }
        public void Poison(ulong va) => sim.Poison(va);
        public void Wake(ulong va, ulong length) => sim.Wake(va, length);
        public bool ReadPage(ulong va, Span<byte> dest) => sim.ReadPage(va, dest);
        public void Remove(ulong va, int pages) => sim.Remove(va, pages);
    }

    /// <summary>
    /// A pmap that refuses a write protection (with userfaultfd: an event is pending, so it
    /// would refuse every page) stops the scan where it is: nothing more is deactivated or
    /// evicted in that scan. The pages are taken by a later one.
    /// </summary>
    [Theory, MemberData(nameof(Designs))]
    public void WriteProtectRefused_PageStaysActive_TakenLater(string design)
    {
        var sim = new SimPmap();
        var pmap = new RefusingPmap(sim);
        var space = vm.CreateSpace(pmap, Resolvers.Create(design));
        sim.Space = space;
        space.MapAnon(A, 4 * P, Prot.Read | Prot.Write);
        for (int i = 0; i < 4; i++)
        {
            var b = Pattern(i);
            for (int j = 0; j < b.Length; j++) sim.Write(Pg(i) + (ulong)j, b[j]);
        }
        var begun = new ulong[4];
        ulong[] ScanHere(int want)
        {
            int n = space.PageoutScan(want, begun, out bool full);
            Assert.False(full);
            var got = begun[..n];
            foreach (var va in got) space.CompleteEvict(va);
            return got;
        }

        pmap.Refuse.Add(Pg(1));
        // 0..3 are deactivated as one run; protecting the run is refused: stop, nothing taken.
        Assert.Empty(ScanHere(2));
        Assert.Equal(4, space.Counters.pd_deactivated);
        Assert.Equal(4, space.Counters.pd_skipped_referenced);
        Assert.Equal(0, space.Counters.pageouts);
        Assert.True(sim.Writable(Pg(0)) && sim.Writable(Pg(1)));   // inactive, not protected

        pmap.Refuse.Clear();
        Assert.Equal(new[] { Pg(0), Pg(1) }, ScanHere(2));  // their page-outs protect them
        Assert.Equal(4, space.Counters.pd_deactivated);
        Assert.Equal(2, space.Counters.pageouts);

        pmap.Refuse.Add(Pg(3));                            // inactive already: its page-out cannot protect it
        Assert.Equal(new[] { Pg(2) }, ScanHere(2));
        Assert.Equal(3, space.Counters.pageouts);
        Assert.True(sim.Present(Pg(3)));

        pmap.Refuse.Clear();
        Assert.Equal(new[] { Pg(3) }, ScanHere(2));         // deactivated (and protected) again, taken
        Assert.Equal(5, space.Counters.pd_deactivated);
        Assert.Equal(4, space.Counters.pageouts);
        Assert.Equal(0, space.ResidentPages);
        for (int i = 0; i < 4; i++) Assert.Equal(Pattern(i), sim.ReadPage(Pg(i)));
        Assert.Equal(0, space.Counters.internal_errors + space.Counters.sigbus);
        space.Destroy();
        sim.Clear();
        ExitAndAssertBaseline();
    }
}
