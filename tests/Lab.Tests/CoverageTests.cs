namespace Lab.Tests;

/// <summary>`lab run --stats` and `lab compare` put the faults the lab served beside the faults the
/// kernel counted for the run (getrusage of the reaped program), as a coverage percentage.</summary>
public sealed class CoverageTests
{
    const int Pages = 3000;

    static (long Touch, long Self) Own(string stdout)
    {
        var f = stdout.Trim().Split(' ');
        Assert.True(f.Length == 4 && f[0] == "touch_faults" && f[2] == "self_faults", stdout);
        return (long.Parse(f[1]), long.Parse(f[3]));
    }

    [KernelTheory]
    [MemberData(nameof(Repo.Designs), MemberType = typeof(Repo))]
    public void RunStats_PutTheKernelsCountBesideTheLabs(string vm)
    {
        using var m = new LabMount(vm);
        var (r, c) = m.RunCounted(Repo.Prog("faultcount"), Pages.ToString());
        Assert.True(r.ExitCode == 0, r.ToString());
        var (touch, self) = Own(r.Stdout);
        // Every touched page is one kernel fault and one lab fault (a zero fill: no design maps
        // anonymous neighbours ahead), so the lab's count of the run holds at least those.
        Assert.Equal(Pages, touch);
        long served = LabMount.Get(c, "fault_count"), kernel = LabMount.Get(c, "kernel_faults");
        Assert.True(served >= Pages, r.Stderr);
        // The kernel's count is the program's own, plus the faults of its exit path.
        Assert.True(kernel >= self && kernel <= self + 100, $"kernel_faults {kernel}, the program counted {self} before exit\n{r.Stderr}");
        Assert.Equal(kernel - served, LabMount.Get(c, "lab_faults_outside"));
        var pct = r.Stderr.Split('\n').Select(l => l.Trim().Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .Single(p => p.Length == 2 && p[0] == "lab_coverage_pct")[1];
        Assert.Equal((100.0 * served / kernel).ToString("0.0", System.Globalization.CultureInfo.InvariantCulture), pct);
    }

    [KernelFact]
    public void Compare_ShowsCoverageForEveryDesign()
    {
        using var m = new LabMount();
        var r = Sh.Lab("compare", "--mount", m.Mount, "--", Repo.Prog("faultcount"), Pages.ToString(), "quiet");
        Assert.True(r.ExitCode == 0, r.ToString());
        var rows = r.Stdout.Split('\n').Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)).ToList();
        var header = rows[0];
        Assert.Equal(new[] { "counter" }.Concat(global::Lab.Vm.Resolvers.Names), header);
        foreach (var name in new[] { "kernel_faults", "lab_faults_outside", "lab_coverage_pct" })
        {
            var row = rows.Single(p => p.Length > 0 && p[0] == name);
            Assert.Equal(header.Length, row.Length);
        }
        var kernel = rows.Single(p => p.Length > 0 && p[0] == "kernel_faults").Skip(1).Select(long.Parse);
        Assert.All(kernel, k => Assert.InRange(k, Pages, Pages * 2));
    }

    // outsidepages STACK ANON: STACK pages of the main stack, ANON pages of a private anonymous
    // MAP_STACK mapping (which the shim leaves outside lab memory), then the shim's exit report.
    const int StackPages = 200, AnonPages = 300;

    static Dictionary<string, long> Outside(LabMount m, params string[] args)
    {
        var (r, c) = m.RunCounted([Repo.Prog("outsidepages"), .. args]);
        Assert.True(r.ExitCode == (args.Contains("kill") ? 137 : 0), r.ToString());
        return c;
    }

    [KernelFact]
    public void ExitReport_SplitsTheOutsidePagesByKind()
    {
        using var m = new LabMount();
        // Same argv lengths: the baseline differs from the run only in the pages touched.
        var none = Outside(m, "000", "000");
        var some = Outside(m, StackPages.ToString("000"), AnonPages.ToString("000"));
        foreach (var c in new[] { none, some })
        {
            Assert.Equal(1, LabMount.Get(c, "processes"));
            Assert.Equal(1, LabMount.Get(c, "outside_reports"));
            // Program text and libraries are outside the lab (the program is not on the mount).
            Assert.True(LabMount.Get(c, "outside_file_pages") > 0);
        }
        // The anonymous mapping: every page touched is resident, private, and nothing else moved.
        Assert.Equal(AnonPages, LabMount.Get(some, "outside_anon_pages") - LabMount.Get(none, "outside_anon_pages"));
        // The stack: the touched pages, less those the baseline's own deepest frames (the exit
        // path's, below main's) had made resident already.
        long stack = LabMount.Get(some, "outside_stack_pages") - LabMount.Get(none, "outside_stack_pages");
        Assert.InRange(stack, StackPages - 8, StackPages);
    }

    [KernelFact]
    public void ExitReport_ComesFromEveryImage_AndNotFromAKilledProcess()
    {
        using var m = new LabMount();
        var once = Outside(m, StackPages.ToString(), AnonPages.ToString());
        // The first image reports before its exec, the second at its exit.
        var exec = Outside(m, StackPages.ToString(), AnonPages.ToString(), "exec");
        Assert.Equal(2, LabMount.Get(exec, "processes"));
        Assert.Equal(2, LabMount.Get(exec, "outside_reports"));
        Assert.InRange(LabMount.Get(exec, "outside_anon_pages"), 2 * AnonPages, 2 * LabMount.Get(once, "outside_anon_pages"));
        Assert.True(LabMount.Get(exec, "outside_stack_pages") >= 2 * (StackPages - 8));
        // SIGKILL: no exit path runs, so no report; the kernel's count still includes its faults.
        var killed = Outside(m, StackPages.ToString(), AnonPages.ToString(), "kill");
        Assert.Equal(1, LabMount.Get(killed, "processes"));
        Assert.Equal(0, LabMount.Get(killed, "outside_reports"));
        Assert.Equal(0, LabMount.Get(killed, "outside_anon_pages"));
        Assert.True(LabMount.Get(killed, "kernel_faults") >= StackPages + AnonPages);
    }

    [KernelFact]
    public void Compare_ShowsTheOutsideSplitForEveryDesign()
    {
        using var m = new LabMount();
        var r = Sh.Lab("compare", "--mount", m.Mount, "--", Repo.Prog("outsidepages"), StackPages.ToString(), AnonPages.ToString());
        Assert.True(r.ExitCode == 0, r.ToString());
        var rows = r.Stdout.Split('\n').Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries)).ToList();
        var header = rows[0];
        foreach (var name in new[] { "outside_file_pages", "outside_stack_pages", "outside_anon_pages", "outside_reports" })
        {
            var row = rows.Single(p => p.Length > 0 && p[0] == name);
            Assert.Equal(header.Length, row.Length);
        }
        Assert.All(rows.Single(p => p.Length > 0 && p[0] == "outside_reports").Skip(1), v => Assert.Equal("1", v));
        Assert.All(rows.Single(p => p.Length > 0 && p[0] == "outside_anon_pages").Skip(1).Select(long.Parse), v => Assert.True(v >= AnonPages));
    }
}
