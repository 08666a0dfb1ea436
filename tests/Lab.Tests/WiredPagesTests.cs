namespace Lab.Tests;

/// <summary>
/// mlock'd lab memory under a resident limit: locked pages cannot be dropped (madvise and
/// UFFDIO_MOVE refuse them), so the pageout must never pick them, and a limit below the locked
/// set is reported once, not fought.
/// </summary>
public sealed class WiredPagesTests(ITestOutputHelper output)
{
    [KernelTheory, MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void Mlocked64MiBUnder32MLimit_Finishes_SameBytes_ReportedOnce(string vm)
    {
        var prog = Repo.Prog("mlockcheck");
        var native = Sh.Run(prog, new[] { "64", "unlock" });
        Assert.True(native.ExitCode == 0, native.ToString());
        using var m = new LabMount(vm);
        int logLinesBefore = m.DaemonLog.Split('\n', StringSplitOptions.RemoveEmptyEntries).Length;
        var r = Sh.Run(Repo.Lab, new[] { "run", "--mount", m.Mount, "--resident-limit", "32M", "--stats", "--", prog, "64", "unlock" },
            timeoutMs: 60_000);
        output.WriteLine(r.ToString());
        Assert.True(r.ExitCode == 0, r.ToString() + m.DaemonLog);
        Assert.Equal(native.Stdout, r.Stdout);
        var c = LabMount.ParseCounters(r.Stderr);
        // The 64 MiB (and the heap block's header page) were wired, twice the limit: said once.
        Assert.InRange(LabMount.Get(c, "resident_wired_max_pages"), 16384, 16384 + 2);
        Assert.Equal(1, LabMount.Get(c, "resident_limit_below_wired"));
        Assert.Equal(0, LabMount.Get(c, "sigbus") + LabMount.Get(c, "internal_errors") + LabMount.Get(c, "lookup_miss"));
        var log = m.DaemonLog.Split('\n', StringSplitOptions.RemoveEmptyEntries);
        output.WriteLine(m.DaemonLog);
        Assert.True(log.Length - logLinesBefore <= 3, $"the daemon logged {log.Length - logLinesBefore} lines:\n{m.DaemonLog}");
        Assert.Single(log, l => l.Contains("are wired (mlock)"));
        Assert.DoesNotContain(log, l => l.Contains("could not drop pages"));
    }
}
