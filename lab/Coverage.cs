using System.Globalization;
using Lab.Interop;

namespace Lab;

/// <summary>
/// How much of a run's paging the lab saw: the faults the lab served beside the faults the kernel
/// counted for the run's processes. The kernel's count comes from getrusage(RUSAGE_CHILDREN) taken
/// around the run: when `lab run` reaps its program, the kernel adds the program's minor and major
/// faults, and those of every descendant it reaped, to this process's children totals. A fault the
/// lab serves is one of those (the thread blocks on the userfaultfd, then its retried fault
/// completes and counts once); a page the design maps ahead of need never faults in the kernel.
/// </summary>
public readonly record struct KernelFaults(long Minor, long Major)
{
    public long Total => Minor + Major;

    /// <summary>The faults of every child this process has reaped so far.</summary>
    public static unsafe KernelFaults OfReapedChildren()
    {
        Native.Rusage ru;
        if (Native.GetRusage(Native.RUSAGE_CHILDREN, &ru) != 0) return default;
        return new KernelFaults(ru.MinFlt, ru.MajFlt);
    }

    public static KernelFaults operator -(KernelFaults a, KernelFaults b) => new(a.Minor - b.Minor, a.Major - b.Major);

    /// <summary>The coverage lines appended to a run's stats text (`name value`, as the daemon writes
    /// them): the kernel's count, and the lab's share of it in percent.</summary>
    public string StatsLines(string statsText)
    {
        var served = Cli.ParseStats(statsText).TryGetValue("fault_count", out var v) && long.TryParse(v, out var n) ? n : 0;
        var pct = Total > 0 ? 100.0 * served / Total : 0;
        return $"kernel_faults {Total}\nkernel_major_faults {Major}\nlab_faults_outside {Math.Max(0, Total - served)}\n"
            + $"lab_coverage_pct {pct.ToString("0.0", CultureInfo.InvariantCulture)}\n";
    }
}
