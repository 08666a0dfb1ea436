namespace Lab.Tests.Vm;

/// <summary>vm_fault_dontneed (FreeBSD) and read-ahead used/wasted accounting.</summary>
public sealed class ReadAheadTests
{
    const ulong P = 4096;
    const ulong A = 0x4000_0000;   // 2 MiB aligned: dontneed clusters start at the entry

    readonly Lab.Vm.Vm vm = new();

    SimProcess Proc(string design) => new(vm, Resolvers.Create(design));

    static ulong Pg(long i) => A + (ulong)i * P;

    /// <summary>
    /// A sequential scan of 1536 pages (three 512-page clusters). Each window that reaches
    /// the last 32 pages of a cluster deactivates the whole cluster before it: that
    /// happens in clusters 2 and 3 (cluster 1 has nothing before it in the entry), so
    /// 2 × 512 resident first-object (vnode) pages. MADV_SEQUENTIAL reads 31 ahead from
    /// the first fault; NORMAL reaches the maximum window at its third pager call.
    /// </summary>
    [Theory, InlineData(Advice.Sequential), InlineData(Advice.Normal)]
    public void SequentialScan_DeactivatesTheClusterBehind(Advice advice)
    {
        const int pages = 1536;
        var v = new MemVnode(pages * (long)P);
        var p = Proc("freebsd");
        p.MapFile(A, pages * P, v, prot: Prot.Read);
        p.Space.Advise(A, pages * P, advice);
        for (long i = 0; i < pages; i++) Assert.Equal(v.Data[i * (long)P + 9], p.Read(Pg(i) + 9));
        Assert.Equal(2 * Lab.Vm.FreeBsd.FreeBsdResolver.DontneedPages, p.C.behind_deactivated);
        Assert.Equal(0, p.C.sigbus + p.C.internal_errors);
        p.Exit();
    }

    [Fact]
    public void ShortScan_DeactivatesNothing()
    {
        var v = new MemVnode(1000 * (long)P);
        var p = Proc("freebsd");
        p.MapFile(A, 1000 * P, v, prot: Prot.Read);
        p.Space.Advise(A, 1000 * P, Advice.Sequential);
        // Up to page 991 no window reaches the end of the second cluster.
        for (long i = 0; i < 960; i++) p.Read(Pg(i));
        Assert.Equal(0, p.C.behind_deactivated);
        p.Exit();
    }

    [Fact]
    public void RandomAdvice_NeverDeactivates()
    {
        var v = new MemVnode(1536 * (long)P);
        var p = Proc("freebsd");
        p.MapFile(A, 1536 * P, v, prot: Prot.Read);
        p.Space.Advise(A, 1536 * P, Advice.Random);
        for (long i = 0; i < 1536; i++) p.Read(Pg(i));
        Assert.Equal(0, p.C.behind_deactivated);
        Assert.Equal(0, p.C.read_ahead_pages);
        p.Exit();
    }

    /// <summary>
    /// DragonFly reads 8 ahead but prefaults only 4. A sequential scan installs every
    /// page it read ahead (faulting on the rest): all used, none wasted. Touching every
    /// 16th page reads clusters whose far pages are never installed: wasted at munmap.
    /// </summary>
    [Fact]
    public void SequentialUsesReadAhead_SparseWastesIt_DragonFly()
    {
        const int pages = 256;
        var v = new MemVnode(pages * (long)P);
        var seq = Proc("dragonfly");
        seq.MapFile(A, pages * P, v, prot: Prot.Read);
        for (long i = 0; i < pages; i++) seq.Read(Pg(i));
        Assert.True(seq.C.read_ahead_pages > 0);
        seq.Munmap(A, pages * P);
        Assert.Equal(seq.C.read_ahead_pages, seq.C.read_ahead_used);
        Assert.Equal(0, seq.C.read_ahead_wasted);
        seq.Exit();

        var w = new MemVnode(pages * (long)P);
        var sparse = Proc("dragonfly");
        sparse.MapFile(A, pages * P, w, prot: Prot.Read);
        sparse.Space.Advise(A, pages * P, Advice.Normal);
        for (long i = 0; i < pages; i += 16) sparse.Read(Pg(i));
        // Each fault reads ahead (8, or 15 when lastr calls it sequential); prefault installs 4.
        long ahead = sparse.C.read_ahead_pages;
        Assert.True(ahead > 0);
        sparse.Munmap(A, pages * P);
        Assert.Equal(ahead, sparse.C.read_ahead_used + sparse.C.read_ahead_wasted);
        Assert.True(sparse.C.read_ahead_wasted > 0);
        sparse.Exit();
    }

    /// <summary>The last reference to the vnode object going counts what nobody installed.</summary>
    [Fact]
    public void ObjectDeath_CountsWasted_FreeBsd()
    {
        var v = new MemVnode(64 * (long)P);
        var p = Proc("freebsd");
        p.MapFile(A, 64 * P, v, prot: Prot.Read);
        p.Read(Pg(0));                               // next_read: 23 ahead, all prefaulted
        Assert.Equal(23, p.C.read_ahead_pages);
        Assert.Equal(23, p.C.read_ahead_used);
        p.Exit();
        Assert.Equal(0, p.C.read_ahead_wasted);
    }
}
