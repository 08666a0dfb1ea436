using System.Diagnostics;

namespace Lab.Tests;

/// <summary>
/// The daemon must not grow with the number of programs it has served: after many short runs
/// (forks, swap, SIGKILL) it returns, once idle, to about the footprint it had before them.
/// </summary>
public sealed class GrowthTests(ITestOutputHelper output)
{
    sealed record Footprint(long RssKb, long AnonKb, long FileKb, int Fds, int Threads, long SwapBytes)
    {
        public override string ToString() => $"rss {RssKb} kB (anon {AnonKb}, file {FileKb}), {Fds} fds, {Threads} threads, swap store {SwapBytes} bytes";
    }

    /// <summary>Measured from outside the daemon: /proc and the swap store's files.</summary>
    static Footprint Measure(int pid)
    {
        long rss = 0, anon = 0, file = 0;
        int threads = 0;
        static long Kb(string line) => long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]);
        foreach (var line in File.ReadAllLines($"/proc/{pid}/status"))
        {
            if (line.StartsWith("VmRSS:")) rss = Kb(line);
            if (line.StartsWith("RssAnon:")) anon = Kb(line);
            if (line.StartsWith("RssFile:")) file = Kb(line);
            if (line.StartsWith("Threads:")) threads = int.Parse(line.Split('\t', StringSplitOptions.RemoveEmptyEntries)[1]);
        }
        long swap = 0;
        foreach (var suffix in new[] { "", "-wal" })
        {
            var f = new FileInfo($"/run/lab/swap-{pid}.db{suffix}");
            if (f.Exists) swap += f.Length;
        }
        return new Footprint(rss, anon, file, Directory.GetFileSystemEntries($"/proc/{pid}/fd").Length, threads, swap);
    }

    static Dictionary<string, long> Stats(LabMount m) => LabMount.ParseCounters(File.ReadAllText(m.M(".lab/stats")));

    /// <summary>
    /// Waits until the daemon is idle and has trimmed after every program so far: its last finished
    /// trim came after `processes` programs (a trim runs once no program has been alive for a while).
    /// Counting trims instead raced: a trim could finish between a program's end and the count's read.
    /// </summary>
    static Dictionary<string, long> WaitIdleTrim(LabMount m)
    {
        var deadline = DateTime.UtcNow.AddSeconds(120);
        while (true)
        {
            var s = Stats(m);
            if (LabMount.Get(s, "processes_alive") == 0 && LabMount.Get(s, "idle_trim_after_processes") == LabMount.Get(s, "processes"))
                return s;
            if (DateTime.UtcNow > deadline) throw new TimeoutException("no idle trim within 120 s:\n" + string.Join('\n', s));
            Thread.Sleep(200);
        }
    }

    static readonly string[] Designs = global::Lab.Vm.Resolvers.Names.ToArray();

    /// <summary>One short program; kind 0: plain, 1: under a 2M limit (swap), 2: SIGKILLed once ready, 3: SIGKILLed under a limit.</summary>
    static string? RunOne(LabMount m, int i)
    {
        string vm = Designs[i % Designs.Length], file = m.M($"c{i % 16}");
        int kind = (i / Designs.Length) % 4;
        var limit = kind is 1 or 3 ? new[] { "--resident-limit", "2M" } : Array.Empty<string>();
        var args = new List<string> { "run", "--mount", m.Mount, "--vm", vm };
        args.AddRange(limit);
        args.AddRange(new[] { "--", Repo.Prog("churn"), file, kind is 1 or 3 ? "8" : "4" });
        if (kind < 2)
        {
            var r = Sh.Run(Repo.Lab, args);
            // sum over the anon pages of i*7+3, plus the file's words (i+1 shared, i+1 private).
            long pages = (kind == 1 ? 8 : 4) * 256, sum = 0;
            for (long p = 0; p < pages; p++) sum += p * 7 + 3;
            for (long p = 0; p < 64; p++) sum += 2 * (p + 1);
            return r.ExitCode == 0 && r.Stdout == $"ok {sum}\n" ? null : $"run {i} ({vm}, kind {kind}): {r}";
        }
        args.Add("hang");
        var psi = new ProcessStartInfo(Repo.Lab) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args) psi.ArgumentList.Add(a);
        psi.Environment["LAB_PRELOAD"] = Repo.Shim;
        using var lab = Process.Start(psi)!;
        var err = lab.StandardError.ReadToEndAsync();
        try
        {
            var ready = lab.StandardOutput.ReadLineAsync();
            if (!ready.Wait(180_000) || ready.Result != "ready") return $"run {i} ({vm}, kind {kind}): not ready: {ready.Status}";
            // `lab run` waits for the program: its child. SIGKILL it, as the OOM killer or a user would.
            var children = File.ReadAllText($"/proc/{lab.Id}/task/{lab.Id}/children").Split(' ', StringSplitOptions.RemoveEmptyEntries);
            foreach (var c in children) LabMount.Signal(int.Parse(c), 9);
            if (!lab.WaitForExit(60_000)) return $"run {i}: lab run did not end after its program was killed";
            return null;
        }
        finally
        {
            if (!lab.HasExited) { lab.Kill(entireProcessTree: true); lab.WaitForExit(); }
            err.Wait(10_000);
        }
    }

    static void RunMany(LabMount m, int first, int count, List<string> failures)
    {
        Parallel.For(first, first + count, new ParallelOptions { MaxDegreeOfParallelism = 4 }, i =>
        {
            var f = RunOne(m, i);
            if (f != null) lock (failures) failures.Add(f);
        });
    }

    /// <summary>The first failure leads the message (a CI log may keep only its first lines); then the rest and the daemon's log.</summary>
    void AssertNoFailure(List<string> failures, LabMount m)
    {
        if (failures.Count == 0) return;
        foreach (var f in failures) output.WriteLine(f);
        output.WriteLine(m.DaemonLog);
        Assert.Fail($"{failures.Count} run(s) failed; first: {failures[0].ReplaceLineEndings(" | ")}\n{string.Join("\n", failures)}\n{m.DaemonLog}");
    }

    [KernelFact]
    public void The_daemon_returns_to_its_footprint_when_idle_after_many_programs()
    {
        using var m = new LabMount("freebsd");
        int pid = m.Daemon.Id;
        var start = Measure(pid);
        var failures = new List<string>();

        // Warm-up: the code paths are compiled and the pools made; the footprint after it is the baseline.
        RunMany(m, 0, 16, failures);
        AssertNoFailure(failures, m);
        var s0 = WaitIdleTrim(m);
        var baseline = Measure(pid);
        output.WriteLine($"start:    {start}\nbaseline: {baseline}");
        foreach (var name in new[] { "daemon_managed_heap_bytes", "daemon_managed_committed_bytes" })
            output.WriteLine($"baseline {name} {LabMount.Get(s0, name)}");

        RunMany(m, 16, 200, failures);
        AssertNoFailure(failures, m);
        // Runs that map nothing: past the number of runs whose counters the daemon keeps.
        Parallel.For(0, 100, new ParallelOptions { MaxDegreeOfParallelism = 4 }, _ =>
        {
            var r = Sh.Run(Repo.Lab, new[] { "run", "--mount", m.Mount, "--", "/bin/true" });
            if (r.ExitCode != 0) lock (failures) failures.Add(r.ToString());
        });
        AssertNoFailure(failures, m);
        var busy = Measure(pid);
        var sBusy = Stats(m);
        // The files go too: the kernel forgets their nodes, the daemon their caches. A last empty
        // run makes sure the trim we wait for comes after that.
        foreach (var f in Directory.GetFiles(m.Mount)) File.Delete(f);
        Assert.Equal(0, Sh.Run(Repo.Lab, new[] { "run", "--mount", m.Mount, "--", "/bin/true" }).ExitCode);
        var s = WaitIdleTrim(m);
        var idle = Measure(pid);
        output.WriteLine($"busy:     {busy}\nidle:     {idle}");
        foreach (var name in new[] { "processes", "processes_alive", "objects_alive", "anons_alive", "swap_slots_in_use", "swap_pages_written",
                     "fs_nodes", "fs_page_caches", "fs_open_handles", "vnodes_cached", "runs_tracked", "run_limits", "swap_store_bytes", "internal_errors", "pager_errors", "daemon_managed_heap_bytes", "daemon_managed_committed_bytes", "daemon_managed_fragmented_bytes" })
            output.WriteLine($"{name} {LabMount.Get(s, name)}");

        // The swap store was really used, and every slot came back.
        Assert.True(LabMount.Get(s, "swap_pages_written") - LabMount.Get(s0, "swap_pages_written") > 5000, "the runs did not swap");
        Assert.Equal(0, LabMount.Get(s, "processes_alive"));
        Assert.Equal(0, LabMount.Get(s, "objects_alive"));
        Assert.Equal(0, LabMount.Get(s, "anons_alive"));
        Assert.Equal(0, LabMount.Get(s, "swap_slots_in_use"));
        Assert.Equal(0, LabMount.Get(s, "fs_open_handles"));
        Assert.Equal(0, LabMount.Get(s, "fs_page_caches"));
        Assert.Equal(0, LabMount.Get(s, "vnodes_cached"));
        Assert.Equal(0, LabMount.Get(s, "internal_errors"));
        Assert.Equal(0, LabMount.Get(s, "pager_errors"));
        // 317 runs ended; the counters of the newest 256 are kept, and the limits of those only.
        Assert.Equal(256, LabMount.Get(s, "runs_tracked"));
        Assert.InRange(LabMount.Get(s, "run_limits"), 0, 256);

        // Measured from outside: the store's file is back to its size before the runs (its free
        // pages returned, the WAL truncated); descriptors and threads as before; memory near it.
        Assert.True(idle.SwapBytes <= baseline.SwapBytes + (256 << 10), $"swap store: {baseline.SwapBytes} -> busy {busy.SwapBytes} -> idle {idle.SwapBytes} bytes");
        Assert.True(idle.Fds <= baseline.Fds + 4, $"descriptors: {baseline.Fds} -> {idle.Fds}");
        Assert.True(idle.Threads <= baseline.Threads + 4, $"threads: {baseline.Threads} -> {idle.Threads}");
        // Memory: the runtime is not in its steady state after the warm-up. Its tiered JIT recompiles
        // the per-program paths only after tens of programs of each kind: measured on one mount, the
        // daemon's anonymous RSS went 6.4 -> 18.5 -> 26.9 -> 27.4 MB after 104, 208 and 312 of these
        // runs, and with DOTNET_TieredCompilation=0 it stayed at 24.7, 25.3, 18.9 MB (the managed heap
        // itself stays under 2 MB). So the bound over the warm-up baseline leaves 24 MB for that; a
        // leak of 120 KB per run still fails it, and the bound over the start.
        Assert.True(idle.RssKb <= baseline.RssKb + 24 * 1024, $"rss: baseline {baseline} -> idle {idle}");
        Assert.True(idle.RssKb <= start.RssKb + 40 * 1024, $"rss: start {start} -> idle {idle}");
    }
}
