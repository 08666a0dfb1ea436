namespace Lab.Tests.Vm;

/// <summary>
/// Shadow-chain collapse and bypass (freebsd, dragonfly): transparency (invariant 7),
/// chain depth after exits, reference counts back to baseline (invariant 10).
/// </summary>
public sealed class CollapseTests : VmTest
{
    public static TheoryData<string> ChainDesigns => new() { "freebsd", "dragonfly" };

    public static TheoryData<string, int, bool> Trees
    {
        get
        {
            var d = new TheoryData<string, int, bool>();
            foreach (var design in new[] { "freebsd", "dragonfly" })
                foreach (int depth in new[] { 8, 64 })
                    foreach (bool file in new[] { false, true })
                        d.Add(design, depth, file);
            return d;
        }
    }

    /// <summary>
    /// What a walk from the entry's object finds for the page at <paramref name="va"/>:
    /// the shallowest page's content (a vnode page as Cache), or Absent for a zero fill.
    /// Chain-lookup semantics (invariant 8) computed straight from the model.
    /// </summary>
    static (PageContent Content, bool FoundInVnode) Resolve(SimProcess p, ulong va)
    {
        var (o, pindex) = p.Space.ObjectAt(va)!.Value;
        for (VmObject? x = o; x != null; x = x.BackingObject)
        {
            lock (x.Lock)
            {
                Assert.False(x.dead, $"{x} in a live chain is dead");
                if (x.pages.TryGetValue(pindex, out var st) && st.Content != PageContent.None)
                    return (st.Content, false);
                if (x.Kind == VmObjectKind.Vnode)
                    return pindex < x.Size ? (PageContent.Cache, true) : (PageContent.None, true);
                pindex += x.backing_object_offset;
            }
        }
        return (PageContent.None, false);
    }

    static byte FileByte(MemVnode? v, int page) => v == null ? (byte)0 : v.Data[page * (long)P];

    /// <summary>
    /// A fork tree N deep: p0 writes page 0 and forks p1, p1 writes page 1 and forks p2,
    /// and so on; each parent then writes a page of its own (so it has a shadow that does
    /// not hide its backing object, and nothing is bypassed yet). Every process reads
    /// what its ancestors wrote before its fork. Then the intermediate processes exit in
    /// a shuffled order: the survivors read the same, their chains collapse to at most
    /// two objects (plus the file), and every reference is gone after the last exit.
    /// </summary>
    [Theory, MemberData(nameof(Trees))]
    public void ForkTree_IntermediatesExit_ChainCollapses_ContentUnchanged(string design, int depth, bool file)
    {
        int pages = depth + 6;
        int own = depth + 5;   // the page parents write after their fork
        var v = file ? new MemVnode(pages * (long)P) : null;
        var procs = new List<SimProcess>();
        var p0 = Proc(design);
        if (v != null) p0.MapFile(A, (ulong)pages * P, v); else p0.MapAnon(A, (ulong)pages * P);
        procs.Add(p0);
        p0.Write(Pg(0), 1);
        for (int i = 1; i <= depth; i++)
        {
            var parent = procs[i - 1];
            var child = parent.Fork();
            procs.Add(child);
            parent.Write(Pg(own), (byte)(100 + i - 1));                // the parent diverges after the fork
            child.Write(Pg(i), (byte)(i + 1));
            if (i % 3 == 0) child.DontNeed(Pg(i - 2), P);                // a hole over an ancestor's page
        }
        var leaf = procs[depth];
        int fullDepth = depth + 1 + (file ? 1 : 0);
        Assert.Equal(fullDepth, leaf.Space.ChainDepth(A));

        // What the leaf reads before the exits.
        var leafBytes = Enumerable.Range(0, pages).Select(i => leaf.Read(Pg(i))).ToArray();
        // Leaf expectations: its own page, its ancestors' pre-fork values, holes, untouched pages.
        Assert.Equal(depth + 1, leafBytes[depth]);
        if (depth % 3 != 0) Assert.Equal(depth, leafBytes[depth - 1]);   // its parent's pre-fork value
        for (int i = depth + 1; i < own; i++) Assert.Equal(FileByte(v, i), leafBytes[i]);
        Assert.Equal(FileByte(v, own), leafBytes[own]);   // the parents' later writes are theirs

        // A deep read in the leaf walks the whole chain.
        leaf.DontNeed(Pg(depth + 2), P);
        Assert.Equal(FileByte(v, depth + 2), leaf.Read(Pg(depth + 2)));
        Assert.Equal(fullDepth, leaf.C.chain_depth_max);

        // What each survivor's pages resolve to in the model before the exits.
        SimProcess[] survivors = [p0, leaf];
        var before = survivors.Select(s => Enumerable.Range(0, pages).Select(i => Resolve(s, Pg(i))).ToArray()).ToArray();

        var rnd = new Random(depth * 2 + (file ? 1 : 0));
        var middle = procs.Skip(1).Take(depth - 1).OrderBy(_ => rnd.Next()).ToList();
        long collapses = 0;
        foreach (var m in middle)
        {
            m.Exit();
            collapses += m.C.collapses;
        }
        Assert.True(collapses >= depth - 1, $"{collapses} collapses for {depth - 1} exits");
        Assert.True(leaf.Space.ChainDepth(A) <= 2 + (file ? 1 : 0), leaf.Space.DescribeMaps());
        Assert.True(p0.Space.ChainDepth(A) <= 2 + (file ? 1 : 0), p0.Space.DescribeMaps());

        for (int s = 0; s < survivors.Length; s++)
            for (int i = 0; i < pages; i++)
                Assert.True(before[s][i] == Resolve(survivors[s], Pg(i)), $"survivor {s} page {i}: {before[s][i]} then {Resolve(survivors[s], Pg(i))}\n{survivors[s].Space.DescribeMaps()}");
        Assert.Equal(leafBytes, Enumerable.Range(0, pages).Select(i => leaf.Read(Pg(i))).ToArray());
        Assert.Equal(1, p0.Read(Pg(0)));

        // The survivor still writes every page (write-protect faults on inherited pages
        // resolve in the model), holes still read zero or the file.
        leaf.DontNeed(Pg(depth + 1), P);
        Assert.Equal(FileByte(v, depth + 1), leaf.Read(Pg(depth + 1)));
        for (int i = 0; i < pages; i++) leaf.Write(Pg(i) + 1, 7);
        for (int i = 0; i < pages; i++) Assert.Equal(7, leaf.Read(Pg(i) + 1));
        Assert.Equal(leafBytes[0], leaf.Read(Pg(0)));
        Assert.Equal(1, p0.Read(Pg(0)));
        foreach (var p in procs) Assert.Equal(0, p.C.internal_errors + p.C.sigbus);

        // Fault cost after the collapse: a read of an untouched page walks at most the short chain.
        leaf.DontNeed(Pg(depth + 3), P);
        long deep = leaf.C.chain_walk_17_up + leaf.C.chain_walk_5_16;
        Assert.Equal(FileByte(v, depth + 3), leaf.Read(Pg(depth + 3)));
        Assert.Equal(deep, leaf.C.chain_walk_17_up + leaf.C.chain_walk_5_16);

        ExitAndAssertNoObjects(p0, leaf);
    }

    [Theory, MemberData(nameof(ChainDesigns))]
    public void Bypass_WhenTheShadowHidesEveryPageOfASharedBackingObject(string design)
    {
        var parent = ProcWithAnon(design, 4);
        parent.Write(Pg(0), 1);
        parent.Write(Pg(1), 2);
        var old = parent.Space.ObjectAt(A)!.Value.Object;
        var child = parent.Fork();

        parent.Write(Pg(0), 10);                      // shadow X over the shared object; copy
        Assert.Equal(0, parent.C.bypasses);
        Assert.Equal(2, parent.Space.ChainDepth(A));
        parent.Write(Pg(1), 20);                      // X now hides both pages: bypass after the copy
        Assert.Equal(1, parent.C.bypasses);
        Assert.Equal(0, parent.C.collapses);
        Assert.Equal(2, parent.C.v_cow_faults);
        Assert.Equal(1, parent.Space.ChainDepth(A));
        Assert.Equal(1, old.RefCount);                // the child's entry only
        Assert.Equal(0, old.ShadowCount);
        Assert.False(old.IsDead);

        Assert.Equal(1, child.Read(Pg(0)));
        Assert.Equal(2, child.Read(Pg(1)));
        child.Write(Pg(1), 3);                        // the child's object is private now: no copy
        Assert.Equal(0, child.C.v_cow_faults);
        Assert.Equal(0, child.C.shadows_created);
        Assert.Equal(10, parent.Read(Pg(0)));
        Assert.Equal(20, parent.Read(Pg(1)));
        AssertNoInternalErrors(parent, child);

        child.Exit();
        Assert.True(old.IsDead);
        ExitAndAssertNoObjects(parent);
    }

    [Theory, MemberData(nameof(ChainDesigns))]
    public void Bypass_OverAFile_KeepsTheVnodeReferenced(string design)
    {
        var parent = ProcWithFile(design, 4, out var v);
        parent.Write(Pg(0), 1);                       // S over the vnode object
        var vobj = vm.VnodeObject(v);
        var child = parent.Fork();
        parent.Write(Pg(0), 2);                       // X over S, hides S's only page: bypass to the vnode
        Assert.Equal(1, parent.C.bypasses);
        Assert.Equal(2, parent.Space.ChainDepth(A));
        Assert.Equal(2, vobj.RefCount);               // S and X
        Assert.Equal(2, vobj.ShadowCount);
        Assert.Equal(v.Data[1 * P], parent.Read(Pg(1)));
        Assert.Equal(1, child.Read(Pg(0)));
        child.DontNeed(Pg(0), P);
        Assert.Equal(v.Data[0], child.Read(Pg(0)));
        child.Exit();
        Assert.Equal(1, vobj.RefCount);
        ExitAndAssertNoObjects(parent);
    }

    [Theory, MemberData(nameof(ChainDesigns))]
    public void Fork_CollapsesTheObjectItShares(string design)
    {
        // With collapse off at exit the chain stays long; the next fork collapses it (vm_map_copy_entry).
        var p0 = ProcWithAnon(design, 4);
        p0.Write(Pg(0), 1);
        var p1 = p0.Fork();
        p1.Write(Pg(1), 2);                           // p1: X1 over S0
        vm.CollapseEnabled = false;
        p0.Exit();                                    // S0: one reference (X1), one shadow
        vm.CollapseEnabled = true;
        Assert.Equal(2, p1.Space.ChainDepth(A));
        var p2 = p1.Fork();
        Assert.Equal(1, p1.C.collapses);
        Assert.Equal(1, p1.Space.ChainDepth(A));
        Assert.Equal(1, p2.Read(Pg(0)));
        p2.Write(Pg(0), 5);
        Assert.Equal(1, p1.Read(Pg(0)));
        AssertNoInternalErrors(p1, p2);
        ExitAndAssertNoObjects(p1, p2);
    }

    [Theory, MemberData(nameof(ChainDesigns))]
    public void RemoveMarkers_SurviveTheCollapse(string design)
    {
        var p0 = ProcWithFile(design, 4, out var v);
        p0.Write(Pg(2), 9);                           // S0 page 2
        var p1 = p0.Fork();
        p1.DontNeed(Pg(2), P);                        // p1's shadow gets a File marker over S0's page 2
        Assert.Equal(v.Data[2 * P], p1.Read(Pg(2)));
        p0.Exit();                                    // S0 collapses into p1's shadow; the marker wins
        Assert.Equal(1, p0.C.collapses);
        Assert.Equal(2, p1.Space.ChainDepth(A));
        p1.DontNeed(Pg(2), P);
        Assert.Equal(v.Data[2 * P], p1.Read(Pg(2)));
        Assert.Equal(0, p1.C.internal_errors);
        ExitAndAssertNoObjects(p1);
    }

    /// <summary>
    /// Collapses racing with faults in the surviving space: children fork, write and exit
    /// on one thread while others read and write the parent's private file mapping.
    /// Nothing may need bytes the model lost, and every reference goes in the end.
    /// </summary>
    [Theory, MemberData(nameof(ChainDesigns))]
    public async Task Collapse_ConcurrentWithFaults_StaysConsistent(string design)
    {
        const int pages = 64;
        var v = new MemVnode(pages * (long)P) { LoadDelayMs = 0 };
        var root = vm.CreateSpace(new CountingPmap(), Resolvers.Create(design));
        root.MapFile(A, pages * P, Prot.Read | Prot.Write, v, 0, shared: false);
        var spaces = new List<AddressSpace> { root };
        var stop = 0;
        var forker = Task.Run(() =>
        {
            var rnd = new Random(1);
            var chain = new List<AddressSpace>();
            for (int round = 0; round < 200; round++)
            {
                var parent = chain.Count > 0 && rnd.Next(2) == 0 ? chain[^1] : root;
                parent.ForkProtect();
                var child = parent.Fork(new CountingPmap());
                lock (spaces) spaces.Add(child);
                for (int j = 0; j < 8; j++) child.Fault(A + (ulong)rnd.Next(pages) * P, FaultAccess.Write);
                chain.Add(child);
                if (chain.Count > 4)
                {
                    int k = rnd.Next(chain.Count);
                    chain[k].Destroy();
                    chain.RemoveAt(k);
                }
            }
            foreach (var c in chain) c.Destroy();
            Volatile.Write(ref stop, 1);
        });
        var faulters = Enumerable.Range(0, 3).Select(t => Task.Run(() =>
        {
            var rnd = new Random(100 + t);
            while (Volatile.Read(ref stop) == 0)
            {
                // Each faulter keeps to its own pages (index ≡ t mod 3): a write-protect fault is
                // only asked for an installed page, and no other faulter may remove it between
                // the check and the fault (the kernel never gives a WP fault on an absent page).
                ulong va = A + (ulong)(rnd.Next((pages - t + 2) / 3) * 3 + t) * P;
                var access = (FaultAccess)rnd.Next(3);
                if (access == FaultAccess.WriteProtect && !root.IsInstalled(va)) access = FaultAccess.Write;
                var r = root.Fault(va, access);
                Assert.NotEqual(FaultResult.SigSegv, r);
                if (rnd.Next(50) == 0) root.Remove(va, P);
            }
        })).ToArray();
        await Task.WhenAll([forker, .. faulters]).WaitAsync(TimeSpan.FromSeconds(60));
        Assert.True(forker.IsCompletedSuccessfully);
        foreach (var f in faulters) Assert.True(f.IsCompletedSuccessfully, f.Exception?.ToString());
        long collapses = 0;
        foreach (var s in spaces)
        {
            Assert.Equal(0, s.Counters.internal_errors);
            Assert.Equal(0, s.Counters.sigbus);
            collapses += s.Counters.collapses + s.Counters.bypasses;
        }
        Assert.True(collapses > 0);
        Assert.True(root.MaxChainDepth() <= 3, root.DescribeMaps());
        root.Destroy();
        Assert.Equal(0, vm.ObjectsAlive);
    }

    /// <summary>A thread-safe pmap that keeps nothing (the concurrent test checks the model).</summary>
    sealed class CountingPmap : IPmap
    {
        [ThreadStatic] static byte[]? staging;
        public int PageSize => 4096;
        public Span<byte> Staging(int pages) => (staging ??= new byte[4096 * 64]).AsSpan(0, pages * 4096);
        public bool EnterCopy(ulong va, int pages, bool writable) => true;
        public bool EnterZero(ulong va, bool writable) => true;
        public bool EnterShared(ulong va, IVnode vnode, long pindex, bool writable) => true;
        public void Protect(ulong va, ulong length, bool writeProtect) { }
        public void Poison(ulong va) { }
        public void Wake(ulong va, ulong length) { }
        public bool ReadPage(ulong va, Span<byte> dest) => false;
        public void Remove(ulong va, int pages) { }
    }
}
