namespace Lab.Tests;

/// <summary>
/// build/fsx under `lab run`: random write/read/truncate/fallocate/mmap (shared and private) on a
/// file of the mount, the same steps on a native file, every byte compared after each step. Its
/// mappings of the mount's file go through the lab (MAP_SHARED: the memfd page cache; MAP_PRIVATE:
/// the fault resolver). LAB_FSX_LONG=1 makes it 1,000,000 steps; LAB_FSX_SEED picks the first seed.
/// </summary>
public sealed class FsxTests(ITestOutputHelper output)
{
    static bool Long => Environment.GetEnvironmentVariable("LAB_FSX_LONG") == "1";

    static ulong FirstSeed =>
        ulong.TryParse(Environment.GetEnvironmentVariable("LAB_FSX_SEED"), out var s) ? s : (ulong)Environment.TickCount64 % 100_000;

    void RunFsx(string vm, long steps, ulong seed, int timeoutMs)
    {
        Assert.True(File.Exists(Repo.Prog("fsx")), $"{Repo.Prog("fsx")} is missing: make builds it");
        using var m = new LabMount(vm);
        var reference = Path.Combine(m.Dir, "reference");
        var args = new List<string> { "run", "--mount", m.Mount, "--", Repo.Prog("fsx"), "-N", steps.ToString(), seed.ToString(), m.M("fsx.dat"), reference };
        var r = Sh.Run(Repo.Lab, args, timeoutMs: timeoutMs);
        output.WriteLine($"vm {vm}, seed {seed}: {r}");
        Assert.True(r.ExitCode == 0, $"fsx failed (vm {vm}, seed {seed}; rerun with LAB_FSX_SEED={seed}):\n{r}\n{m.DaemonLog}");
        Assert.Contains("all equal", r.Stdout);
        // The program has ended: everything it wrote, through mappings too, is in the backing file.
        Assert.Equal(File.ReadAllBytes(reference), File.ReadAllBytes(m.B("fsx.dat")));
    }

    [KernelFact]
    public void Fsx_agrees_with_a_native_file_under_lab_run()
    {
        long steps = Long ? 1_000_000 : 10_000;
        RunFsx("freebsd", steps, FirstSeed, Long ? 6 * 3600_000 : 300_000);
    }

    /// <summary>
    /// Issue 9 item 12: xfstests' command line under a 1 MiB limit (close, drop_caches and reopen
    /// every 50 steps or so). Its buffers are four times the limit, so the kernel's reads into them
    /// meet the pageout all the time. LAB_FSX_LONG=1: the issue's 50,000 steps.
    /// </summary>
    [KernelFact]
    public void Fsx_xfstests_command_line_under_a_1M_limit()
    {
        using var m = new LabMount();
        string steps = Long ? "50000" : "1500";
        var r = Sh.Run(Repo.Lab, new[] { "run", "--mount", m.Mount, "--resident-limit", "1M", "--",
            Repo.Prog("fsx"), "-q", "-c", "50", "-l", "4194304", "-o", "262144", "-N", steps, "-S", "7", m.M("f") },
            timeoutMs: Long ? 4 * 3600_000 : 900_000);
        output.WriteLine(r.ToString());
        Assert.True(r.ExitCode == 0, $"fsx failed:\n{r}\n{m.DaemonLog}");
        Assert.Contains($"seed 7, {steps} steps, all equal", r.Stdout);
    }

    [KernelFact]
    public void Fsx_fixed_seeds_short_runs()
    {
        // Seeds that found bugs before (a fallocate left stale memfd pages that mappings saw).
        foreach (ulong seed in new ulong[] { 1, 2, 3, 4 })
            RunFsx("freebsd", 1_000, seed, 120_000);
    }
}
