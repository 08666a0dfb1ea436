namespace Lab.Tests.Vm;

/// <summary>
/// A page-out is no map change (issue 11, item 7): BSD page daemons never bump the map
/// timestamp, so a fault that had the map unlocked for I/O goes on after a page-out of
/// another page; the faulting page itself is busy for the page-out until its fault ends.
/// Seeds: 000 FreeBSD, 001/003 NetBSD UVM, 002 DragonFly (listing line numbers).
/// </summary>
public sealed class PageoutMapVersionTests : VmTest
{
    [Theory, MemberData(nameof(Designs))]
    public void PageOutOfAnotherPageDuringIo_NoRevalidationRetry(string design)
    {
        vm.Swap = new MemSwap();
        var v = new MemVnode(4 * (long)P);
        var p = Proc(design);
        p.MapFile(A, 4 * P, v);
        p.MapAnon(B, P);
        p.Write(B, 9);
        EvictResult? evicted = null;
        v.OnLoad = (_, _) => evicted ??= p.Space.Evict(B);
        long retries = p.C.fault_retries;
        AssertPageIsFile(p, Pg(1), v, 1);
        Assert.Equal(EvictResult.Evicted, evicted);
        // Page daemons never change the map timestamp, so the relock after the I/O succeeds:
        // 001/003 uvmfault_relock by version (001: 136-152; 003: 1962), 002: 984-989 retries only
        // on a changed timestamp, 000: 880-916 re-looks-up only then.
        Assert.Equal(0, p.C.revalidate_retries);
        Assert.Equal(retries, p.C.fault_retries);
        Assert.Equal(9, p.Read(B));
        Assert.Equal(0, p.C.internal_errors);
    }

    [Theory, MemberData(nameof(Designs))]
    public void PageOutOfTheFaultingPageDuringIo_IsBusy_TheWriteKeepsItsBytes(string design)
    {
        vm.Swap = new MemSwap();
        var v = new MemVnode(2 * (long)P);
        var p = Proc(design);
        p.MapFile(A, 2 * P, v);
        p.Space.Advise(A, 2 * P, Advice.Random);
        AssertPageIsFile(p, A, v, 0);          // installed read-only (copy-on-write pending)
        v.Evict();                              // the write's copy must read the file again
        EvictResult? evicted = null;
        v.OnLoad = (_, _) => evicted ??= p.Space.Evict(A);
        p.Write(A + 1, 0x3C);                   // write-protect fault, I/O with the map unlocked
        // The faulting page is busy for a page-out until its fault ends (the lab's PG_BUSY).
        Assert.Equal(EvictResult.Busy, evicted);
        Assert.Equal(0x3C, p.Read(A + 1));
        Assert.Equal(v.Data[2], p.Read(A + 2));
        Assert.Equal(0, p.C.internal_errors);
        Assert.Equal(0, p.C.sigbus);
        Assert.Equal(MemVnode.Pattern(1), v.Data[1]);
    }
}
