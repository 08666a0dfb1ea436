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
}
