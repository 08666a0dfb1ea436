namespace Lab.Tests;

/// <summary>
/// The kernel writing into lab memory while the pageout takes it: a read(2) of the lab's own
/// files is direct I/O, so the kernel pins the buffer's pages and the FUSE reply lands in them
/// with no fault. A pinned page must not be dropped (its I/O would land in a page the program no
/// longer has), and a page written through a pin after its bytes were saved must not leave with
/// the stale copy.
/// </summary>
public sealed class KernelIoIntoLabMemoryTests(ITestOutputHelper output)
{
    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void PreadOfALabFileIntoABufferFourTimesTheLimit_EveryByteArrives(string vm)
    {
        using var m = new LabMount(vm);
        var r = Sh.Run(Repo.Lab, new[] { "run", "--mount", m.Mount, "--resident-limit", "1M", "--stats", "--",
            Repo.Prog("preadcheck"), m.M("pc.dat"), "4", "5" }, timeoutMs: 300_000);
        output.WriteLine(r.ToString());
        Assert.True(r.ExitCode == 0, r.ToString() + m.DaemonLog);
        Assert.Equal("ok 5\n", r.Stdout);
        var c = LabMount.ParseCounters(r.Stderr);
        // The buffer went out and came back between the reads.
        Assert.True(LabMount.Get(c, "pageouts") > 1000, $"pageouts {LabMount.Get(c, "pageouts")}");
        Assert.Equal(0, LabMount.Get(c, "sigbus") + LabMount.Get(c, "internal_errors") + LabMount.Get(c, "lookup_miss"));
    }
}
