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

    /// <summary>A run's stats text with its coverage block last: the daemon's rows on where the lab's
    /// faults and the outside pages went (faults_on_lab_files, outside_*), then the kernel's count
    /// and the lab's share of it.</summary>
    public string WithCoverage(string statsText)
    {
        var rest = new System.Text.StringBuilder();
        var block = new System.Text.StringBuilder();
        foreach (var line in statsText.Split('\n', StringSplitOptions.RemoveEmptyEntries))
            (line.StartsWith("outside_", StringComparison.Ordinal) || line.StartsWith("faults_on_lab_files ", StringComparison.Ordinal) ? block : rest)
                .Append(line).Append('\n');
        return rest.Append(block).Append(StatsLines(statsText)).ToString();
    }

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

/// <summary>
/// A process's resident pages outside lab memory at the end of its image, by kind: the shim's
/// exit report (LAB_OUTSIDE, lab/preload/coverage.c reads /proc/self/smaps). The kernel counts
/// faults per task only, so these say where the faults outside the lab went (a resident page
/// came in by a fault, or by the kernel's fault-around: up to 16 file pages per fault), not how
/// many there were. Reports = the processes that sent one (a process killed by a signal sends none).
/// </summary>
public readonly record struct OutsidePages(long File, long Stack, long Heap, long Anon, long Other, long Reports)
{
    public static OutsidePages From(in Lab.Linux.LabOutside o) =>
        new(Clamp(o.FilePages), Clamp(o.StackPages), Clamp(o.HeapPages), Clamp(o.AnonPages), Clamp(o.OtherPages), 1);

    // A report is a count of pages of one process: anything beyond 2^47 / 4096 is malformed.
    static long Clamp(ulong v) => (long)Math.Min(v, 1UL << 35);

    public static OutsidePages operator +(OutsidePages a, OutsidePages b) =>
        new(a.File + b.File, a.Stack + b.Stack, a.Heap + b.Heap, a.Anon + b.Anon, a.Other + b.Other, a.Reports + b.Reports);

    /// <summary>The stats rows (`name value` lines, as the daemon writes them).</summary>
    public void AppendTo(System.Text.StringBuilder sb, long labFileFaults)
    {
        sb.Append("faults_on_lab_files ").Append(labFileFaults).Append('\n');
        sb.Append("outside_file_pages ").Append(File).Append('\n');
        sb.Append("outside_stack_pages ").Append(Stack).Append('\n');
        sb.Append("outside_heap_pages ").Append(Heap).Append('\n');
        sb.Append("outside_anon_pages ").Append(Anon).Append('\n');
        sb.Append("outside_other_pages ").Append(Other).Append('\n');
        sb.Append("outside_reports ").Append(Reports).Append('\n');
    }
}
